"""ALiBi attention for decode steps (a few queries against a long KV cache), split over the keys, in Triton.

Why a hand-written kernel: at batch 1 a decode step reads the whole KV cache once per layer, so it is bound by
memory bandwidth, and only a kernel that spreads the keys over every SM reaches it. For one layer (8 heads of 128,
bf16) at 65,536 cached tokens on an H200, the model's fallback (two batched GEMVs around an fp32 softmax,
`eager_attention`) takes 0.18 ms and this kernel 0.078 ms, against 0.063 ms to read the cache at the device's
copy bandwidth (benchmarks/decode_kernel_bench.py).

Algorithm: flash-decoding.
  * Pass 1: program (row of b*h, split) walks its slice of the keys in tiles of BLOCK_N, with an online softmax
    for all (up to 16) queries at once, and writes an unnormalized partial output, its running max and sum.
    Every tile is read, masked keys included: a branch to skip them would stop the loads of later tiles from
    being issued early, which is what keeps the memory busy at batch 1. Only real query rows are written.
  * Pass 2: one program per (b, h, query) merges the splits, online over blocks of splits (one load each):
    out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
Positions come from the caller per query and per key (cumulative-mask positions), so left padding, static
caches and sliding-window caches all work: score(i, j) = scale * q_i.k_j - m_h * (pos_i - pos_j), allowed where
0 <= pos_i - pos_j (and < window, and <= max_distance[h]) and key j is not padding. The distance is an exact
integer; the bias is its fp32 product with the slope, as in the model's other backends. A query that may see no
key (a padded query row) gets zeros, as flex_attention gives. Key positions and padding reach the kernel as one
int32 per key (`_key_codes`): the position, or PADDED for padding, a position after every query's, which the
causal test then masks. So a tile reads 4 bytes of indices per key instead of an int64 and a bool.

Inside torch.compile the launch is a custom op (`torch.library.custom_op`), opaque to inductor: inductor's own
recompilation of user-defined Triton kernels failed on this one (torch 2.11, triton 3.6), while Triton's JIT
compiles it. The op launches no host sync, so a CUDA graph can capture it.
"""

from __future__ import annotations

import torch

# In a `try` block for transformers' remote-code import check; see alibi_triton_forward.py.
try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("alibi_triton_decode needs triton, which CUDA builds of PyTorch install") from error

from .alibi_ops import custom_op
from .alibi_triton_forward import _allowed_span, _device_guard, _interpreting, pdl_capable

__all__ = ["alibi_decode_attention", "decode_supported"]

MAX_QUERIES = 16  # one tl.dot tile of query rows: tl.dot needs at least 16
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
# A padded key's position code: after every query's (positions are int32), so the causal test masks it.
PADDED = 2**31 - 1
_PADDED = tl.constexpr(PADDED)  # the same, readable inside @triton.jit
_LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2 e); a constexpr, readable inside @triton.jit
# Launch settings: programs per SM to aim for, so that every SM streams keys at batch 1; keys per tile;
# software-pipelining depth; warps per program; splits merged per load in pass 2. benchmarks/decode_kernel_bench.py
# measured 108 settings on an H200 (q=1, 8 heads, d 128, bf16): these read a 65,536-key cache in 0.080 ms, 0.79
# of the device-to-device copy bandwidth, and 2,048 keys in 0.014 ms (the best setting there: 0.013 ms).
PROGRAMS_PER_SM = 2
BLOCK_N = 64
NUM_STAGES = 3
NUM_WARPS = 4
MERGE_SPLITS = 64
# Programmatic dependent launch on sm_90 and newer (alibi_triton_forward.pdl_capable): each kernel lets the next one
# launch once all its programs run, and reads its inputs after `gdc_wait`. In graph_generate's batch-1 step the
# output projection's kernel (alibi_triton_gemv.py) then loads its weights while the merge runs.
LAUNCH_PDL = True


@triton.jit
def _split_kernel(
    Q, K, V, Slopes, Span, QPos, KCode, PartOut, PartMax, PartSum,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_qpb, stride_qpm, stride_kcb, stride_kcn,
    num_heads, q_len, k_len, keys_per_split, scale,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SPAN: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # the merge may launch now; the query and the cache are read after the kernels writing them end
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)  # b * num_heads + h
    split = tl.program_id(1)
    b = row // num_heads
    h = row % num_heads
    queries = tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)
    query_ok = queries < q_len
    q = tl.load(Q + b * stride_qb + h * stride_qh + queries[:, None] * stride_qm + dims[None, :] * stride_qd,
                mask=query_ok[:, None], other=0.0)  # (BLOCK_Q, HEAD_DIM)
    query_pos = tl.load(QPos + b * stride_qpb + queries * stride_qpm, mask=query_ok, other=-1)  # (BLOCK_Q,) int32
    slope = tl.load(Slopes + h)
    span = 0
    if HAS_SPAN:
        span = tl.load(Span + h)

    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, k_len)
    for first in range(start, end, BLOCK_N):
        keys = first + tl.arange(0, BLOCK_N)
        in_range = keys < end
        # Keys and values are loaded first, with no branch in the loop, so that Triton's pipeliner can keep the
        # next tiles' loads in flight: at batch 1 there are only a few programs per SM to hide memory latency.
        k = tl.load(K + b * stride_kb + h * stride_kh + keys[:, None] * stride_kn + dims[None, :] * stride_kd,
                    mask=in_range[:, None], other=0.0)  # (BLOCK_N, HEAD_DIM)
        v = tl.load(V + b * stride_vb + h * stride_vh + keys[:, None] * stride_vn + dims[None, :] * stride_vd,
                    mask=in_range[:, None], other=0.0)  # (BLOCK_N, HEAD_DIM)
        key_code = tl.load(KCode + b * stride_kcb + keys * stride_kcn, mask=in_range, other=_PADDED)  # (BLOCK_N,)
        distance = query_pos[:, None] - key_code[None, :]  # (BLOCK_Q, BLOCK_N), exact integers
        allowed = distance >= 0
        if HAS_SPAN:
            allowed = allowed & (distance <= span)
        scores = tl.dot(q, tl.trans(k)) * scale - slope * distance.to(tl.float32)  # (BLOCK_Q, BLOCK_N) fp32
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet stay at 0
        alpha = tl.exp2((m_i - m_safe) * _LOG2E)
        p = tl.exp2((scores - m_safe[:, None]) * _LOG2E)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    part = (row * tl.num_programs(1) + split) * BLOCK_Q + queries  # (BLOCK_Q,) rows of the partial buffers
    tl.store(PartMax + part, m_i, mask=query_ok)
    tl.store(PartSum + part, l_i, mask=query_ok)
    tl.store(PartOut + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=query_ok[:, None])


@triton.jit
def _merge_kernel(
    PartOut, PartMax, PartSum, Out,
    stride_ob, stride_oh, stride_om, stride_od,
    num_heads, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, MERGE_SPLITS: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # the next kernel may launch now (the output projection starts loading its weights)
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    query = tl.program_id(1)
    b = row // num_heads
    h = row % num_heads
    splits = tl.arange(0, MERGE_SPLITS)
    dims = tl.arange(0, HEAD_DIM)
    first = row * num_splits * BLOCK_Q + query  # split 0's row of this query in the partial buffers
    # Online over blocks of splits, as pass 1 is over tiles: a block's maxima, sums and outputs are loaded at once,
    # so up to MERGE_SPLITS splits cost one round trip to memory.
    m_run = tl.full([1], float("-inf"), dtype=tl.float32)
    total = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for block in range(0, num_splits, MERGE_SPLITS):
        ok = block + splits < num_splits
        rows = first + (block + splits) * BLOCK_Q
        m = tl.load(PartMax + rows, mask=ok, other=float("-inf"))  # (MERGE_SPLITS,)
        sums = tl.load(PartSum + rows, mask=ok, other=0.0)
        part = tl.load(PartOut + rows[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None], other=0.0)
        m_new = tl.maximum(m_run, tl.max(m, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: every weight below is 0
        alpha = tl.exp2((m_run - m_safe) * _LOG2E)
        weight = tl.exp2((m - m_safe) * _LOG2E)  # (MERGE_SPLITS,); 0 for a split that saw nothing
        total = total * alpha + tl.sum(sums * weight, 0)
        acc = acc * alpha + tl.sum(part * weight[:, None], 0)  # (HEAD_DIM,)
        m_run = m_new
    out = acc / tl.where(total > 0, total, 1.0)  # (HEAD_DIM,); no visible key: zeros
    tl.store(Out + b * stride_ob + h * stride_oh + query * stride_om + dims * stride_od, out.to(Out.dtype.element_ty))


def _num_splits(rows: int, k_len: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """(splits, keys per split): PROGRAMS_PER_SM programs per SM or more over all (b, h) rows (fewer only when the
    keys have fewer tiles), whole tiles each.

    The tiles per split are rounded down, not up: a cache just over the target's tile count (2,176 keys are 34
    tiles, against 33 splits for 8 rows on 132 SMs) then keeps one tile per split, where rounding up gave two
    tiles to each of 17 splits and left half the SMs idle. So there are up to twice the target's programs."""
    sms = 4 if _interpreting() else _multiprocessors(device.index if device.index is not None else 0)
    tiles = triton.cdiv(k_len, block_n)
    target = triton.cdiv(PROGRAMS_PER_SM * sms, rows)
    keys_per_split = max(1, tiles // target) * block_n
    return triton.cdiv(k_len, keys_per_split), keys_per_split


@torch.compiler.assume_constant_result
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@torch.compiler.assume_constant_result
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)  # bf16 tl.dot


def decode_supported(query: torch.Tensor) -> bool:
    """Whether `alibi_decode_attention` serves queries like `query` (b, h, q, d); callers fall back otherwise."""
    return (
        query.is_cuda
        and query.dim() == 4
        and query.shape[2] <= MAX_QUERIES
        and query.dtype in SUPPORTED_DTYPES
        and query.shape[-1] in SUPPORTED_HEAD_DIMS
        and _capable(query.device.index if query.device.index is not None else 0)
    )


def _decode(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slopes: torch.Tensor,
    scale: float,
    query_positions: torch.Tensor,
    key_codes: torch.Tensor,
    window: int | None,
    max_distance: torch.Tensor | None,
) -> torch.Tensor:
    """The custom op's body: both launches. Every argument is explicit, as custom ops infer their schema."""
    b, h, q_len, d = query.shape
    k_len = key.shape[2]
    block_n = 16 if _interpreting() else BLOCK_N
    splits, keys_per_split = _num_splits(b * h, k_len, block_n, query.device)
    part_out = torch.empty(b * h, splits, MAX_QUERIES, d, device=query.device, dtype=torch.float32)
    part_max = torch.empty(b * h, splits, MAX_QUERIES, device=query.device, dtype=torch.float32)
    part_sum = torch.empty_like(part_max)
    out = torch.empty(b, h, q_len, d, device=query.device, dtype=query.dtype)
    slopes = slopes.to(device=query.device, dtype=torch.float32)
    span = _allowed_span(h, window, max_distance, query.device)
    pdl = LAUNCH_PDL and pdl_capable(query)
    launch = {"launch_pdl": True} if pdl else {}
    with _device_guard(query):
        _split_kernel[(b * h, splits)](
            query, key, value, slopes, slopes if span is None else span, query_positions, key_codes,
            part_out, part_max, part_sum,
            *query.stride(), *key.stride(), *value.stride(), *query_positions.stride(), *key_codes.stride(),
            h, q_len, k_len, keys_per_split, scale,
            HEAD_DIM=d, BLOCK_Q=MAX_QUERIES, BLOCK_N=block_n, HAS_SPAN=span is not None, PDL=pdl,
            num_warps=NUM_WARPS, num_stages=NUM_STAGES, **launch,
        )
        _merge_kernel[(b * h, q_len)](
            part_out, part_max, part_sum, out, *out.stride(), h, splits,
            HEAD_DIM=d, BLOCK_Q=MAX_QUERIES, MERGE_SPLITS=MERGE_SPLITS, PDL=pdl, num_warps=4, **launch,
        )
    return out


def _key_codes(key_positions: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
    """(b, k) int32: each key's position, or PADDED where it is padding (the kernels' one index load per key).

    Outside the custom op, so that inductor fuses it with the mask's other arithmetic, once per forward."""
    if key_padding is not None:
        key_positions = key_positions.masked_fill(key_padding, PADDED)
    return key_positions.to(torch.int32)


def _fake_decode(query: torch.Tensor, *args) -> torch.Tensor:
    return torch.empty(query.shape, device=query.device, dtype=query.dtype)  # (b, h, q, d) contiguous


_decode_op = custom_op("decode", __name__, _decode, _fake_decode)


def alibi_decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slopes: torch.Tensor,
    scale: float,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_padding: torch.Tensor | None = None,
    window: int | None = None,
    max_distance: torch.Tensor | None = None,
) -> torch.Tensor:
    """ALiBi attention of at most 16 queries per row over a KV cache, with no (b, h, q, k) tensor and no sync.

    Args:
        query: (b, h, q, d), q <= 16, bf16 or fp16, any strides.
        key, value: (b, h, k, d), the cache (a static cache's empty slots included, marked in `key_padding`).
        slopes: (h,) ALiBi slopes, used in fp32.
        scale: softmax scale applied to q.k.
        query_positions: (b, q) integer positions of the queries, below 2**31 - 1 (they are used as int32).
        key_positions: (b, k) integer positions of the keys, likewise.
        key_padding: (b, k) bool, True where a key is padding or an empty slot; None when there is none.
        window: keys at distance >= window are masked.
        max_distance: (h,) fp32; keys at distance > max_distance[h] are masked (ALiBi truncation).

    Returns:
        (b, h, q, d) contiguous, in the query dtype. Rows whose query may see no key are zeros.
    """
    q_len, d = query.shape[2], query.shape[3]
    if q_len > MAX_QUERIES or d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"alibi_decode_attention takes at most {MAX_QUERIES} queries per row and head_dim in "
                         f"{SUPPORTED_HEAD_DIMS}; got q={q_len}, d={d}. Use alibi_flash_attention for prompts.")
    if max_distance is not None:
        max_distance = torch.as_tensor(max_distance, dtype=torch.float32, device=query.device).reshape(-1)
    return _decode_op(query, key, value, slopes, float(scale), query_positions.to(torch.int32),
                      _key_codes(key_positions, key_padding), window, max_distance)
