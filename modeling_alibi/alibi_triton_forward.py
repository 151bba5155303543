"""Fused causal ALiBi flash attention in Triton: the forward kernel, the pieces both passes share, launchers.

The public entry point and autograd live in alibi_triton.py, the backward kernels in alibi_triton_backward.py.

Why a hand-written kernel: FlexAttention with an ALiBi `score_mod` and a causal block mask reaches only ~0.6x
of unbiased SDPA flash on an H100 (benchmarks/triton_alibi_bench.py), because its generated kernel is generic.
ALiBi adds one multiply-add per score, so a dedicated flash kernel should stay close to the unbiased one.

Algorithm: FlashAttention-2 as in Triton's fused-attention tutorial (python/tutorials/06-fused-attention.py).
  * Softmax in base 2: exp(x) = exp2(x * log2 e), with log2 e folded into the softmax scale.
  * Score(i, j) = scale * q_i.k_j - m_h * (i + offset - j), allowed where 0 <= i + offset - j (causal),
    optionally also < `window` and <= `max_distance[h]`. The kernel keeps scores in q.k units,
    s = q.k - (m_h / scale) * distance, and applies scale * log2 e inside the exp2 argument's FMA. Against
    the unbiased kernel, ALiBi costs two fp32 ops per score: the distance subtraction and one FMA.
  * The bias is built per tile from an exact distance: (query position - first key of the tile) is an int32
    scalar-plus-vector, converted to fp32 and reduced by the column index. The large absolute positions cancel
    in integer arithmetic, so bias values near the diagonal are exact at any context length (computing
    m*i - m*j in fp32 would round them away once positions reach the millions). No (b, h, q, k) tensor exists.
  * Each program walks its key range in three loops: masked blocks at the window's far edge (only with a
    window), unmasked blocks that every row may fully see (no mask arithmetic, the hot loop), and masked
    blocks on the diagonal or past the end of the keys. Blocks outside the causal/window band are never
    visited, so a sliding window costs O(L * window).
  * Programs are launched heaviest first (long causal rows before short ones), which evens out the tail.
  * Backward: a preprocess kernel computes delta = rowsum(dO * O); one kernel accumulates dK, dV per key
    block (looping over query blocks), another accumulates dQ per query block; both recompute P from the
    saved log-sum-exp instead of using atomics.

Positions stay exact while distances are below 2**24 (16.7M tokens). Inputs may have any strides, so the
model's (b, L, h, d).transpose(1, 2) views are read in place and the output keeps the query's memory layout.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

# In a `try` block because transformers' remote-code check (dynamic_module_utils.get_imports) skips imports there:
# a Hub copy of this file then still loads where triton is missing, and alibi_attention.py catches this ImportError.
try:
    import triton
    import triton.language as tl
    from triton.runtime.jit import JITFunction
except ImportError as error:
    raise ImportError("alibi_triton_forward needs triton, which CUDA builds of PyTorch install") from error

from torch.library import wrap_triton as _torch_wrap_triton

LOG2E = math.log2(math.e)
# "No limit" for the allowed distance: large enough for any context, small enough that the int32 loop-bound
# arithmetic (position + span + block) cannot overflow.
NO_SPAN = 2**30
_NO_SPAN = tl.constexpr(NO_SPAN)  # the same, readable from inside @triton.jit functions


def _interpreting() -> bool:
    """True under TRITON_INTERPRET=1, Triton's numpy interpreter (the CPU tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _configs(choices: list[tuple[int, int, int, int]], interpreted: tuple[int, int]) -> list[triton.Config]:
    """Autotune candidates as (BLOCK_M, BLOCK_N, num_warps, num_stages).

    Each candidate compiles separately, so the lists stay short. The interpreter gets one small config: it
    runs tiles as numpy arrays, and small tiles make tiny test inputs span several blocks.
    """
    if _interpreting():
        block_m, block_n = interpreted
        return [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_m, block_n, warps, stages in choices
    ]


# Candidates were chosen by compiling for sm_90 offline and keeping those that do not spill registers at
# head_dim 128 (4-warp variants with 128-row tiles spill: a (128, 128) fp32 accumulator alone takes 128
# registers per thread).
# Forward: BLOCK_M query rows per program, BLOCK_N keys per step; 128 x 64 is the tutorial's Hopper shape.
FWD_CONFIGS = _configs([(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3)], interpreted=(32, 16))
# dK/dV: BLOCK_N keys per program (two (BLOCK_N, d) fp32 accumulators), BLOCK_M query rows per step.
DKDV_CONFIGS = _configs([(32, 128, 8, 2), (64, 128, 8, 3), (16, 128, 8, 3), (64, 64, 8, 3)], interpreted=(16, 32))
# dQ: BLOCK_M query rows per program, BLOCK_N keys per step.
DQ_CONFIGS = _configs([(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 4, 4)], interpreted=(32, 16))
# Tuning keys: length buckets rather than lengths, so decoding (k_len + 1 per step) does not re-tune each step.
TUNE_KEY = ["Q_BUCKET", "K_BUCKET", "HEAD_DIM", "HAS_SPAN"]


# ----------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _key_ranges(start_m, q_len, k_len, offset, span, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key loop bounds for query rows [start_m, start_m + BLOCK_M), all multiples of BLOCK_N except `hi`.

    [lo, full_lo) and [max(full_lo, full_hi), hi) need masks, [full_lo, full_hi) is visible to every row.
    Row i sits at position i + offset and sees keys j with 0 <= (i + offset) - j <= span.
    """
    first = start_m + offset  # position of the first row
    last = tl.minimum(start_m + BLOCK_M, q_len) - 1 + offset  # ... of the last real row
    hi = tl.minimum(last + 1, k_len)
    full_hi = tl.minimum(first + 1, k_len) // BLOCK_N * BLOCK_N  # keys <= first: causal for every row
    lo = tl.maximum(first - span, 0) // BLOCK_N * BLOCK_N
    full_lo = (tl.maximum(last - span, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N  # keys >= last - span
    return lo, full_lo, full_hi, hi


@triton.jit
def _program(num_heads, batch_heads):
    """(block number, batch, head, batch * head) of this program. The kernels run one program per (block, batch *
    head), and consecutive programs take the same block for each head in turn."""
    pid = tl.program_id(0)
    bh = pid % batch_heads
    return pid // batch_heads, bh // num_heads, bh % num_heads, bh


@triton.jit
def _at_head(ptr, off_b, off_h, stride_b, stride_h):
    """`ptr` moved to (batch off_b, head off_h), in int64: batch * head * length * d overflows int32."""
    return ptr + (off_b.to(tl.int64) * stride_b + off_h.to(tl.int64) * stride_h)


@triton.jit
def _at_block(ptr, off_b, off_h, start, stride_b, stride_h, stride_s):
    """`_at_head`, and on to sequence position `start`."""
    return ptr + (off_b.to(tl.int64) * stride_b + off_h.to(tl.int64) * stride_h + start.to(tl.int64) * stride_s)


@triton.jit
def _head_setup(Slopes, Span, off_h, scale, HAS_SPAN: tl.constexpr):
    """The head's slope in q.k units (m_h / scale) and its largest allowed distance."""
    bias_slope = tl.load(Slopes + off_h) / scale
    if HAS_SPAN:
        span = tl.load(Span + off_h)
    else:
        span = _NO_SPAN
    return bias_slope, span


# ----------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q,  # running output (BM, d) fp32, row sums and maxima (BM,) fp32; q tile (BM, d)
    K, V, k_offs, v_offs, stride_kn, stride_vn,  # K, V at key 0 of this (batch, head); (BN, d) int32 offsets
    q_pos, offs_n, offs_n_f,  # (BM,) int32 query positions; (BN,) 0..BN-1 as int32 and fp32
    lo, hi, k_len, span, bias_slope, qk_scale_log2,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_SPAN: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        # A scalar base plus fixed int32 offsets: loop-carried (BN, d) pointer tensors cost registers and
        # made several configs spill on sm_90.
        k_ptrs = K + tl.cast(start_n, tl.int64) * stride_kn + k_offs
        v_ptrs = V + tl.cast(start_n, tl.int64) * stride_vn + v_offs
        if MASKED:
            in_bounds = offs_n < k_len - start_n  # (BN,) the last block may overhang k_len
            k = tl.load(k_ptrs, mask=in_bounds[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, tl.trans(k))  # (BM, BN) fp32
        # Exact distance: integer (position - start_n) first, then the small column offset in fp32.
        dist = (q_pos - start_n).to(tl.float32)[:, None] - offs_n_f[None, :]  # (BM, BN)
        s = qk - bias_slope * dist
        if MASKED:
            keep = (dist >= 0) & in_bounds[None, :]
            if HAS_SPAN:
                keep = keep & (dist <= span)
            # Finite, not -inf: a row that sees nothing in this block keeps a finite max, so exp2 below
            # gives no NaN; the garbage it sums is scaled by exp2(-huge) = 0 once a real key arrives.
            s = tl.where(keep, s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s * qk_scale_log2 - (m_new * qk_scale_log2)[:, None])  # (BM, BN)
        alpha = tl.math.exp2((m_i - m_new) * qk_scale_log2)  # rescales what was summed under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=in_bounds[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=FWD_CONFIGS, key=TUNE_KEY)
@triton.jit
def _fwd_kernel(
    Q, K, V, Out, Lse, Slopes, Span,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    num_heads, batch_heads, q_len, k_len, offset, scale, qk_scale_log2,
    Q_BUCKET, K_BUCKET,  # autotune keys only
    HEAD_DIM: tl.constexpr, HAS_SPAN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One program per (query block, batch*head): the last query blocks (the longest causal rows) go first.
    block, off_b, off_h, bh = _program(num_heads, batch_heads)
    start_m = ((q_len + BLOCK_M - 1) // BLOCK_M - 1 - block) * BLOCK_M
    bias_slope, span = _head_setup(Slopes, Span, off_h, scale, HAS_SPAN)

    Q = _at_block(Q, off_b, off_h, start_m, stride_qb, stride_qh, stride_qm)
    K = _at_head(K, off_b, off_h, stride_kb, stride_kh)
    V = _at_head(V, off_b, off_h, stride_vb, stride_vh)
    Out = _at_block(Out, off_b, off_h, start_m, stride_ob, stride_oh, stride_om)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n_f = offs_n.to(tl.float32)
    q_pos = start_m + offset + offs_m  # (BM,)
    row_ok = offs_m < q_len - start_m  # (BM,)
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    k_offs = offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd  # (BN, d)
    v_offs = offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd  # (BN, d)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    lo, full_lo, full_hi, hi = _key_ranges(start_m, q_len, k_len, offset, span, BLOCK_M, BLOCK_N)
    if HAS_SPAN:  # the window's far edge; without a window lo = full_lo = 0
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, K, V, k_offs, v_offs, stride_kn, stride_vn, q_pos, offs_n, offs_n_f,
            lo, tl.minimum(full_lo, hi), k_len, span, bias_slope, qk_scale_log2, BLOCK_N, True, HAS_SPAN,
        )
    # The hot loop: keys every row may see, no masks.
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, K, V, k_offs, v_offs, stride_kn, stride_vn, q_pos, offs_n, offs_n_f,
        full_lo, full_hi, k_len, span, bias_slope, qk_scale_log2, BLOCK_N, False, HAS_SPAN,
    )
    # The diagonal blocks, and a last block that overhangs k_len.
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, K, V, k_offs, v_offs, stride_kn, stride_vn, q_pos, offs_n, offs_n_f,
        tl.maximum(full_lo, full_hi), hi, k_len, span, bias_slope, qk_scale_log2, BLOCK_N, True, HAS_SPAN,
    )

    # Every real row saw its own key (distance 0), so l_i >= 1 there.
    out = acc / l_i[:, None]
    # log2-sum-exp2 of the scaled scores: backward rebuilds P = exp2(s * qk_scale_log2 - lse) from it.
    lse = m_i * qk_scale_log2 + tl.math.log2(l_i)
    tl.store(Lse + bh.to(tl.int64) * q_len + start_m + offs_m, lse, mask=row_ok)
    tl.store(Out + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od, out.to(Out.dtype.element_ty),
             mask=row_ok[:, None])



def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def _device_guard(tensor: torch.Tensor):
    """Launch on the tensor's GPU, not the current one."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


@torch.compiler.assume_constant_result
def _hopper(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def pdl_capable(tensor: torch.Tensor) -> bool:
    """Whether kernels on this tensor's device can use programmatic dependent launch (sm_90 and newer; not under the
    interpreter): a kernel launched with it may start before the one before it ends, and waits for it in
    `gdc_wait`."""
    return tensor.is_cuda and not _interpreting() and _hopper(tensor.device.index or 0)


def wrap_triton(kernel):
    """`torch.library.wrap_triton(kernel)`, so that inductor launches the kernel from its own code (the launches
    inside alibi_ops.triton_op ops); the kernel itself under Triton's interpreter (TRITON_INTERPRET=1,
    tests/test_norm.py and tests/test_loss.py), whose kernels are not JITFunctions and which torch 2.11's
    `wrap_triton` refuses. Named as torch's: `triton_op` finds an op's kernels (for its compile-cache keys) by
    looking for `wrap_triton(<kernel>)` calls in the op's source."""
    return _torch_wrap_triton(kernel) if isinstance(kernel, JITFunction) else kernel


def _forward(q, k, v, slopes, scale, offset, span) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, q_len, d = q.shape
    k_len = k.shape[2]
    out = torch.empty_like(q)  # same memory layout as q, e.g. (b, q, h, d) behind a transposed view
    lse = torch.empty((b, h, q_len), device=q.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(q_len, meta["BLOCK_M"]) * b * h,)

    with _device_guard(q):
        _fwd_kernel[grid](
            q, k, v, out, lse, slopes, slopes if span is None else span,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            h, b * h, q_len, k_len, offset, scale, scale * LOG2E,
            _bucket(q_len), _bucket(k_len),
            HEAD_DIM=d, HAS_SPAN=span is not None,
        )
    return out, lse


def _allowed_span(
    num_heads: int, window: int | None, max_distance: torch.Tensor | float | None, device: torch.device
) -> torch.Tensor | None:
    """Largest allowed query-key distance per head, (h,) int32; None when only causality limits the keys.

    Distances are integers, so `distance <= max_distance` is `distance <= floor(max_distance)`, and
    `distance < window` is `distance <= window - 1`.
    """
    if window is None and max_distance is None:
        return None
    span = torch.full((num_heads,), NO_SPAN, dtype=torch.int64, device=device)
    if max_distance is not None:
        limit = torch.as_tensor(max_distance, dtype=torch.float64, device=device).reshape(-1)
        if limit.numel() not in (1, num_heads):
            raise ValueError(
                f"max_distance must be a scalar or have one entry per head ({num_heads}), got {limit.numel()} values"
            )
        # Negative limits become 0: every query still sees itself (a row with no keys has no softmax).
        span = torch.minimum(span, limit.floor().clamp(0, NO_SPAN).to(torch.int64).expand(num_heads))
    if window is not None:
        span = span.clamp(max=window - 1)
    return span.to(torch.int32).contiguous()
