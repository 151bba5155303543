"""benchmarks/ptx_census.py: the model's Triton kernels compile to sm_90 PTX on a machine with no GPU, and a
comparison names every opcode count that moved (about 10 s on 2 cores)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_every_kernel_compiles_and_an_unchanged_tree_compares_equal(tmp_path):
    pytest.importorskip("triton")
    command = [sys.executable, str(ROOT / "benchmarks" / "ptx_census.py"), "--out", str(tmp_path / "a.json")]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    kernels = json.loads((tmp_path / "a.json").read_text())["kernels"]
    expected = {f"{name} span={span}" for name in ("fwd", "dkdv", "dq", "decode_split") for span in (False, True)}
    assert set(kernels) == expected | {"preprocess", "decode_merge"}
    for label, row in kernels.items():
        assert row["instructions"] == sum(row["counts"].values()) > 100, label
        assert row["counts"].get("ld.param.b32", 0) or row["counts"].get("ld.param.b64", 0), label  # a real body
    command[-1] = str(tmp_path / "b.json")
    again = subprocess.run([*command, "--compare", str(tmp_path / "a.json")], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "no count moved" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]


def test_compare_names_what_moved():
    ptx_census = pytest.importorskip("ptx_census")
    old = {"fwd": {"instructions": 3, "counts": {"add.s32": 2, "ret": 1}}, "gone": {"instructions": 1, "counts": {}}}
    new = {"fwd": {"instructions": 4, "counts": {"add.s32": 1, "mul.lo.s32": 2, "ret": 1}}}
    assert ptx_census.compare(old, new) == ["fwd: 3 -> 4 instructions, add.s32 -1, mul.lo.s32 +2",
                                            "gone: only in the old census"]
    assert ptx_census.compare(new, new) == []
    assert ptx_census.census("\t// note\n$L__BB0_1:\n\tadd.s32 \t%r1, %r2, 1;\n\t.loc 1 2 3\n\tret;\n") == {
        "add.s32": 1, "ret": 1}
