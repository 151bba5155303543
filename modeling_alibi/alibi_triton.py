"""Fused causal ALiBi flash attention in Triton, forward and backward, tuned for NVIDIA Hopper.

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
# a Hub copy of this file then still loads where triton is missing, and modeling_alibi catches this ImportError.
try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("alibi_triton needs triton, which CUDA builds of PyTorch install") from error

__all__ = ["alibi_flash_attention", "is_supported", "autotune_report"]

LOG2E = math.log2(math.e)
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
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
    # One program per (query block, batch*head); consecutive programs share a query block across heads, and
    # the last query blocks (the longest causal rows) go first.
    pid = tl.program_id(0)
    bh = pid % batch_heads
    start_m = ((q_len + BLOCK_M - 1) // BLOCK_M - 1 - pid // batch_heads) * BLOCK_M
    off_b = bh // num_heads
    off_h = bh % num_heads
    bias_slope, span = _head_setup(Slopes, Span, off_h, scale, HAS_SPAN)

    # int64 base offsets: batch * head * length * d overflows int32 for long contexts.
    Q += off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh + start_m.to(tl.int64) * stride_qm
    K += off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    V += off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    Out += off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh + start_m.to(tl.int64) * stride_om

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


# ----------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_preprocess(
    Out, DO, Delta,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_db, stride_dh, stride_dm, stride_dd,
    num_heads, batch_heads, q_len,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta_i = sum_d dO_id * O_id, the softmax-backward term shared by every key of row i."""
    pid = tl.program_id(0)
    bh = pid % batch_heads
    start_m = pid // batch_heads * BLOCK_M
    off_b = bh // num_heads
    off_h = bh % num_heads
    Out += off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh + start_m.to(tl.int64) * stride_om
    DO += off_b.to(tl.int64) * stride_db + off_h.to(tl.int64) * stride_dh + start_m.to(tl.int64) * stride_dm
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len - start_m
    o = tl.load(Out + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_dm + offs_d[None, :] * stride_dd, mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BM,)
    tl.store(Delta + bh.to(tl.int64) * q_len + start_m + offs_m, delta, mask=row_ok)


@triton.jit
def _dkdv_inner(
    dk, dv, k, v,  # (BN, d) fp32 accumulators; this program's key and value tiles
    Q, DO, q_offs, do_offs, stride_qm, stride_dom,  # Q, dO at row 0 of this (batch, head); (BM, d) int32 offsets
    Lse, Delta,  # (q,) fp32 rows of this (batch, head)
    key_rel, offs_m, offs_n_f,  # key_rel = offset - start_n (scalar); (BM,) int32; (BN,) fp32
    lo, hi, q_len, span, bias_slope, qk_scale_log2,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, HAS_SPAN: tl.constexpr,
):
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        q_ptrs = Q + tl.cast(start_m, tl.int64) * stride_qm + q_offs
        do_ptrs = DO + tl.cast(start_m, tl.int64) * stride_dom + do_offs
        # Rows past q_len load as zeros with delta 0: their dO is 0 and so is their dS, whatever P is.
        if MASKED:
            row_ok = offs_m < q_len - start_m
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
            lse = tl.load(Lse + start_m + offs_m, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_ptrs)
            lse = tl.load(Lse + start_m + offs_m)
        # Transposed tiles (keys x queries): dK and dV accumulate over the query axis.
        qk_t = tl.dot(k, tl.trans(q))  # (BN, BM)
        dist_t = (start_m + key_rel + offs_m).to(tl.float32)[None, :] - offs_n_f[:, None]  # (BN, BM) exact
        p_t = tl.math.exp2((qk_t - bias_slope * dist_t) * qk_scale_log2 - lse[None, :])
        if MASKED:
            keep = dist_t >= 0
            if HAS_SPAN:
                keep = keep & (dist_t <= span)
            p_t = tl.where(keep, p_t, 0.0)
        if MASKED:
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            delta = tl.load(Delta + start_m + offs_m, mask=row_ok, other=0.0)
        else:
            do = tl.load(do_ptrs)
            delta = tl.load(Delta + start_m + offs_m)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        dp_t = tl.dot(v, tl.trans(do))  # (BN, BM)
        ds_t = p_t * (dp_t - delta[None, :])  # dL/d(score), up to the factor `scale` applied at the end
        dk = tl.dot(ds_t.to(q.dtype), q, dk)
    return dk, dv


@triton.autotune(configs=DKDV_CONFIGS, key=TUNE_KEY)
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, Lse, Delta, Slopes, Span,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    num_heads, batch_heads, q_len, k_len, offset, scale, qk_scale_log2,
    Q_BUCKET, K_BUCKET,  # autotune keys only
    HEAD_DIM: tl.constexpr, HAS_SPAN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One program per (key block, batch*head); the first key blocks are seen by the most rows and go first.
    pid = tl.program_id(0)
    bh = pid % batch_heads
    start_n = pid // batch_heads * BLOCK_N
    off_b = bh // num_heads
    off_h = bh % num_heads
    bias_slope, span = _head_setup(Slopes, Span, off_h, scale, HAS_SPAN)

    Q += off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    DO += off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
    K += off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh + start_n.to(tl.int64) * stride_kn
    V += off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh + start_n.to(tl.int64) * stride_vn
    DK += off_b.to(tl.int64) * stride_dkb + off_h.to(tl.int64) * stride_dkh + start_n.to(tl.int64) * stride_dkn
    DV += off_b.to(tl.int64) * stride_dvb + off_h.to(tl.int64) * stride_dvh + start_n.to(tl.int64) * stride_dvn
    Lse += bh.to(tl.int64) * q_len
    Delta += bh.to(tl.int64) * q_len

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < k_len - start_n  # (BN,)
    # Keys past k_len load as zeros; their dK/dV rows are never stored and do not touch the real rows.
    k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=col_ok[:, None], other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=col_ok[:, None], other=0.0)
    q_offs = offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd  # (BM, d)
    do_offs = offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod  # (BM, d)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    # Query rows i see key j when 0 <= i + offset - j <= span. Rows in [full_lo, full_hi) see all keys of the
    # block; the diagonal band below full_lo, the window's far edge and the q_len tail need masks.
    last_key = start_n + BLOCK_N - 1
    hi = tl.minimum(q_len, last_key + span + 1 - offset)
    lo = tl.maximum(start_n - offset, 0) // BLOCK_M * BLOCK_M
    full_lo = (tl.maximum(last_key - offset, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    full_hi = tl.minimum(q_len, tl.maximum(start_n + span + 1 - offset, 0)) // BLOCK_M * BLOCK_M
    key_rel = offset - start_n
    offs_n_f = offs_n.to(tl.float32)
    dk, dv = _dkdv_inner(
        dk, dv, k, v, Q, DO, q_offs, do_offs, stride_qm, stride_dom, Lse, Delta, key_rel, offs_m, offs_n_f,
        lo, tl.minimum(full_lo, hi), q_len, span, bias_slope, qk_scale_log2, BLOCK_M, True, HAS_SPAN,
    )
    dk, dv = _dkdv_inner(
        dk, dv, k, v, Q, DO, q_offs, do_offs, stride_qm, stride_dom, Lse, Delta, key_rel, offs_m, offs_n_f,
        full_lo, full_hi, q_len, span, bias_slope, qk_scale_log2, BLOCK_M, False, HAS_SPAN,
    )
    dk, dv = _dkdv_inner(
        dk, dv, k, v, Q, DO, q_offs, do_offs, stride_qm, stride_dom, Lse, Delta, key_rel, offs_m, offs_n_f,
        tl.maximum(full_lo, full_hi), hi, q_len, span, bias_slope, qk_scale_log2, BLOCK_M, True, HAS_SPAN,
    )

    dk *= scale  # d(score)/dk = scale * q
    tl.store(DK + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd, dk.to(DK.dtype.element_ty),
             mask=col_ok[:, None])
    tl.store(DV + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd, dv.to(DV.dtype.element_ty),
             mask=col_ok[:, None])


@triton.jit
def _dq_inner(
    dq, q, do, lse, delta,  # (BM, d) fp32 accumulator; (BM, d) tiles; (BM,) fp32
    K, V, k_offs, v_offs, stride_kn, stride_vn,  # as in _fwd_inner
    q_pos, offs_n, offs_n_f,
    lo, hi, k_len, span, bias_slope, qk_scale_log2,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_SPAN: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k_ptrs = K + tl.cast(start_n, tl.int64) * stride_kn + k_offs
        v_ptrs = V + tl.cast(start_n, tl.int64) * stride_vn + v_offs
        if MASKED:
            in_bounds = offs_n < k_len - start_n
            k = tl.load(k_ptrs, mask=in_bounds[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=in_bounds[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(k))  # (BM, BN)
        dist = (q_pos - start_n).to(tl.float32)[:, None] - offs_n_f[None, :]  # (BM, BN) exact
        p = tl.math.exp2((qk - bias_slope * dist) * qk_scale_log2 - lse[:, None])
        if MASKED:
            keep = (dist >= 0) & in_bounds[None, :]
            if HAS_SPAN:
                keep = keep & (dist <= span)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v))  # (BM, BN)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.autotune(configs=DQ_CONFIGS, key=TUNE_KEY)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, Lse, Delta, Slopes, Span,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    num_heads, batch_heads, q_len, k_len, offset, scale, qk_scale_log2,
    Q_BUCKET, K_BUCKET,  # autotune keys only
    HEAD_DIM: tl.constexpr, HAS_SPAN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Same program layout and key ranges as the forward kernel.
    pid = tl.program_id(0)
    bh = pid % batch_heads
    start_m = ((q_len + BLOCK_M - 1) // BLOCK_M - 1 - pid // batch_heads) * BLOCK_M
    off_b = bh // num_heads
    off_h = bh % num_heads
    bias_slope, span = _head_setup(Slopes, Span, off_h, scale, HAS_SPAN)

    Q += off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh + start_m.to(tl.int64) * stride_qm
    DO += off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh + start_m.to(tl.int64) * stride_dom
    DQ += off_b.to(tl.int64) * stride_dqb + off_h.to(tl.int64) * stride_dqh + start_m.to(tl.int64) * stride_dqm
    K += off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    V += off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n_f = offs_n.to(tl.float32)
    q_pos = start_m + offset + offs_m
    row_ok = offs_m < q_len - start_m
    # Rows past q_len: q = dO = 0 and delta = 0, so dS = 0 there; they are not stored anyway.
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=row_ok[:, None], other=0.0)
    lse = tl.load(Lse + bh.to(tl.int64) * q_len + start_m + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(Delta + bh.to(tl.int64) * q_len + start_m + offs_m, mask=row_ok, other=0.0)
    k_offs = offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd  # (BN, d)
    v_offs = offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd  # (BN, d)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    lo, full_lo, full_hi, hi = _key_ranges(start_m, q_len, k_len, offset, span, BLOCK_M, BLOCK_N)
    if HAS_SPAN:
        dq = _dq_inner(
            dq, q, do, lse, delta, K, V, k_offs, v_offs, stride_kn, stride_vn, q_pos, offs_n, offs_n_f,
            lo, tl.minimum(full_lo, hi), k_len, span, bias_slope, qk_scale_log2, BLOCK_N, True, HAS_SPAN,
        )
    dq = _dq_inner(
        dq, q, do, lse, delta, K, V, k_offs, v_offs, stride_kn, stride_vn, q_pos, offs_n, offs_n_f,
        full_lo, full_hi, k_len, span, bias_slope, qk_scale_log2, BLOCK_N, False, HAS_SPAN,
    )
    dq = _dq_inner(
        dq, q, do, lse, delta, K, V, k_offs, v_offs, stride_kn, stride_vn, q_pos, offs_n, offs_n_f,
        tl.maximum(full_lo, full_hi), hi, k_len, span, bias_slope, qk_scale_log2, BLOCK_N, True, HAS_SPAN,
    )

    dq *= scale  # d(score)/dq = scale * k
    tl.store(DQ + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------


def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def _device_guard(tensor: torch.Tensor):
    """Launch on the tensor's GPU, not the current one."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


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


def _backward(do, q, k, v, out, lse, slopes, scale, offset, span):
    b, h, q_len, d = q.shape
    k_len = k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)  # (b, h, q) fp32
    span_arg = slopes if span is None else span
    common = dict(HEAD_DIM=d, HAS_SPAN=span is not None)
    with _device_guard(q):
        pre_block = 64
        _bwd_preprocess[(triton.cdiv(q_len, pre_block) * b * h,)](
            out, do, delta, *out.stride(), *do.stride(), h, b * h, q_len, HEAD_DIM=d, BLOCK_M=pre_block,
        )
        _bwd_dkdv_kernel[lambda meta: (triton.cdiv(k_len, meta["BLOCK_N"]) * b * h,)](
            q, k, v, do, dk, dv, lse, delta, slopes, span_arg,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
            h, b * h, q_len, k_len, offset, scale, scale * LOG2E, _bucket(q_len), _bucket(k_len), **common,
        )
        _bwd_dq_kernel[lambda meta: (triton.cdiv(q_len, meta["BLOCK_M"]) * b * h,)](
            q, k, v, do, dq, lse, delta, slopes, span_arg,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
            h, b * h, q_len, k_len, offset, scale, scale * LOG2E, _bucket(q_len), _bucket(k_len), **common,
        )
    return dq, dk, dv


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
