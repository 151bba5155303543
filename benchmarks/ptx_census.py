"""The model's Triton kernels compiled to PTX without a GPU: instruction counts per opcode, to check a kernel edit.

Triton compiles for any target it knows on a machine with no GPU, so a refactor that should not change the code
can be checked here before any GPU time: compile before and after, then compare. Each kernel is compiled for
sm_90 (H100/H200) with the block sizes of its first autotune config (the other kernels' launch settings), at head
dim 64, with and without a per-head window (HAS_SPAN). The census drops `.loc`/`.file` lines, labels and comments, so
moved source lines do not count; what is left is each opcode's count and the instruction total. The same counts
mean the same work; the order and register numbers may still differ (compare the `--ptx` dumps for that).

    python benchmarks/ptx_census.py --out before.json [--ptx DIR]
    python benchmarks/ptx_census.py --out after.json --compare before.json     # exit 1 if any count moved

Prints one line per kernel variant (instructions, fingerprint of the counts), then the differences.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from modeling_alibi import alibi_triton_backward, alibi_triton_decode, alibi_triton_forward  # noqa: E402
from modeling_alibi.io_utils import atomic_write_text  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
HEAD_DIM = 64
# Pointer arguments and their element types; every other non-constexpr argument is an i32, except these floats.
POINTERS = {name: "*bf16" for name in ("Q", "K", "V", "Out", "DO", "DK", "DV", "DQ")}
POINTERS |= {name: "*fp32" for name in ("Lse", "Delta", "Slopes", "PartOut", "PartMax", "PartSum")}
POINTERS |= {name: "*i32" for name in ("Span", "QPos", "KCode")}
FLOATS = ("scale", "qk_scale_log2")


def _training(kernel, configs) -> tuple:
    config = configs[0]  # (kernel, its constexprs, num_warps, num_stages)
    return kernel.fn, dict(config.kwargs), config.num_warps, config.num_stages


def kernels() -> dict[str, tuple]:
    """name: (JITFunction, constexprs without HEAD_DIM/HAS_SPAN, num_warps, num_stages)."""
    fwd, bwd, dec = alibi_triton_forward, alibi_triton_backward, alibi_triton_decode
    return {
        "fwd": _training(fwd._fwd_kernel, fwd.FWD_CONFIGS),
        "dkdv": _training(bwd._bwd_dkdv_kernel, fwd.DKDV_CONFIGS),
        "dq": _training(bwd._bwd_dq_kernel, fwd.DQ_CONFIGS),
        # As launched; where a launch names no num_warps or num_stages, Triton's CUDA defaults (4 and 3).
        "preprocess": (bwd._bwd_preprocess, dict(BLOCK_M=bwd.PREPROCESS_BLOCK_M), 4, 3),
        "decode_split": (dec._split_kernel, dict(BLOCK_Q=dec.MAX_QUERIES, BLOCK_N=dec.BLOCK_N), dec.NUM_WARPS,
                         dec.NUM_STAGES),
        "decode_merge": (dec._merge_kernel, dict(BLOCK_Q=dec.MAX_QUERIES, MERGE_SPLITS=dec.MERGE_SPLITS), 4, 3),
    }


def compile_ptx(fn, constants: dict, num_warps: int, num_stages: int) -> str:
    constexprs = {name for name in fn.arg_names if fn.params[fn.arg_names.index(name)].is_constexpr}
    signature = {name: "constexpr" if name in constexprs else POINTERS.get(name, "fp32" if name in FLOATS else "i32")
                 for name in fn.arg_names}
    source = ASTSource(fn, signature, constexprs=constants)
    return triton.compile(source, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages)).asm["ptx"]


def census(ptx: str) -> dict[str, int]:
    """Opcode counts of the PTX body, without debug lines, labels, comments and braces."""
    counts = collections.Counter()
    for line in ptx.split(".section\t.debug")[0].splitlines():
        line = line.strip()
        if not line or line.endswith(":") or line.startswith(("//", ".loc", ".file", "{", "}", "$")):
            continue
        counts[re.split(r"[\s;]", line)[0]] += 1
    return dict(sorted(counts.items()))


def run(ptx_dir: str | None) -> dict[str, dict]:
    result = {}
    for name, (fn, constants, num_warps, num_stages) in kernels().items():
        spans = (False, True) if "HAS_SPAN" in fn.arg_names else (None,)
        for span in spans:
            full = dict(constants, HEAD_DIM=HEAD_DIM) | ({} if span is None else {"HAS_SPAN": span})
            label = name if span is None else f"{name} span={span}"
            ptx = compile_ptx(fn, full, num_warps, num_stages)
            counts = census(ptx)
            fingerprint = hashlib.sha256(json.dumps(counts).encode()).hexdigest()[:12]
            result[label] = dict(instructions=sum(counts.values()), fingerprint=fingerprint, counts=counts)
            print(f"{label:24s} {result[label]['instructions']:6d} instructions  {fingerprint}", flush=True)
            if ptx_dir:
                atomic_write_text(os.path.join(ptx_dir, label.replace(" ", "_").replace("=", "-") + ".ptx"), ptx)
    return result


def compare(old: dict, new: dict) -> list[str]:
    """One line per kernel variant whose counts moved (or that appeared or went)."""
    lines = []
    for label in sorted(old.keys() | new.keys()):
        if label not in old or label not in new:
            lines.append(f"{label}: only in {'the new' if label in new else 'the old'} census")
            continue
        a, b = old[label]["counts"], new[label]["counts"]
        moved = {op: b.get(op, 0) - a.get(op, 0) for op in a.keys() | b.keys() if a.get(op, 0) != b.get(op, 0)}
        if moved:
            lines.append(f"{label}: {old[label]['instructions']} -> {new[label]['instructions']} instructions, "
                         + ", ".join(f"{op} {delta:+d}" for op, delta in sorted(moved.items())))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "outputs"), "ptx_census.json"))
    parser.add_argument("--compare", help="an earlier --out file: print what moved, exit 1 if anything did")
    parser.add_argument("--ptx", help="also write each kernel's PTX into this folder")
    args = parser.parse_args()
    for folder in (os.path.dirname(args.out), args.ptx):
        if folder:
            os.makedirs(folder, exist_ok=True)
    result = dict(triton=triton.__version__, target=f"{TARGET.backend} sm_{TARGET.arch}", kernels=run(args.ptx))
    atomic_write_text(args.out, json.dumps(result, indent=1))
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)
        moved = compare(old["kernels"], result["kernels"])
        print("\n".join(moved) if moved else f"no count moved against {args.compare}")
        return 1 if moved else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
