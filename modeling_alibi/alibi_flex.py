"""FlexAttention with ALiBi: the block masks that skip empty key blocks, and the compiled kernel call.

ALiBi is flex's `score_mod` (one multiply-add per score, in fp32), masking its `mask_mod`; no (b, h, q, k)
tensor is ever built. `flex_alibi_attention` takes the (b, h, q, d) layout and an `AlibiAttentionMask`.

Hub payload: imports only torch, the standard library and alibi_mask.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from .alibi_mask import AlibiAttentionMask

try:  # FlexAttention: CUDA only here; absent on old torch builds.
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:
    BlockMask = create_block_mask = flex_attention = None

# FlexAttention's sparse block size (its default): the granularity at which whole key blocks are skipped.
FLEX_BLOCK_SIZE = 128


# Plain causal block masks by (q_len, k_len, offset, window): training calls repeat one shape, and building a
# block mask costs milliseconds.
_FLEX_BLOCK_MASKS: dict[tuple[int, int, int, int | None, str], Any] = {}


def _index_offset(mask: AlibiAttentionMask) -> torch.Tensor | None:
    """Without padding, positions are indices shifted by one constant: distance = q_idx + offset - kv_idx.

    Reading two positions per score costs ~15-40% of flex's speed (benchmarks/attention_bench.py), so the
    unpadded case, which is every training step, uses the offset. Returns a 0-d int64 tensor, or None.
    """
    if mask.key_padding is not None or mask.segments is not None:
        return None
    return mask.query_positions[0, 0] - mask.key_positions[0, 0]


def flex_block_mask(mask: AlibiAttentionMask, q_len: int, k_len: int, device: torch.device) -> Any:
    """Build the block mask once per forward; every layer reuses it. Fully masked blocks are never computed.

    torch.compile traces this too (cache hits and misses, without a graph break) as long as the offset is a
    Python int, which it is without padding and without a static cache.
    """
    if mask.block_mask is not None:
        return mask.block_mask
    offset = mask.offset
    if offset is None and mask.key_padding is None and mask.segments is None:  # a full static cache: read it once
        offset = int(_index_offset(mask))
    window, max_distance = mask.window, mask.max_distance
    cache_key = None
    if offset is not None:
        if max_distance is None:
            cache_key = (q_len, k_len, offset, window, str(device))
            if cache_key in _FLEX_BLOCK_MASKS:
                mask.block_mask = _FLEX_BLOCK_MASKS[cache_key]
                return mask.block_mask
    mask_mod = _flex_mask_mod(mask, offset)
    if offset is not None:
        mask.block_mask = _unpadded_block_mask(mask_mod, q_len, k_len, offset, window, max_distance, device)
    else:
        # Padding and packing are per row: create_block_mask evaluates mask_mod on every (b, [h,] q, k) element.
        # Compiling it builds that block by block, needed when the mask is per head (256 GiB dense at 65,536 tokens).
        heads = None if max_distance is None else max_distance.shape[0]
        batch = mask.query_positions.shape[0]
        build = _compiled_create_block_mask() if heads is not None else create_block_mask
        mask.block_mask = build(mask_mod, batch, heads, q_len, k_len, device=device, BLOCK_SIZE=FLEX_BLOCK_SIZE)
    if cache_key is not None:
        if len(_FLEX_BLOCK_MASKS) >= 16:
            _FLEX_BLOCK_MASKS.pop(next(iter(_FLEX_BLOCK_MASKS)))
        _FLEX_BLOCK_MASKS[cache_key] = mask.block_mask
    return mask.block_mask


@functools.cache
def _compiled_create_block_mask() -> Callable:
    """create_block_mask under torch.compile, which evaluates mask_mod block by block: what its `_compile=True`
    did before torch deprecated the flag for exactly this call."""
    return torch.compile(create_block_mask)


def _flex_mask_mod(mask: AlibiAttentionMask, offset: int | None) -> Callable:
    """The keys a query may see, as flex's `mask_mod`; it runs inside partial blocks only."""
    query_positions, key_positions, key_padding = mask.query_positions, mask.key_positions, mask.key_padding
    window, max_distance, segments = mask.window, mask.max_distance, mask.segments

    def mask_mod(b, h, q_idx, kv_idx):
        if offset is None:
            distance = query_positions[b, q_idx] - key_positions[b, kv_idx]
        else:
            distance = q_idx + offset - kv_idx
        allowed = distance >= 0
        if key_padding is not None:
            allowed = allowed & ~key_padding[b, kv_idx]
        if segments is not None:  # packed rows: a query sees its own document only
            allowed = allowed & (segments[b, q_idx] == segments[b, kv_idx])
        if window is not None:
            allowed = allowed & (distance < window)
        if max_distance is not None:  # ALiBi truncation: a window per head
            allowed = allowed & (distance <= max_distance[h])
        return allowed

    return mask_mod


def _unpadded_block_mask(
    mask_mod: Callable,
    q_len: int,
    k_len: int,
    offset: int,
    window: int | None,
    max_distance: torch.Tensor | None,
    device: torch.device,
) -> Any:
    """Block mask of an unpadded call from each block's range of distances, in (q/128) x (k/128) work.

    create_block_mask would evaluate `mask_mod` on all q x k pairs: for a 4,096-token prefill chunk against
    256K cached keys that is a 1 GiB bool mask with int64 temporaries 8x larger. Here distance = q + offset - k,
    so a block's nearest and farthest distances decide whether it is empty, full (no mask_mod needed) or partial.
    Blocks cut by the end of the sequence are never full, as in create_block_mask.
    """
    size = FLEX_BLOCK_SIZE
    q_start = torch.arange(0, q_len, size, device=device)  # (nq,)
    k_start = torch.arange(0, k_len, size, device=device)  # (nk,)
    q_last = (q_start + size).clamp(max=q_len) - 1
    k_last = (k_start + size).clamp(max=k_len) - 1
    nearest = (q_start[:, None] + offset - k_last[None, :])[None]  # (1, nq, nk)
    farthest = (q_last[:, None] + offset - k_start[None, :])[None]  # (1, nq, nk)
    # Largest allowed distance, per head when truncated: (1 or h, 1, 1).
    limit = torch.full((1, 1, 1), k_len + abs(offset) + q_len, device=device)
    if window is not None:
        limit = limit.clamp(max=window - 1)
    if max_distance is not None:
        limit = torch.minimum(limit, max_distance.floor().long()[:, None, None])  # distances are integers
    in_range = ((q_start + size <= q_len)[:, None] & (k_start + size <= k_len)[None, :])[None]  # (1, nq, nk)
    full = (nearest >= 0) & (farthest <= limit) & in_range  # (1 or h, nq, nk)
    partial = (farthest >= 0) & (nearest <= limit) & ~full

    def ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Indices of the selected key blocks first, in order, as flex expects: (1, h, nq) counts, (1, h, nq, nk).
        counts = blocks.sum(-1, dtype=torch.int32)
        indices = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return counts[None], indices[None]

    return BlockMask.from_kv_blocks(
        *ordered(partial), *ordered(full), BLOCK_SIZE=size, mask_mod=mask_mod, seq_lengths=(q_len, k_len)
    )


def _flex_alibi(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask: Any,
    scaling: float,
    slopes: torch.Tensor | None,
    offset: torch.Tensor | int | None,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
) -> torch.Tensor:
    """flex_attention with the ALiBi score_mod; compiled as a whole (see `_compiled_flex_alibi`)."""

    def index_bias(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx + offset - kv_idx).to(torch.float32)  # score is fp32 in the kernel

    def position_bias(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (query_positions[b, q_idx] - key_positions[b, kv_idx]).to(torch.float32)

    score_mod = None if slopes is None else index_bias if offset is not None else position_bias
    return flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scaling)


_compiled_flex_alibi = None


def flex_alibi_attention(query, key, value, mask: AlibiAttentionMask, scaling: float) -> torch.Tensor:
    """The compiled flex kernel with the ALiBi score_mod, in the (b, h, q, d) layout."""
    global _compiled_flex_alibi
    if _compiled_flex_alibi is None:
        # The closures are made inside the compiled function, so new positions and offsets reuse the graph
        # (benchmarks/flex_compile_probe.py). Default dynamism: the first shape gets a static kernel (training
        # repeats one shape; static runs ~1.5x faster than dynamic on an H200, benchmarks/attention_bench.py),
        # and the first new shape recompiles once with dynamic lengths that serve every later length.
        _compiled_flex_alibi = torch.compile(_flex_alibi)
    # AlibiModel builds it before the layers; a call from elsewhere builds it here.
    block_mask = mask.block_mask
    if block_mask is None:
        block_mask = flex_block_mask(mask, query.shape[2], key.shape[2], query.device)
    slopes = mask.slopes.to(query.device) if mask.slopes is not None else None
    # Inside a compiled model, a known offset goes in as a Python int: as a 0-d tensor computed in the graph,
    # inductor inlined it into the flex kernel with pointwise indexing that does not compile ("XBLOCK is not
    # defined", torch 2.11, H100). Called eagerly, a tensor lets every offset share one compiled kernel.
    offset = mask.offset if torch.compiler.is_compiling() and mask.offset is not None else _index_offset(mask)
    return _compiled_flex_alibi(
        query, key, value, block_mask, scaling, slopes, offset, mask.query_positions, mask.key_positions
    )

