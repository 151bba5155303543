"""Fused causal ALiBi flash attention in Triton, forward and backward, tuned for NVIDIA Hopper: the entry point.

`alibi_flash_attention` checks its inputs and runs the kernels of alibi_triton_forward.py (where the algorithm is
described) and alibi_triton_backward.py under one autograd function.

Why a hand-written kernel: FlexAttention with an ALiBi `score_mod` and a causal block mask reaches only ~0.6x
of unbiased SDPA flash on an H100 (benchmarks/triton_alibi_bench.py), because its generated kernel is generic.
ALiBi adds one multiply-add per score, so a dedicated flash kernel should stay close to the unbiased one.
"""

from __future__ import annotations

import torch

# Importing the kernel files raises ImportError where triton is missing; alibi_attention.py catches it.
from .alibi_triton_backward import _backward, _bwd_dkdv_kernel, _bwd_dq_kernel
from .alibi_triton_forward import _allowed_span, _forward, _fwd_kernel, _interpreting

__all__ = ["alibi_flash_attention", "is_supported", "autotune_report"]

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


class _AlibiFlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, slopes, scale, offset, span):
        out, lse = _forward(query, key, value, slopes, scale, offset, span)
        ctx.save_for_backward(query, key, value, out, lse, slopes, span)
        ctx.scale, ctx.offset = scale, offset
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse, slopes, span = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out, query, key, value, out, lse, slopes, ctx.scale, ctx.offset, span)
        return dq, dk, dv, None, None, None, None


def is_supported(query: torch.Tensor) -> bool:
    """Whether `alibi_flash_attention` can run on tensors like `query`; callers fall back when it cannot."""
    return (
        query.is_cuda
        and query.dim() == 4
        and query.dtype in SUPPORTED_DTYPES
        and query.shape[-1] in SUPPORTED_HEAD_DIMS
        and torch.cuda.get_device_capability(query.device) >= (8, 0)
    )


def alibi_flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slopes: torch.Tensor,
    scale: float,
    offset: int = 0,
    window: int | None = None,
    max_distance: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Causal attention with the ALiBi bias (Press et al., 2022), fused in one Triton kernel per pass.

    Args:
        query: (b, h, q, d), bf16/fp16/fp32, any strides (e.g. a transposed (b, q, h, d) tensor).
        key, value: (b, h, k, d), same dtype as `query`.
        slopes: (h,) per-head slopes m_h; used in fp32.
        scale: softmax scale applied to q.k, typically 1 / sqrt(d).
        offset: position of query row 0 in key coordinates: k - q for a KV cache or chunked prefill, 0 for
            training. Query row i sits at i + offset; key j at j.
        window: if set, keys at distance >= window are masked (sliding window).
        max_distance: if set, scalar or (h,) tensor; keys at distance > max_distance[h] are masked (ALiBi
            truncation).

    Returns:
        (b, h, q, d) in the input dtype, with the memory layout of `query`. Differentiable in query, key and
        value. score(i, j) = scale * q_i.k_j - m_h * (i + offset - j) where 0 <= i + offset - j.
    """
    if query.dim() != 4 or key.dim() != 4 or key.shape != value.shape:
        raise ValueError(f"expected (b, h, L, d) tensors, got query {tuple(query.shape)}, key {tuple(key.shape)}, "
                         f"value {tuple(value.shape)}")
    b, h, q_len, d = query.shape
    if key.shape[:2] != (b, h) or key.shape[3] != d:
        raise ValueError(f"key/value {tuple(key.shape)} do not match query {tuple(query.shape)} in b, h or d")
    if not query.dtype == key.dtype == value.dtype or query.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"query/key/value must share one of {SUPPORTED_DTYPES}, got "
                         f"{query.dtype}, {key.dtype}, {value.dtype}")
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {d} not supported; supported: {SUPPORTED_HEAD_DIMS}")
    k_len = key.shape[2]
    if q_len == 0 or k_len == 0:
        raise ValueError(f"empty attention: q_len={q_len}, k_len={k_len}")
    if slopes.numel() != h:
        raise ValueError(f"slopes must have one entry per head ({h}), got shape {tuple(slopes.shape)}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    offset = int(offset)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if (window is not None or max_distance is not None) and offset + q_len > k_len:
        # Without its own key a query could be left with no visible key at all.
        raise ValueError(f"with a window or max_distance every query needs its own key: offset ({offset}) + "
                         f"q_len ({q_len}) must be <= k_len ({k_len})")
    if not (query.is_cuda or _interpreting()):
        raise ValueError("alibi_flash_attention needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
    slopes = slopes.to(device=query.device, dtype=torch.float32).contiguous()
    span = _allowed_span(h, window, max_distance, query.device)
    return _AlibiFlashAttention.apply(query, key, value, slopes, float(scale), offset, span)


def autotune_report() -> dict[str, dict[str, str]]:
    """The config each kernel's autotuner picked, per tuning key (q bucket, k bucket, d, window, dtypes)."""
    kernels = {"forward": _fwd_kernel, "backward_dkdv": _bwd_dkdv_kernel, "backward_dq": _bwd_dq_kernel}
    return {name: {str(key): str(config) for key, config in kernel.cache.items()} for name, kernel in kernels.items()}
