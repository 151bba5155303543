"""Fused causal ALiBi flash attention in Triton: the backward kernels and their launcher.

A preprocess kernel computes delta = rowsum(dO * O); one kernel accumulates dK, dV per key block (looping over
query blocks), another accumulates dQ per query block; both recompute P from the saved log-sum-exp instead of
using atomics. The algorithm and the shared pieces are in alibi_triton_forward.py.
"""

from __future__ import annotations

import torch

# In a `try` block because transformers' remote-code check (dynamic_module_utils.get_imports) skips imports there:
# a Hub copy of this file then still loads where triton is missing, and modeling_alibi catches this ImportError.
try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("alibi_triton_backward needs triton, which CUDA builds of PyTorch install") from error

from .alibi_triton_forward import (
    DKDV_CONFIGS,
    DQ_CONFIGS,
    LOG2E,
    TUNE_KEY,
    _at_block,
    _at_head,
    _bucket,
    _device_guard,
    _head_setup,
    _key_ranges,
    _program,
)

PREPROCESS_BLOCK_M = 64  # query rows per program of _bwd_preprocess (a bandwidth-bound row sum: not autotuned)


@triton.jit
def _bwd_preprocess(
    Out, DO, Delta,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_db, stride_dh, stride_dm, stride_dd,
    num_heads, batch_heads, q_len,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta_i = sum_d dO_id * O_id, the softmax-backward term shared by every key of row i."""
    block, off_b, off_h, bh = _program(num_heads, batch_heads)
    start_m = block * BLOCK_M
    Out = _at_block(Out, off_b, off_h, start_m, stride_ob, stride_oh, stride_om)
    DO = _at_block(DO, off_b, off_h, start_m, stride_db, stride_dh, stride_dm)
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
    block, off_b, off_h, bh = _program(num_heads, batch_heads)
    start_n = block * BLOCK_N
    bias_slope, span = _head_setup(Slopes, Span, off_h, scale, HAS_SPAN)

    Q = _at_head(Q, off_b, off_h, stride_qb, stride_qh)
    DO = _at_head(DO, off_b, off_h, stride_dob, stride_doh)
    K = _at_block(K, off_b, off_h, start_n, stride_kb, stride_kh, stride_kn)
    V = _at_block(V, off_b, off_h, start_n, stride_vb, stride_vh, stride_vn)
    DK = _at_block(DK, off_b, off_h, start_n, stride_dkb, stride_dkh, stride_dkn)
    DV = _at_block(DV, off_b, off_h, start_n, stride_dvb, stride_dvh, stride_dvn)
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
    block, off_b, off_h, bh = _program(num_heads, batch_heads)
    start_m = ((q_len + BLOCK_M - 1) // BLOCK_M - 1 - block) * BLOCK_M
    bias_slope, span = _head_setup(Slopes, Span, off_h, scale, HAS_SPAN)

    Q = _at_block(Q, off_b, off_h, start_m, stride_qb, stride_qh, stride_qm)
    DO = _at_block(DO, off_b, off_h, start_m, stride_dob, stride_doh, stride_dom)
    DQ = _at_block(DQ, off_b, off_h, start_m, stride_dqb, stride_dqh, stride_dqm)
    K = _at_head(K, off_b, off_h, stride_kb, stride_kh)
    V = _at_head(V, off_b, off_h, stride_vb, stride_vh)

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


def _backward(do, q, k, v, out, lse, slopes, scale, offset, span):
    b, h, q_len, d = q.shape
    k_len = k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)  # (b, h, q) fp32
    span_arg = slopes if span is None else span
    common = dict(HEAD_DIM=d, HAS_SPAN=span is not None)
    with _device_guard(q):
        _bwd_preprocess[(triton.cdiv(q_len, PREPROCESS_BLOCK_M) * b * h,)](
            out, do, delta, *out.stride(), *do.stride(), h, b * h, q_len, HEAD_DIM=d, BLOCK_M=PREPROCESS_BLOCK_M,
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
