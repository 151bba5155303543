"""ALiBi attention: slopes, the bias, the mask object, the eager reference and the fast backends.

Every backend takes transformers' attention-function signature, `(module, query, key, value, attention_mask,
scaling, dropout, **kwargs)` with (b, h, q, d) query and (b, h, k, d) key/value, and returns the (b, q, h, d)
output and the attention weights (eager only). `attention_mask` is an `AlibiAttentionMask`. They are registered
in this model's own `AttentionInterface` (`ALL_ATTENTION_FUNCTIONS`) under transformers' names, so
`attn_implementation="sdpa"` picks the ALiBi-aware SDPA path for this model only.

Hub payload: imports only torch, transformers, the standard library and the kernel files (inside `try`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import AttentionInterface

try:  # FlexAttention: CUDA only here; absent on old torch builds.
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:
    BlockMask = create_block_mask = flex_attention = None

try:  # flash-attn >= 2.4 takes per-head ALiBi slopes; optional `flash` extra.
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:
    flash_attn_func = flash_attn_varlen_func = None

try:  # Our Triton ALiBi kernels; triton is absent on CPU-only builds of torch and on macOS.
    from .alibi_triton import alibi_flash_attention, is_supported as _triton_supported
    from .alibi_triton_decode import alibi_decode_attention, decode_supported as _decode_supported
except ImportError:
    alibi_flash_attention = _triton_supported = alibi_decode_attention = _decode_supported = None


# Query rows per SDPA call on long inputs: the materialized (b, h, rows, k) fp32 bias stays near this many bytes.
SDPA_BIAS_BYTES = 256 * 2**20
# Below this many query rows (decode steps, short prompts) the flex path uses SDPA: a small bias is cheap and
# building a block mask per step is not.
FLEX_MIN_QUERY_LEN = 64
# Up to this many query rows (decode steps) the sdpa path runs the Triton decode kernel (alibi_triton_decode.py:
# the keys split over every SM) or, where it cannot, two matmuls. SDPA's kernels that take a bias split work
# over queries and heads only: 8 thread blocks for one decoded token with 8 heads, a fraction of the HBM
# bandwidth.
DECODE_MAX_QUERY_LEN = 16
# FlexAttention's sparse block size (its default): the granularity at which whole key blocks are skipped.
FLEX_BLOCK_SIZE = 128
# The flex backend runs inference forwards (prefill, scoring, long prompts) on the Triton ALiBi kernel: on an
# H100 (bf16, d 128) its forward reaches 0.79x of unbiased SDPA flash at 16K tokens against flex's 0.50x. Its
# forward+backward is no faster than flex's (0.62x vs 0.61x at 16K, slower at 1K-4K), so training keeps flex.
# Set False to always use flex (for comparisons).
TRITON_INFERENCE = True


# ----------------------------------------------------------------------------------------------------------
# ALiBi
# ----------------------------------------------------------------------------------------------------------


def alibi_slopes(num_heads: int, bias_max: float = 8.0) -> torch.Tensor:
    """Per-head slopes m_h of Press et al. (2022), section 3. Shape (h,), float32.

    For a power-of-two head count H the slopes are 2^(-bias_max * k / H), k = 1..H. Otherwise the first
    2^floor(log2 H) slopes come from that rule and the rest are every other slope of the next power of two,
    in the paper's (interleaved, not sorted) order.

    Args:
        num_heads: Number of attention heads.
        bias_max: The exponent range (8 in the paper).

    Returns:
        A float32 tensor of shape (num_heads,).
    """
    return torch.tensor(_slope_values(num_heads, bias_max), dtype=torch.float32)


def _slope_values(num_heads: int, bias_max: float) -> list[float]:
    """The slopes as Python floats (float64), rounded to float32 only when they become a tensor."""
    closest = 2 ** math.floor(math.log2(num_heads))
    exponents = [k * (bias_max / closest) for k in range(1, closest + 1)]
    odd = range(1, 2 * (num_heads - closest), 2)  # 1, 3, 5, ...: every other slope of the next power of two
    exponents += [k * (bias_max / (2 * closest)) for k in odd]
    return [2.0**-exponent for exponent in exponents]


# Slopes already on a device, by (heads, bias_max, device), so eager forwards and CUDA-graph replays reuse one
# tensor. A traced forward (torch.compile, torch.export) that finds none makes them as a constant of its graph:
# Python floats, no host copy and no float64 on the device (inductor fused that into the flex kernel, where
# float64 fails to compile).
_DEVICE_SLOPES: dict[tuple[int, float, str], torch.Tensor] = {}


def _device_slopes(num_heads: int, bias_max: float, device: torch.device) -> torch.Tensor:
    key = (num_heads, bias_max, str(device))
    slopes = _DEVICE_SLOPES.get(key)
    if slopes is None:
        slopes = torch.tensor(_slope_values(num_heads, bias_max), dtype=torch.float32, device=device)
        if not tracing(device):
            _DEVICE_SLOPES[key] = slopes
    return slopes


def alibi_bias(slopes: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """Additive bias -m_h * (i - j) from relative distances. Positions (b, q) and (b, k) -> (b, h, q, k) fp32.

    The distance is an exact integer before it is scaled, so every entry is exact in fp32 at any length;
    BLOOM's absolute slope * position cast to bf16 is off by up to +-1 at position 1,024.
    """
    distance = (query_positions[:, :, None] - key_positions[:, None, :]).float()  # (b, q, k)
    return -slopes[None, :, None, None] * distance[:, None]  # (b, h, q, k)


@dataclass
class AlibiAttentionMask:
    """Everything an attention backend needs for masking and ALiBi, built once per forward pass.

    Positions count real tokens (cumulative sum of the attention mask), so left padding changes nothing. A query
    at position i may see a key at position j when 0 <= i - j, i - j < `window` (if set), i - j <= the head's
    `max_distance` (if set), the key is not padding and, in a packed row, both belong to the same document.
    """

    query_positions: torch.Tensor  # (b, q) int64
    key_positions: torch.Tensor  # (b, k) int64
    key_padding: torch.Tensor | None  # (b, k) bool, True at padding; None when nothing is padded
    slopes: torch.Tensor | None  # (h,) fp32; None for the non-ALiBi position encodings
    query_padding: torch.Tensor | None = None  # (b, q) bool; flash-attn's varlen path compacts queries with it
    window: int | None = None  # config.attention_window
    max_distance: torch.Tensor | None = None  # (h,) fp32, T / m_h from config.alibi_truncation
    # Without padding, distance = query index + offset - key index. A Python int when known without reading the
    # device (no cache or a dynamic one), so block masks need no sync and compiled layers no graph break.
    offset: int | None = None
    # Packed rows (padding-free training): (b, q) document index of each token; queries and keys are the same
    # tokens (no cache). None when every row is one sequence.
    segments: torch.Tensor | None = None
    block_mask: Any = None  # flex_attention's BlockMask, built once per forward and shared by all layers

    @property
    def is_plain_causal(self) -> bool:
        """No bias, padding, packing, window or truncation: SDPA's built-in causal mask computes the same thing."""
        return (
            self.slopes is None
            and self.key_padding is None
            and self.segments is None
            and self.window is None
            and self.max_distance is None
        )

    def allowed(self, rows: slice | None = None) -> torch.Tensor:
        """Keys each query may see, as (b, 1, q, k) bool, or (b, h, q, k) when truncation is per head."""
        # Not a `slice(None)` default: torch 2.11's dynamo cannot wrap a slice constant it did not build.
        rows = slice(None) if rows is None else rows
        distance = self.query_positions[:, rows, None] - self.key_positions[:, None, :]  # (b, q, k)
        allowed = distance >= 0
        if self.window is not None:
            allowed = allowed & (distance < self.window)
        if self.key_padding is not None:
            allowed = allowed & ~self.key_padding[:, None, :]
        if self.segments is not None:
            allowed = allowed & (self.segments[:, rows, None] == self.segments[:, None, :])
        allowed = allowed[:, None]  # (b, 1, q, k)
        if self.max_distance is not None:
            allowed = allowed & (distance[:, None] <= self.max_distance[None, :, None, None])  # (b, h, q, k)
        return allowed

    def additive(self, rows: slice | None = None) -> torch.Tensor:
        """ALiBi bias plus mask for the query `rows`, in fp32: (b, h or 1, q, k).

        This is also the mask a backend registered from outside (transformers' own, or a user's) receives, cast
        to the query dtype: any function that adds a 4-D float mask to its scores computes ALiBi exactly.
        """
        rows = slice(None) if rows is None else rows
        allowed = self.allowed(rows)
        if self.slopes is None:
            bias = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
        else:
            bias = alibi_bias(self.slopes, self.query_positions[:, rows], self.key_positions)
        # A finite minimum, not -inf: a padded query row that sees no key must stay finite, else its NaN
        # output would leak through 0 * NaN into the next layer.
        return bias.masked_fill(~allowed, torch.finfo(torch.float32).min)


# ----------------------------------------------------------------------------------------------------------
# Attention backends, with transformers' attention-function signature. Each takes (b, h, q, d) query and
# (b, h, k, d) key/value and returns the (b, q, h, d) output and the attention weights (eager only).
# ----------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: AlibiAttentionMask,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: scores, bias and softmax in fp32.

    Memory: materializes (b, h, q, k) fp32 scores, bias and weights at once, so it is quadratic in the prompt
    length; it is never chosen by default (only explicitly, or for `output_attentions=True`).
    """
    out, weights = _eager(query, key, value, attention_mask, scaling, dropout, training=_training(module))
    return out.transpose(1, 2), weights  # (b, q, h, d)


def _eager(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float, training: bool):
    """Eager attention in the (b, h, q, d) layout the other backends fall back on."""
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling  # (b, h, q, k)
    # The bias is added after scaling, as in the paper and fairseq: it is not divided by sqrt(d).
    weights = torch.softmax(scores + mask.additive(), dim=-1).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=training)
    return torch.matmul(weights, value), weights  # (b, h, q, d), (b, h, q, k)


def _training(module: nn.Module | None) -> bool:
    return module is not None and module.training


def sdpa_attention_forward(
    module: nn.Module | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: AlibiAttentionMask,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """torch SDPA with the bias built in fp32 and cast to the query dtype last, in query chunks.

    Memory: each chunk of rows materializes a (b, h, rows, k) bias (and, on CPU, scores of that size) of about
    `SDPA_BIAS_BYTES`, so the peak grows linearly with the key length k instead of quadratically with the
    sequence length. With a windowed cache and chunked prefill, k stays below window + chunk: constant memory.
    """
    out = _sdpa(query, key, value, attention_mask, scaling, dropout, training=_training(module))
    return out.transpose(1, 2), None  # (b, q, h, d)


def _sdpa(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float, training: bool):
    """The sdpa backend in the (b, h, q, d) layout; flex hands short calls to it."""
    b, h, q_len, _ = query.shape
    k_len = key.shape[2]
    if q_len <= DECODE_MAX_QUERY_LEN and not mask.is_plain_causal:
        if _uses_triton_decode(mask, query, dropout):
            return alibi_decode_attention(
                query, key, value, mask.slopes, scaling, mask.query_positions, mask.key_positions,
                key_padding=mask.key_padding, window=mask.window, max_distance=mask.max_distance,
            )
        return _eager(query, key, value, mask, scaling, dropout, training)[0]
    # SDPA's causal mask is top-left aligned: right for a full square, or for one query that sees every key.
    sees_all_keys = mask.offset is not None and k_len == q_len + mask.offset and (q_len == 1 or mask.offset == 0)
    if mask.is_plain_causal and sees_all_keys:
        # Plain causal attention (position-encoding baselines): let SDPA pick its flash kernel.
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=q_len > 1, scale=scaling)
    rows_per_chunk = max(1, SDPA_BIAS_BYTES // (4 * b * h * k_len))
    outputs = []
    for start in range(0, q_len, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, q_len))
        bias = mask.additive(rows).to(query.dtype)  # (b, h, rows, k)
        outputs.append(
            F.scaled_dot_product_attention(query[:, :, rows], key, value, attn_mask=bias, dropout_p=dropout, scale=scaling)
        )
    return torch.cat(outputs, dim=2)  # (b, h, q, d)


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


def _flex_block_mask(mask: AlibiAttentionMask, q_len: int, k_len: int, device: torch.device) -> Any:
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
        # Padding and packing are per row: create_block_mask evaluates mask_mod on every (b, [h,] q, k) element. Compiling it
        # builds that block by block, needed when the mask is per head (256 GiB dense at 65,536 tokens).
        heads = None if max_distance is None else max_distance.shape[0]
        batch = mask.query_positions.shape[0]
        mask.block_mask = create_block_mask(
            mask_mod, batch, heads, q_len, k_len, device=device, BLOCK_SIZE=FLEX_BLOCK_SIZE, _compile=heads is not None
        )
    if cache_key is not None:
        if len(_FLEX_BLOCK_MASKS) >= 16:
            _FLEX_BLOCK_MASKS.pop(next(iter(_FLEX_BLOCK_MASKS)))
        _FLEX_BLOCK_MASKS[cache_key] = mask.block_mask
    return mask.block_mask


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


def _uses_flex(device: torch.device, q_len: int) -> bool:
    """Whether the flex backend runs its kernel for this call (else it hands over to SDPA)."""
    return device.type == "cuda" and q_len >= FLEX_MIN_QUERY_LEN


def _uses_triton(mask: AlibiAttentionMask, query: torch.Tensor, requires_grad: bool) -> bool:
    """Whether a call that `_uses_flex` runs the Triton kernel instead (see TRITON_INFERENCE).

    `query` is the (b, h, q, d) query or any tensor with its device, dtype and head dim; `requires_grad` says
    whether the attention inputs require gradients.
    """
    return (
        TRITON_INFERENCE
        and alibi_flash_attention is not None
        and not (requires_grad and torch.is_grad_enabled())
        and not torch.compiler.is_compiling()  # compiled models keep flex, whose kernel dynamo traces
        and mask.slopes is not None  # ALiBi only: the baselines have no bias
        and mask.key_padding is None  # the kernel takes one offset for the batch, not per-row positions
        and mask.offset is not None
        and mask.offset >= 0
        # Plain causal only: with a window or per-head windows (alibi_truncation) the kernel gave NaN rows inside
        # the model on an H100 (tests/test_attention_backends.py::test_gpu_triton_inference_matches_eager), though
        # its own window tests pass. Flex's block skipping serves those calls, and fast.
        and mask.window is None
        and mask.max_distance is None
        # fp32 stays on flex: Triton's tl.dot rounds fp32 tiles to TF32, flex follows torch (IEEE by default).
        and query.dtype in (torch.float16, torch.bfloat16)
        and _triton_supported(query)
    )


def _uses_triton_decode(mask: AlibiAttentionMask, query: torch.Tensor, dropout: float) -> bool:
    """Whether a decode step (q <= DECODE_MAX_QUERY_LEN) runs the Triton decode kernel (see TRITON_INFERENCE).

    Unlike the prompt kernel it also serves compiled models (`graph_generate`, `generate` with a static cache):
    it is a custom op, which a compiled graph calls as it is.
    """
    return (
        TRITON_INFERENCE
        and alibi_decode_attention is not None
        and dropout == 0.0
        and not (query.requires_grad and torch.is_grad_enabled())
        and mask.slopes is not None  # ALiBi only: the baselines have no bias
        and mask.segments is None  # it takes positions per key, not documents
        and _decode_supported(query)  # CUDA, bf16/fp16, head dim <= 128
    )


def flex_attention_forward(
    module: nn.Module | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: AlibiAttentionMask,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """FlexAttention with ALiBi as a `score_mod` in fp32: no (b, h, q, k) tensor is ever built.

    CPU tensors and short query blocks (decode steps) take the SDPA path, which computes the same function.
    Unpadded, plain-causal half-precision ALiBi calls without autograd take the Triton kernel (`_uses_triton`).
    """
    if dropout > 0.0:
        raise ValueError(
            "flex_attention has no attention dropout. Set config.attention_dropout=0.0 for training, or load with "
            'attn_implementation="sdpa" (or "eager").'
        )
    mask = attention_mask
    if not _uses_flex(query.device, query.shape[2]):
        out = _sdpa(query, key, value, mask, scaling, dropout, training=_training(module))
    elif _uses_triton(mask, query, any(t.requires_grad for t in (query, key, value))):
        out = alibi_flash_attention(
            query, key, value, mask.slopes, scaling, offset=mask.offset, window=mask.window,
            max_distance=mask.max_distance,
        )
    else:
        out = _flex(query, key, value, mask, scaling)
    return out.transpose(1, 2), None  # (b, q, h, d)


def _flex(query, key, value, mask: AlibiAttentionMask, scaling: float) -> torch.Tensor:
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
        block_mask = _flex_block_mask(mask, query.shape[2], key.shape[2], query.device)
    slopes = mask.slopes.to(query.device) if mask.slopes is not None else None
    # Inside a compiled model, a known offset goes in as a Python int: as a 0-d tensor computed in the graph,
    # inductor inlined it into the flex kernel with pointwise indexing that does not compile ("XBLOCK is not
    # defined", torch 2.11, H100). Called eagerly, a tensor lets every offset share one compiled kernel.
    offset = mask.offset if torch.compiler.is_compiling() and mask.offset is not None else _index_offset(mask)
    return _compiled_flex_alibi(
        query, key, value, block_mask, scaling, slopes, offset, mask.query_positions, mask.key_positions
    )


def flash_attention_forward(
    module: nn.Module | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: AlibiAttentionMask,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """flash-attn with `alibi_slopes` (fp32, bottom-right aligned, so KV-cache offsets are handled in-kernel).

    Padded batches are unpadded into a varlen batch: compacting each row's real tokens gives exactly the
    cumulative-mask positions used by the other backends (a static cache's empty slots are padding too). Packed
    rows run as one varlen sequence per document. `attention_window` W becomes flash-attn's
    `window_size=(W - 1, 0)`. Memory: no (q, k) tensor at all.
    """
    if flash_attn_func is None:
        raise ImportError('attn_implementation="flash_attention_2" needs flash-attn>=2.4: pip install "alibi-lm[flash]".')
    mask = attention_mask
    if mask.max_distance is not None:
        raise ValueError(
            "alibi_truncation needs a window per head, which flash-attn cannot express. Load with "
            'attn_implementation="flex_attention" (or "sdpa"), or set config.alibi_truncation=None.'
        )
    b, h, q_len, d = query.shape
    dropout = dropout if _training(module) else 0.0
    options = dict(softmax_scale=scaling, causal=True, alibi_slopes=mask.slopes)
    if mask.window is not None:  # only when set: unwindowed calls stay exactly as they were
        options["window_size"] = (mask.window - 1, 0)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (b, len, h, d), flash-attn's layout
    if mask.key_padding is None and mask.segments is None:
        return flash_attn_func(q, k, v, dropout, **options), None  # (b, q, h, d)
    if mask.segments is not None:  # packed: every token is real, each document is a sequence
        documents = mask.segments + torch.arange(b, device=q.device)[:, None] * q_len  # (b, q), unique per row
        lengths = torch.unique_consecutive(documents.flatten(), return_counts=True)[1]  # (n_docs,)
        cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        longest = int(lengths.max())
        out = flash_attn_varlen_func(
            q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu, cu, longest, longest, dropout, **options
        )  # (b * q, h, d)
        return out.view(b, q_len, h, d), None
    key_valid = ~mask.key_padding  # (b, k)
    # Not key_valid[:, -q_len:]: a static cache's keys end in empty slots, after the queries.
    query_valid = ~mask.query_padding if mask.query_padding is not None else key_valid.new_ones(b, q_len)  # (b, q)
    cu_q = F.pad(query_valid.sum(-1).cumsum(0, dtype=torch.int32), (1, 0))
    cu_k = F.pad(key_valid.sum(-1).cumsum(0, dtype=torch.int32), (1, 0))
    out_packed = flash_attn_varlen_func(
        q[query_valid], k[key_valid], v[key_valid],  # (total, h, d)
        cu_q, cu_k, int(query_valid.sum(-1).max()), int(key_valid.sum(-1).max()), dropout, **options,
    )
    out = q.new_zeros(b, q_len, h, d)
    out[query_valid] = out_packed
    return out, None  # (b, q, h, d)


# This model's attention registry: transformers' names, mapped to the ALiBi-aware backends for this model only
# (registering them globally would replace every other model's sdpa). Names not set here fall through to
# transformers' global registry (`AttentionInterface.register`): those functions get the 4-D float mask
# `AlibiAttentionMask.additive()`, which carries the bias, so any backend that adds its mask computes ALiBi.
ALL_ATTENTION_FUNCTIONS = AttentionInterface()
ALL_ATTENTION_FUNCTIONS["eager"] = eager_attention_forward  # the reference; the only one that returns weights
ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa_attention_forward
ALL_ATTENTION_FUNCTIONS["flex_attention"] = flex_attention_forward
ALL_ATTENTION_FUNCTIONS["flash_attention_2"] = flash_attention_forward
ALIBI_BACKENDS = frozenset({eager_attention_forward, sdpa_attention_forward, flex_attention_forward, flash_attention_forward})

# transformers' global backends that ignore or reject an additive float mask, so they would drop the bias.
NO_BIAS_BACKENDS = {
    "flash_attention_3": "flash-attn 3 takes no ALiBi slopes",
    "flash_attention_4": "flash-attn 4 takes no ALiBi slopes",
    "paged|eager": "paged attention builds its own mask",
}


def prepare_block_mask(
    mask: AlibiAttentionMask, implementation: str, hidden_states: torch.Tensor, num_heads: int, layers: nn.Module
) -> None:
    """Build flex's block mask before the layers, when they will run flex's kernel (SDPA and Triton calls need
    none). Built once here, not in the first layer, so the decoder layers compile without a graph break."""
    if implementation != "flex_attention" or not _uses_flex(hidden_states.device, hidden_states.shape[1]):
        return
    query_like = hidden_states.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (b, h, q, d)
    requires_grad = hidden_states.requires_grad or any(p.requires_grad for p in layers.parameters())
    if not _uses_triton(mask, query_like, requires_grad):
        _flex_block_mask(mask, hidden_states.shape[1], mask.key_positions.shape[1], hidden_states.device)


def default_attn_implementation() -> str:
    """The fastest correct backend for this machine: FlexAttention on CUDA, else SDPA."""
    if flex_attention is not None and torch.cuda.is_available():
        return "flex_attention"
    return "sdpa"




# ----------------------------------------------------------------------------------------------------------
# The mask object, from the 2-D attention mask, the cache and position_ids
# ----------------------------------------------------------------------------------------------------------


def tracing(device: torch.device) -> bool:
    """Inside torch.compile, torch.export or a CUDA-graph capture, where a forward must not read device values."""
    return torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def build_attention_mask(
    config: Any,
    attention_mask: torch.Tensor | None,
    cache: Any,
    hidden_states: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> AlibiAttentionMask:
    """Real positions of this step's queries and of the keys the cache will return.

    A cache may return fewer keys than the sequence has (a sliding-window cache keeps the last ones) or more (a
    static cache returns all its slots): `get_mask_sizes` says which columns of the mask they are, and columns past
    the mask's end are empty slots, hence padding. Positions are counted on the whole mask first, so kept keys keep
    their true positions however many were dropped. Without a mask and a cache, `position_ids` that restart mark
    packed documents (transformers' `DataCollatorWithFlattening`), as in transformers' own masks.
    """
    batch, q_len = hidden_states.shape[:2]
    device = hidden_states.device
    past_length = cache.get_seq_length() if cache is not None else 0  # an int, or a 0-d tensor (static)
    kv_length, kv_offset = cache.get_mask_sizes(q_len, 0) if cache is not None else (q_len, 0)
    static = cache is not None and cache.is_compileable
    options = _alibi_options(config, device)
    if attention_mask is None and static and config.attention_window is None and kv_offset == 0 and not tracing(device):
        # An unpadded prompt into a full-size static cache (prefill, eager steps): read the length once, then
        # attend to the filled slots only (the layers slice the cache), like a dynamic cache.
        past_length, kv_length, static = int(past_length), int(past_length) + q_len, False
    if attention_mask is None and not static:
        segments = _documents(position_ids.to(device), batch) if position_ids is not None and past_length == 0 else None
        if segments is not None:
            positions = position_ids.to(device).expand(batch, q_len)  # (b, q): restarts per document
            return AlibiAttentionMask(positions, positions, key_padding=None, segments=segments, **options)
        # Every token is real: positions are indices, and nothing is read back from the device (no sync, no
        # graph break when compiled). This is the training case.
        return AlibiAttentionMask(
            query_positions=(torch.arange(q_len, device=device) + past_length).expand(batch, q_len),
            key_positions=(torch.arange(kv_length, device=device) + kv_offset).expand(batch, kv_length),
            key_padding=None,
            offset=past_length - kv_offset,
            **options,
        )
    if attention_mask is None:
        # A static cache traced without a mask (compiled steps, torch.export): its filled slots are the real keys.
        attention_mask = torch.arange(kv_offset + kv_length, device=device) < past_length + q_len  # (m,)
        attention_mask = attention_mask.expand(batch, -1)  # (b, m)
    elif not torch.compiler.is_compiling():
        # A static cache's length is a device tensor: reading it would sync (and break CUDA-graph capture).
        _check_attention_mask(attention_mask, batch, q_len if static else past_length + q_len, static)
    return _padded_mask(attention_mask.to(device=device, dtype=torch.long), past_length, q_len, kv_length, kv_offset,
                        static, options)


def _padded_mask(mask, past_length, q_len: int, kv_length: int, kv_offset: int, static: bool, options: dict):
    """Positions from the cumulative 2-D mask (b, m); left padding and empty cache slots become key padding."""
    device = mask.device
    if mask.shape[1] < kv_offset + kv_length:
        mask = F.pad(mask, (0, kv_offset + kv_length - mask.shape[1]))  # (b, m): empty slots count as padding
    positions = mask.cumsum(-1) - 1  # (b, m)
    query_index = torch.arange(q_len, device=device) + past_length  # (q,)
    key_padding = mask[:, kv_offset : kv_offset + kv_length] == 0  # (b, k)
    query_padding = mask[:, query_index] == 0  # (b, q)
    offset = None
    # An all-ones mask takes the unpadded fast paths. Deciding that reads the device once, so traced forwards
    # (compile, export, CUDA graphs) and static caches (empty slots until full) keep the padded path.
    if not static and not tracing(device) and not key_padding.any():
        key_padding = query_padding = None
        offset = past_length - kv_offset
    return AlibiAttentionMask(
        query_positions=positions[:, query_index],
        key_positions=positions[:, kv_offset : kv_offset + kv_length],
        key_padding=key_padding,
        query_padding=query_padding,
        offset=offset,
        **options,
    )


def _alibi_options(config: Any, device: torch.device) -> dict:
    slopes = max_distance = None
    if config.position_encoding == "alibi":
        slopes = _device_slopes(config.num_attention_heads, config.alibi_bias_max, device)
        if config.alibi_truncation is not None:
            max_distance = config.alibi_truncation / slopes  # (h,): the penalty passes T beyond it
    return dict(slopes=slopes, window=config.attention_window, max_distance=max_distance)


def _documents(position_ids: torch.Tensor, batch: int) -> torch.Tensor | None:
    """(b, q) document index per token of packed rows, where positions restart; None when no row is packed."""
    position_ids = position_ids.expand(batch, -1)  # (b, q)
    starts = position_ids[:, 1:] != position_ids[:, :-1] + 1  # (b, q - 1)
    # One read, as transformers' find_packed_sequence_indices does: unpacked rows keep the fast unpadded paths.
    if not tracing(position_ids.device) and not starts.any():
        return None
    return F.pad(starts, (1, 0)).cumsum(-1)  # (b, q)


def _check_attention_mask(attention_mask: torch.Tensor, batch: int, seen: int, static: bool) -> None:
    """Raise unless the mask is (batch, cached + new tokens); a static cache also takes it padded to its slots."""
    width = attention_mask.shape[-1]
    if attention_mask.dim() == 2 and attention_mask.shape[0] == batch and (width == seen or (static and width > seen)):
        return
    raise ValueError(
        f"attention_mask must be a 2-D 0/1 tensor of shape (batch, cached + new tokens) = {(batch, seen)}, "
        f"got {tuple(attention_mask.shape)}. Pass the mask of the whole sequence so far, as generate() does."
    )
