"""The Triton ALiBi flash-attention kernel against a float64 reference: outputs and q/k/v gradients.

On CPU the kernels run under Triton's interpreter. TRITON_INTERPRET=1 must be set before triton is imported,
and other test modules import triton (through torch) without it, so all CPU cases run in one subprocess: this
module saves the inputs, the subprocess runs forward and backward on them, and the comparisons happen here.
Tiny block sizes make the small inputs span several blocks, so the diagonal, window-edge and tail loops all run.

The interpreter cannot check bf16: Triton 3.8's interpreter multiplies bf16 tiles in `tl.dot` as their raw
uint16 bits (it converts only fp8 operands), so the CPU cases use fp32 and fp16 and the `gpu` class checks bf16.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

REPO = Path(__file__).resolve().parents[1]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """2^(-8 (i + 1) / h), the paper's slopes for a power-of-two head count (used for any count here)."""
    return torch.tensor([2 ** (-8 * (i + 1) / num_heads) for i in range(num_heads)], dtype=torch.float32)


def reference_attention(q, k, v, slopes, scale, offset=0, window=None, max_distance=None):
    """Explicit bias + mask + softmax: (b, h, q, d) in the dtype of the inputs.

    Matmuls run in the input dtype; bias and softmax in float64 for float64 inputs, else in fp32 (as a bf16
    flash kernel does), so a bf16 run of this function measures bf16 rounding, not a bf16 softmax.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_len, k_len = q.shape[2], k.shape[2]
    distance = torch.arange(q_len, device=q.device)[:, None] + offset - torch.arange(k_len, device=q.device)
    allowed = (distance >= 0)[None]  # (1, q, k)
    if window is not None:
        allowed = allowed & (distance < window)
    if max_distance is not None:
        limit = torch.as_tensor(max_distance, dtype=acc, device=q.device).reshape(-1, 1, 1)
        allowed = allowed & (distance <= limit)  # (h, q, k)
    bias = -slopes.to(acc)[:, None, None] * distance.to(acc)  # (h, q, k)
    scores = scale * (q @ k.transpose(-1, -2)).to(acc) + bias  # (b, h, q, k)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return probs.to(q.dtype) @ v


def reference_with_grads(inputs: dict, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Output and q/k/v gradients of `reference_attention` computed in `dtype`."""
    q, k, v = (inputs[name].detach().to(dtype).requires_grad_() for name in ("q", "k", "v"))
    out = reference_attention(q, k, v, inputs["slopes"], inputs["scale"], inputs["offset"], inputs["window"],
                              inputs["max_distance"])
    out.backward(inputs["grad_out"].to(dtype))
    return out.detach(), q.grad, k.grad, v.grad


@dataclass
class Case:
    batch: int
    heads: int
    q_len: int
    k_len: int
    head_dim: int = 16
    offset: int = 0
    window: int | None = None
    max_distance: list[float] | None = None
    dtype: torch.dtype = torch.float32
    transposed: bool = False  # (b, L, h, d) tensors seen through .transpose(1, 2), as the model passes them
    blocks: dict = field(default_factory=lambda: {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)})

    def inputs(self, seed: int = 0) -> dict:
        generator = torch.Generator().manual_seed(seed)

        def tensor(length: int) -> torch.Tensor:
            if self.transposed:
                x = torch.randn(self.batch, length, self.heads, self.head_dim, generator=generator)
                return x.to(self.dtype).transpose(1, 2)  # (b, h, L, d) view
            return torch.randn(self.batch, self.heads, length, self.head_dim, generator=generator).to(self.dtype)

        return dict(
            q=tensor(self.q_len), k=tensor(self.k_len), v=tensor(self.k_len), grad_out=tensor(self.q_len),
            slopes=alibi_slopes(self.heads), scale=1 / math.sqrt(self.head_dim), offset=self.offset,
            window=self.window,
            max_distance=None if self.max_distance is None else torch.tensor(self.max_distance),
        )


# Default blocks: 32 query rows x 16 keys forward and for dQ, 32 keys x 16 rows for dK/dV.
CASES = {
    "square-67": Case(batch=2, heads=3, q_len=67, k_len=67),
    "square-130-narrow-rows": Case(
        batch=1, heads=2, q_len=130, k_len=130, head_dim=32, blocks={"fwd": (16, 32), "dkdv": (32, 16), "dq": (16, 32)}
    ),
    "chunk-33-of-150": Case(batch=1, heads=4, q_len=33, k_len=150, offset=117),
    "queries-past-keys": Case(batch=1, heads=2, q_len=20, k_len=30, offset=25),  # rows see all 30 keys or fewer
    "window-9": Case(batch=1, heads=2, q_len=70, k_len=90, offset=20, window=9),
    "window-40": Case(batch=2, heads=2, q_len=100, k_len=100, window=40),
    "max-distance": Case(batch=1, heads=3, q_len=64, k_len=64, max_distance=[5.5, 30.0, float("inf")]),
    "window-and-max-distance": Case(batch=1, heads=2, q_len=50, k_len=80, offset=30, window=20,
                                    max_distance=[3.0, 100.0]),
    "transposed-views": Case(batch=2, heads=2, q_len=45, k_len=45, transposed=True),
    "fp16": Case(batch=1, heads=2, q_len=50, k_len=50, head_dim=32, dtype=torch.float16),
}

# Runs in a fresh interpreter with TRITON_INTERPRET=1: argv[1] holds {name: (inputs, blocks)}, argv[2] gets
# {name: (out, dq, dk, dv)}.
_RUNNER = r"""
import sys
import torch
import triton
import modeling_alibi.alibi_triton as alibi_triton

kernels = {"fwd": alibi_triton._fwd_kernel, "dkdv": alibi_triton._bwd_dkdv_kernel, "dq": alibi_triton._bwd_dq_kernel}
results = {}
for name, (inputs, blocks) in torch.load(sys.argv[1]).items():
    for kind, (block_m, block_n) in blocks.items():
        kernels[kind].configs = [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4, num_stages=1)]
    q, k, v = (inputs[n].requires_grad_() for n in ("q", "k", "v"))
    out = alibi_triton.alibi_flash_attention(q, k, v, inputs["slopes"], inputs["scale"], inputs["offset"],
                                             inputs["window"], inputs["max_distance"])
    out.backward(inputs["grad_out"])
    results[name] = (out.detach(), q.grad, k.grad, v.grad)
torch.save(results, sys.argv[2])
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict[str, tuple[torch.Tensor, ...]]:
    """Kernel outputs and gradients for every case, from one interpreter subprocess."""
    tmp = tmp_path_factory.mktemp("alibi_triton")
    torch.save({name: (case.inputs(), case.blocks) for name, case in CASES.items()}, tmp / "inputs.pt")
    pytest.importorskip("triton")
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    run = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(tmp / "inputs.pt"), str(tmp / "results.pt")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, f"interpreter run failed:\n{run.stdout}\n{run.stderr}"
    return torch.load(tmp / "results.pt")


@pytest.mark.parametrize("name", list(CASES))
def test_interpreted_kernel_matches_float64_reference(name, interpreted):
    case = CASES[name]
    inputs = case.inputs()
    expected = reference_with_grads(inputs, torch.float64)
    # fp32 tiles multiply exactly in numpy; fp16 rounds P and dS to 11 bits before the second matmuls.
    tolerance = dict(atol=2e-5, rtol=1e-4) if case.dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    for label, actual, reference in zip(("out", "dq", "dk", "dv"), interpreted[name], expected, strict=True):
        assert actual.dtype == case.dtype, label
        assert_close(actual.double(), reference, **tolerance, msg=lambda m, label=label: f"{name} {label}: {m}")


def test_output_keeps_query_layout(interpreted):
    """A transposed (b, L, h, d) query gives an output with the same strides, so the model's reshape is free."""
    inputs = CASES["transposed-views"].inputs()
    out, dq, dk, dv = interpreted["transposed-views"]
    assert out.stride() == inputs["q"].stride() == dq.stride()
    assert dk.stride() == inputs["k"].stride()


def test_rejects_what_it_cannot_compute():
    pytest.importorskip("triton")
    from modeling_alibi.alibi_triton import alibi_flash_attention

    q = torch.randn(1, 2, 8, 16)
    slopes = alibi_slopes(2)
    with pytest.raises(ValueError, match="head_dim"):
        alibi_flash_attention(torch.randn(1, 2, 8, 24), torch.randn(1, 2, 8, 24), torch.randn(1, 2, 8, 24), slopes, 0.2)
    with pytest.raises(ValueError, match="offset"):
        alibi_flash_attention(q, q, q, slopes, 0.25, offset=-1)
    with pytest.raises(ValueError, match="its own key"):
        alibi_flash_attention(q, q, q, slopes, 0.25, offset=1, window=4)


def test_is_supported_is_false_on_cpu():
    pytest.importorskip("triton")
    from modeling_alibi.alibi_triton import is_supported

    assert not is_supported(torch.randn(1, 2, 8, 64))


# --- GPU: bf16 at realistic sizes --------------------------------------------------------------------------

BF16 = torch.bfloat16
GPU_CASES = {
    "L1024-d128": Case(batch=2, heads=8, q_len=1024, k_len=1024, head_dim=128, dtype=BF16),
    "L1000-d64": Case(batch=2, heads=4, q_len=1000, k_len=1000, head_dim=64, dtype=BF16),
    "q1024-of-k2048": Case(batch=1, heads=8, q_len=1024, k_len=2048, head_dim=128, offset=1024, dtype=BF16),
    "q1000-of-k2047": Case(batch=1, heads=8, q_len=1000, k_len=2047, head_dim=128, offset=1047, dtype=BF16),
    "L2048-window-256": Case(batch=1, heads=8, q_len=2048, k_len=2048, head_dim=128, window=256, dtype=BF16),
    "L2048-max-distance": Case(batch=1, heads=4, q_len=2048, k_len=2048, head_dim=128, dtype=BF16,
                               max_distance=[64.0, 300.5, 1000.0, float("inf")]),
    "transposed-L1024": Case(batch=2, heads=8, q_len=1024, k_len=1024, head_dim=128, transposed=True, dtype=BF16),
}


@pytest.mark.gpu
class TestOnCuda:
    """bf16 kernel vs an fp32 reference on the same (bf16-rounded) inputs.

    Tolerance in FlashAttention's style: the kernel's error may be at most twice that of the same reference
    computed in bf16 by PyTorch, plus a small floor.
    """

    @pytest.mark.parametrize("name", list(GPU_CASES))
    def test_bf16_matches_fp32_reference(self, name):
        from modeling_alibi.alibi_triton import alibi_flash_attention, is_supported

        case = GPU_CASES[name]
        inputs = {key: value.cuda() if isinstance(value, torch.Tensor) else value
                  for key, value in case.inputs().items()}
        assert is_supported(inputs["q"])
        q, k, v = (inputs[n].detach().requires_grad_() for n in ("q", "k", "v"))
        out = alibi_flash_attention(q, k, v, inputs["slopes"], inputs["scale"], inputs["offset"], inputs["window"],
                                    inputs["max_distance"])
        out.backward(inputs["grad_out"])
        actual = (out, q.grad, k.grad, v.grad)
        expected = reference_with_grads(inputs, torch.float32)
        low_precision = reference_with_grads(inputs, torch.bfloat16)
        for label, a, e, lp in zip(("out", "dq", "dk", "dv"), actual, expected, low_precision, strict=True):
            assert a.dtype == torch.bfloat16 and torch.isfinite(a).all(), label
            error = (a.float() - e).abs().max().item()
            allowed = 2 * (lp.float() - e).abs().max().item() + 1e-3 * e.abs().max().item() + 1e-5
            assert error <= allowed, f"{name} {label}: max error {error:.3g} > {allowed:.3g}"
