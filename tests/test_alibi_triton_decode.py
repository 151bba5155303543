"""The Triton ALiBi decode kernel (split over the keys, then merged) against a float64 reference.

On CPU the kernel runs under Triton's interpreter in one subprocess (TRITON_INTERPRET=1 must be set before triton
is imported; see test_alibi_triton.py). Tiny key tiles (16) and many splits make the small inputs exercise tile
skipping, splits that see nothing, and the merge. The `gpu` class checks bf16 at 70,000 keys.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from test_alibi_triton import alibi_slopes

REPO = Path(__file__).resolve().parents[1]


def reference_decode(q, k, v, slopes, scale, query_positions, key_positions, key_padding=None, window=None,
                     max_distance=None):
    """Bias + mask + softmax in float64 from explicit positions; rows that may see no key are zeros."""
    distance = query_positions[:, :, None] - key_positions[:, None, :]  # (b, q, k)
    allowed = (distance >= 0)[:, None]  # (b, 1, q, k)
    if key_padding is not None:
        allowed = allowed & ~key_padding[:, None, None, :]
    if window is not None:
        allowed = allowed & (distance < window)[:, None]
    if max_distance is not None:
        allowed = allowed & (distance[:, None] <= max_distance.double()[None, :, None, None])  # (b, h, q, k)
    bias = -slopes.double()[None, :, None, None] * distance[:, None].double()
    scores = scale * (q.double() @ k.double().transpose(-1, -2)) + bias
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)  # empty rows: NaN -> 0
    return probs @ v.double()


@dataclass
class Case:
    batch: int
    heads: int
    q_len: int
    slots: int  # key slots, the last `empty` of them unused (a static cache)
    empty: int = 0
    left_padding: int = 0  # row 1's first keys are padding
    head_dim: int = 16
    window: int | None = None
    max_distance: list[float] | None = None
    dtype: torch.dtype = torch.float32
    transposed: bool = False
    programs_per_sm: int = 2  # many per SM: more splits than a tiny input would get

    def inputs(self, seed: int = 0) -> dict:
        generator = torch.Generator().manual_seed(seed)

        def tensor(length: int) -> torch.Tensor:
            if self.transposed:
                x = torch.randn(self.batch, length, self.heads, self.head_dim, generator=generator)
                return x.to(self.dtype).transpose(1, 2)  # (b, h, L, d) view
            return torch.randn(self.batch, self.heads, length, self.head_dim, generator=generator).to(self.dtype)

        mask = torch.ones(self.batch, self.slots, dtype=torch.long)
        mask[:, self.slots - self.empty :] = 0
        if self.batch > 1:
            mask[1, : self.left_padding] = 0
        positions = mask.cumsum(-1) - 1
        filled = self.slots - self.empty
        query_index = torch.arange(filled - self.q_len, filled)  # the newest tokens are the queries
        padding = mask == 0
        return dict(
            q=tensor(self.q_len), k=tensor(self.slots), v=tensor(self.slots), slopes=alibi_slopes(self.heads),
            scale=1 / math.sqrt(self.head_dim), query_positions=positions[:, query_index], key_positions=positions,
            key_padding=padding if padding.any() else None, window=self.window,
            max_distance=None if self.max_distance is None else torch.tensor(self.max_distance),
        )


CASES = {
    "one-query": Case(batch=1, heads=2, q_len=1, slots=37),
    "static-slots-and-left-padding": Case(batch=2, heads=3, q_len=1, slots=150, empty=40, left_padding=23),
    "sixteen-queries-many-splits": Case(batch=2, heads=2, q_len=16, slots=200, empty=9, left_padding=50,
                                        programs_per_sm=64),
    "five-queries-window": Case(batch=2, heads=2, q_len=5, slots=90, empty=11, left_padding=4, window=9),
    "max-distance": Case(batch=1, heads=3, q_len=3, slots=120, max_distance=[4.5, 40.0, float("inf")]),
    "transposed-views": Case(batch=2, heads=2, q_len=2, slots=70, empty=6, left_padding=8, transposed=True),
    "fp16-d32": Case(batch=2, heads=2, q_len=4, slots=100, empty=20, left_padding=10, head_dim=32,
                     dtype=torch.float16),
    # More splits than the merge reads per load (MERGE_SPLITS): the one-query kernel and the tl.dot kernel.
    "one-query-more-splits-than-a-merge-block": Case(batch=1, heads=2, q_len=1, slots=1300, empty=30,
                                                     programs_per_sm=64),
    "three-queries-more-splits-than-a-merge-block": Case(batch=2, heads=2, q_len=3, slots=1240, empty=5,
                                                         left_padding=70, programs_per_sm=64),
    "one-query-window-and-max-distance": Case(batch=2, heads=3, q_len=1, slots=90, empty=7, left_padding=5,
                                              window=20, max_distance=[3.5, 50.0, float("inf")]),
    # Every key of row 1 is padding: its queries see nothing and must come out as zeros, not NaN.
    "a-row-that-sees-nothing": Case(batch=2, heads=2, q_len=1, slots=40, left_padding=40),
}

_RUNNER = r"""
import sys
import torch
import modeling_alibi.alibi_triton_decode as decode

results = {}
for name, (inputs, programs_per_sm) in torch.load(sys.argv[1]).items():
    decode.PROGRAMS_PER_SM = programs_per_sm
    results[name] = decode.alibi_decode_attention(
        inputs["q"], inputs["k"], inputs["v"], inputs["slopes"], inputs["scale"], inputs["query_positions"],
        inputs["key_positions"], key_padding=inputs["key_padding"], window=inputs["window"],
        max_distance=inputs["max_distance"],
    )
torch.save(results, sys.argv[2])
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict[str, torch.Tensor]:
    pytest.importorskip("triton")
    tmp = tmp_path_factory.mktemp("alibi_decode")
    torch.save({name: (case.inputs(), case.programs_per_sm) for name, case in CASES.items()}, tmp / "inputs.pt")
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(tmp / "inputs.pt"), str(tmp / "results.pt")],
        cwd=REPO, env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}, capture_output=True, text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"interpreter run failed:\n{run.stdout}\n{run.stderr[-4000:]}"
    return torch.load(tmp / "results.pt")


def expected(inputs: dict) -> torch.Tensor:
    return reference_decode(inputs["q"], inputs["k"], inputs["v"], inputs["slopes"], inputs["scale"],
                            inputs["query_positions"], inputs["key_positions"], inputs["key_padding"],
                            inputs["window"], inputs["max_distance"])


@pytest.mark.parametrize("name", list(CASES))
def test_interpreted_kernel_matches_float64_reference(name, interpreted):
    case = CASES[name]
    actual = interpreted[name]
    assert actual.dtype == case.dtype and actual.shape == (case.batch, case.heads, case.q_len, case.head_dim)
    tolerance = dict(atol=2e-5, rtol=1e-4) if case.dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)
    assert_close(actual.double(), expected(case.inputs()), **tolerance)


def test_the_cases_reach_several_splits_and_empty_rows(monkeypatch):
    """Guards the cases above: the many-splits case really is split, and one row really sees nothing."""
    pytest.importorskip("triton")
    import modeling_alibi.alibi_triton_decode as decode

    case = CASES["sixteen-queries-many-splits"]
    monkeypatch.setattr(decode, "_interpreting", lambda: True)  # the subprocess's view: 4 "SMs"
    monkeypatch.setattr(decode, "PROGRAMS_PER_SM", case.programs_per_sm)
    splits, keys_per_split = decode._num_splits(case.batch * case.heads, case.slots, 16, torch.device("cpu"))
    assert splits > 1 and keys_per_split < case.slots
    for name in ("one-query-more-splits-than-a-merge-block", "three-queries-more-splits-than-a-merge-block"):
        case = CASES[name]
        monkeypatch.setattr(decode, "PROGRAMS_PER_SM", case.programs_per_sm)
        splits, _ = decode._num_splits(case.batch * case.heads, case.slots, 16, torch.device("cpu"))
        assert splits > decode.MERGE_SPLITS, name
    inputs = CASES["a-row-that-sees-nothing"].inputs()
    assert inputs["key_padding"][1].all()


@pytest.mark.parametrize("k_len", [2048, 2176, 2304, 65_672])
def test_splits_give_every_sm_its_programs(monkeypatch, k_len):
    """8 rows on 132 SMs at 2 programs per SM: at least 33 splits of whole tiles that cover the keys once, also
    just over a multiple of 33 tiles (2,176 keys: 34 tiles), where rounding the tiles per split up gave 17."""
    pytest.importorskip("triton")
    import modeling_alibi.alibi_triton_decode as decode

    monkeypatch.setattr(decode, "_interpreting", lambda: False)
    monkeypatch.setattr(decode, "_multiprocessors", lambda index: 132)
    monkeypatch.setattr(decode, "PROGRAMS_PER_SM", 2)
    splits, keys_per_split = decode._num_splits(8, k_len, 64, torch.device("cuda"))
    assert keys_per_split % 64 == 0 and (splits - 1) * keys_per_split < k_len <= splits * keys_per_split
    assert min(33, -(-k_len // 64)) <= splits < 66  # 2,048 keys are 32 tiles: one each
    if k_len == 2176:
        assert (splits, keys_per_split) == (34, 64)


def test_rejects_long_queries():
    pytest.importorskip("triton")
    from modeling_alibi.alibi_triton_decode import alibi_decode_attention

    q = torch.randn(1, 2, 17, 16)
    positions = torch.arange(17)[None]
    with pytest.raises(ValueError, match="at most 16 queries"):
        alibi_decode_attention(q, q, q, alibi_slopes(2), 0.25, positions, positions)


# --- GPU: bf16 against a long cache ------------------------------------------------------------------------

GPU_CASES = {
    "q1-70000-slots": Case(batch=1, heads=8, q_len=1, slots=70_000, empty=5_000, head_dim=128, dtype=torch.bfloat16),
    "q4-padded-batch": Case(batch=2, heads=8, q_len=4, slots=9_000, empty=100, left_padding=777, head_dim=128,
                            dtype=torch.bfloat16),
    "q1-window": Case(batch=1, heads=8, q_len=1, slots=20_000, head_dim=64, window=4096, dtype=torch.bfloat16),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_bf16_matches_fp32_reference(name):
    """The kernel's error against float64 is at most that of PyTorch's own bf16 attention, plus a floor."""
    from modeling_alibi.alibi_triton_decode import alibi_decode_attention, decode_supported

    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in GPU_CASES[name].inputs().items()}
    assert decode_supported(inputs["q"])
    actual = alibi_decode_attention(
        inputs["q"], inputs["k"], inputs["v"], inputs["slopes"], inputs["scale"], inputs["query_positions"],
        inputs["key_positions"], key_padding=inputs["key_padding"], window=inputs["window"],
        max_distance=inputs["max_distance"],
    )
    reference = expected(inputs)
    # The same function in bf16 matmuls (fp32 softmax), as the model's eager fallback computes it.
    bf16 = {**inputs, "q": inputs["q"].float(), "k": inputs["k"].float(), "v": inputs["v"].float()}
    rounded = reference_decode(*(bf16[n] for n in ("q", "k", "v", "slopes", "scale", "query_positions",
                                                   "key_positions", "key_padding", "window", "max_distance")))
    rounded = rounded.to(torch.bfloat16).double()
    error, floor = (actual.double() - reference).abs(), (rounded - reference).abs()
    assert torch.isfinite(actual).all()
    assert error.max() <= 2 * floor.max() + 1e-3, (error.max(), floor.max())
    assert error.mean() <= 2 * floor.mean() + 1e-4, (error.mean(), floor.mean())
