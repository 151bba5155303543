"""A batch-1 decode step's linear layers in Triton, each one kernel with the LayerNorm before it or the residual add
after it: `norm_linear` (LayerNorm, then the layer, then optionally ReLU) and `linear_add` (the layer, then the
residual add).

Why hand-written kernels: at batch 1 a linear layer is a matrix-vector product whose time is one short wave of
programs reading the weights. The compiled step (alibi_decoding's `_row_matmul`) already writes each layer as one
inductor reduction with its bias, ReLU and residual add, but a LayerNorm's statistics are a second reduction over
the row, which inductor puts in a kernel of its own: about ten kernels per layer, 0.53 ms of GPU time per token
for the WikiText-103-size model at 2,048 keys on an H200 (docs/benchmarks.md, twenty-third session). Here every
program reads the whole input row (2-8 KB, from L2) and computes the LayerNorm itself, so the norm costs no launch;
and each program loads its whole block of weight rows in one go, so that all of a layer's weight bytes are in
flight at once (Triton's pipeliner does not stage loads that feed no `tl.dot`).

What made them faster than inductor's is programmatic dependent launch (PDL, `LAUNCH_PDL`). The weights are the
only large read and no kernel writes them, so each kernel loads them before it waits for the kernel ahead
(`gdc_wait`), and lets the next kernel launch as soon as it runs (`gdc_launch_dependents`): one layer's weights
stream in while the layer before it finishes. On an H200 (benchmarks/gemv_bench.py, twenty-fifth session), 16 calls
in a CUDA graph took 4.07 / 1.47 / 4.31 / 3.42 us per call for q, k and v, the output projection, fc1 and fc2,
against 4.78 / 2.16 / 5.28 / 4.43 without PDL and 5.63 / 2.04 / 6.30 / 4.72 for inductor's kernels (their
LayerNorm statistics included). In graph_generate's step at 2,048 keys: 0.576 ms a token with inductor's kernels,
0.541 with these without PDL, 0.478 with it (benchmarks/step_profile.py --parts graph).

Rounding is eager's: the LayerNorm's output, the layer's output (fp32 sum plus bias) and the residual sum are each
rounded to the weights' dtype, where the separate ops round them; ReLU commutes with rounding.

Shapes: x (1, K) contiguous; weight (N, K) contiguous; bias (N,) or None; residual (1, N).

With PDL the weights are read before the kernel just ahead of this one has finished: it must not write them (in
graph_generate's step it is another layer's kernel; the stacked q, k, v weights are refreshed before the prompt).

Hub payload: imports only torch, triton (inside `try`) and its siblings alibi_ops.py and alibi_triton_forward.py.
"""

from __future__ import annotations

import torch

# In a `try` block for transformers' remote-code import check; see alibi_triton_forward.py.
try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("alibi_triton_gemv needs triton, which CUDA builds of PyTorch install") from error

from .alibi_ops import custom_op, triton_op
from .alibi_triton_forward import _device_guard, _interpreting, pdl_capable, wrap_triton

__all__ = ["MAX_COLUMNS", "gemv_supported", "linear_add", "norm_linear"]

MAX_COLUMNS = 16384  # K: one program holds a whole input row
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Weight elements a program loads at once, (BLOCK_N, K), and its warps: four rows of 1,024 (8 KB in bf16), or one of
# 4,096. Of 2,048 to 32,768 elements and 2 to 8 warps, the fastest or within 0.25 us of it for every layer but
# the head's (fastest at 8,192, 4% better) on an H200 (gemv_bench.py, twenty-fifth session).
TILE_ELEMENTS = 4096
NUM_WARPS = 4
# Programmatic dependent launch on sm_90 and newer (alibi_triton_forward.pdl_capable): each kernel lets the next one
# launch as soon as all its programs run, and reads what earlier kernels wrote only after `gdc_wait`, which returns
# once the kernel before it has finished and its writes are visible. False: plain launches (inductor's own, below).
LAUNCH_PDL = True


def gemv_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernels take one row `x` (1, K) against `weight` (N, K): one GPU (or the interpreter), one dtype,
    contiguous, K at most MAX_COLUMNS."""
    return (
        (x.is_cuda or _interpreting())
        and x.dim() == 2
        and x.shape[0] == 1
        and x.dtype in SUPPORTED_DTYPES
        and weight.dtype == x.dtype
        and weight.device == x.device
        and weight.dim() == 2
        and weight.shape[1] == x.shape[1] <= MAX_COLUMNS
        and x.is_contiguous()
        and weight.is_contiguous()
    )


@triton.jit
def _gemv_kernel(x_ptr, weight_ptr, bias_ptr, norm_weight_ptr, norm_bias_ptr, residual_ptr, out_ptr, n_rows,
                 n_cols, eps, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORM: tl.constexpr,
                 HAS_BIAS: tl.constexpr, RELU: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output features
    cols = tl.arange(0, BLOCK_K)  # (BLOCK_K,) input features
    inside = cols < n_cols
    # The weights first: the long load, issued before the short ones (and, with PDL, before the previous kernel
    # has finished: no kernel writes them).
    offsets = rows[:, None].to(tl.int64) * n_cols + cols[None, :]  # (BLOCK_N, BLOCK_K)
    weight = tl.load(weight_ptr + offsets, mask=(rows[:, None] < n_rows) & inside[None, :], other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()  # everything below reads what earlier kernels wrote
    x = tl.load(x_ptr + cols, mask=inside, other=0.0).to(tl.float32)  # (BLOCK_K,)
    if NORM:
        mean = tl.sum(x, axis=0) / n_cols
        centered = tl.where(inside, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / n_cols + eps)
        scale = tl.load(norm_weight_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        shift = tl.load(norm_bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        x = (centered * rstd * scale + shift).to(out_ptr.dtype.element_ty).to(tl.float32)  # LayerNorm's output
    acc = tl.sum(weight.to(tl.float32) * x[None, :], axis=1)  # (BLOCK_N,) fp32, as cuBLAS accumulates
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rows < n_rows, other=0.0).to(tl.float32)
    out = acc.to(out_ptr.dtype.element_ty)  # the layer's output, rounded
    if RELU:
        out = tl.maximum(out, 0.0)
    if RESIDUAL:
        residual = tl.load(residual_ptr + rows, mask=rows < n_rows, other=0.0).to(tl.float32)
        out = (residual + out.to(tl.float32)).to(out_ptr.dtype.element_ty)  # the residual add, rounded
    tl.store(out_ptr + rows, out, mask=rows < n_rows)


def _block_rows(n_rows: int, n_cols: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): rows per program such that a program's tile has about TILE_ELEMENTS weights."""
    block_k = triton.next_power_of_2(n_cols)
    if _interpreting():
        return 4, block_k  # small tiles: tiny test layers still span several programs
    return max(1, min(TILE_ELEMENTS // block_k, triton.next_power_of_2(n_rows))), block_k


def _launch(x, weight, bias, norm_weight, norm_bias, eps, residual, relu, pdl=False):
    n_rows, n_cols = weight.shape
    out = x.new_empty(1, n_rows)
    block_n, block_k = _block_rows(n_rows, n_cols)
    kernel, launch = (_gemv_kernel, {"launch_pdl": True}) if pdl else (wrap_triton(_gemv_kernel), {})
    with _device_guard(x):
        kernel[(triton.cdiv(n_rows, block_n),)](
            x, weight, x if bias is None else bias, x if norm_weight is None else norm_weight,
            x if norm_bias is None else norm_bias, x if residual is None else residual, out, n_rows, n_cols, eps,
            BLOCK_N=block_n, BLOCK_K=block_k, NORM=norm_weight is not None, HAS_BIAS=bias is not None, RELU=relu,
            RESIDUAL=residual is not None, PDL=pdl, num_warps=NUM_WARPS, **launch,
        )
    return out


def _norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float,
                 weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    return _launch(x, weight, bias, norm_weight, norm_bias, eps, None, relu)


def _linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                residual: torch.Tensor) -> torch.Tensor:
    return _launch(x, weight, bias, None, None, 0.0, residual, False)


def _norm_linear_pdl(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float,
                     weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    return _launch(x, weight, bias, norm_weight, norm_bias, eps, None, relu, pdl=True)


def _linear_add_pdl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    residual: torch.Tensor) -> torch.Tensor:
    return _launch(x, weight, bias, None, None, 0.0, residual, False, pdl=True)


def _norm_linear_fake(x: torch.Tensor, norm_weight, norm_bias, eps, weight: torch.Tensor, *args) -> torch.Tensor:
    return x.new_empty(1, weight.shape[0])


def _linear_add_fake(x: torch.Tensor, weight: torch.Tensor, *args) -> torch.Tensor:
    return x.new_empty(1, weight.shape[0])


# Without PDL, triton_ops: inductor launches their kernels from its own code. With it, custom ops, opaque to
# inductor, whose bodies launch with Triton's launcher: inductor's launch of a user kernel has no PDL attribute. In
# graph_generate's CUDA graph either costs no host time per token.
_norm_linear_op = triton_op("norm_linear", __name__, _norm_linear)
_linear_add_op = triton_op("linear_add", __name__, _linear_add)
_norm_linear_pdl_op = custom_op("norm_linear_pdl", __name__, _norm_linear_pdl, _norm_linear_fake)
_linear_add_pdl_op = custom_op("linear_add_pdl", __name__, _linear_add_pdl, _linear_add_fake)


def _pdl(x: torch.Tensor) -> bool:
    return LAUNCH_PDL and pdl_capable(x)


def norm_linear(x: torch.Tensor, norm: torch.nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor | None,
                relu: bool = False) -> torch.Tensor:
    """(1, N) = [relu](layer_norm(x) @ weight.T + bias) for one row x (1, K); `norm` has a weight and a bias."""
    op = _norm_linear_pdl_op if _pdl(x) else _norm_linear_op
    return op(x, norm.weight, norm.bias, float(norm.eps), weight, bias, relu)


def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor) -> torch.Tensor:
    """(1, N) = residual + (x @ weight.T + bias) for one row x (1, K), each sum rounded as the separate ops'."""
    return (_linear_add_pdl_op if _pdl(x) else _linear_add_op)(x, weight, bias, residual)
