"""ALiBi causal language model (Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022) for Transformers.

Hub payload: four files, configuration_alibi.py, this file, alibi_triton.py and alibi_triton_decode.py (the two
kernel files import only torch, triton, the standard library and each other). This file imports only torch,
transformers, the standard library and the other three, so `save_pretrained` ships all four as remote code
unchanged. Optional kernels are imported inside `try` blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from .configuration_alibi import ATTENTION_IMPLEMENTATIONS, AlibiConfig

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

logger = logging.get_logger(__name__)

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
    closest = 2 ** math.floor(math.log2(num_heads))
    exponents = torch.arange(1, closest + 1, dtype=torch.float64) * (bias_max / closest)
    if closest < num_heads:
        odd = torch.arange(1, 2 * (num_heads - closest), 2, dtype=torch.float64)  # 1, 3, 5, ...
        exponents = torch.cat([exponents, odd * (bias_max / (2 * closest))])
    return torch.pow(2.0, -exponents).float()


# Slopes already on a device, by (heads, bias_max, device). Every forward needs them; making them there each time
# would either copy from the host (which a CUDA graph cannot hold) or compute in float64 on the device (which
# inductor fuses into the flex kernel, where float64 fails to compile).
_DEVICE_SLOPES: dict[tuple[int, float, str], torch.Tensor] = {}


def _device_slopes(num_heads: int, bias_max: float, device: torch.device) -> torch.Tensor:
    key = (num_heads, bias_max, str(device))
    slopes = _DEVICE_SLOPES.get(key)
    if slopes is None:  # once per device; under torch.compile, a graph break on this first call only
        slopes = _DEVICE_SLOPES[key] = _new_device_slopes(num_heads, bias_max, device)
    return slopes


@torch.compiler.disable
def _new_device_slopes(num_heads: int, bias_max: float, device: torch.device) -> torch.Tensor:
    return alibi_slopes(num_heads, bias_max).to(device)


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
    `max_distance` (if set) and the key is not padding.
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
    block_mask: Any = None  # flex_attention's BlockMask, built once per forward and shared by all layers

    @property
    def is_plain_causal(self) -> bool:
        """No bias, padding, window or truncation: SDPA's built-in causal mask computes the same thing."""
        return self.slopes is None and self.key_padding is None and self.window is None and self.max_distance is None

    def allowed(self, rows: slice = slice(None)) -> torch.Tensor:
        """Keys each query may see, as (b, 1, q, k) bool, or (b, h, q, k) when truncation is per head."""
        distance = self.query_positions[:, rows, None] - self.key_positions[:, None, :]  # (b, q, k)
        allowed = distance >= 0
        if self.window is not None:
            allowed = allowed & (distance < self.window)
        if self.key_padding is not None:
            allowed = allowed & ~self.key_padding[:, None, :]
        allowed = allowed[:, None]  # (b, 1, q, k)
        if self.max_distance is not None:
            allowed = allowed & (distance[:, None] <= self.max_distance[None, :, None, None])  # (b, h, q, k)
        return allowed

    def additive(self, rows: slice = slice(None)) -> torch.Tensor:
        """ALiBi bias plus mask for the query `rows`, in fp32: (b, h or 1, q, k)."""
        allowed = self.allowed(rows)
        if self.slopes is None:
            bias = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
        else:
            bias = alibi_bias(self.slopes, self.query_positions[:, rows], self.key_positions)
        # A finite minimum, not -inf: a padded query row that sees no key must stay finite, else its NaN
        # output would leak through 0 * NaN into the next layer.
        return bias.masked_fill(~allowed, torch.finfo(torch.float32).min)


# ----------------------------------------------------------------------------------------------------------
# Attention backends. Each takes (b, h, q, d) query and (b, h, k, d) key/value, returns (b, h, q, d) output
# and the attention weights (eager only).
# ----------------------------------------------------------------------------------------------------------

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AlibiAttentionMask,
    scaling: float,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: scores, bias and softmax in fp32.

    Memory: materializes (b, h, q, k) fp32 scores, bias and weights at once, so it is quadratic in the prompt
    length; it is never chosen by default (only explicitly, or for `output_attentions=True`).
    """
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling  # (b, h, q, k)
    # The bias is added after scaling, as in the paper and fairseq: it is not divided by sqrt(d).
    weights = torch.softmax(scores + mask.additive(), dim=-1).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value), weights


def sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AlibiAttentionMask,
    scaling: float,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, None]:
    """torch SDPA with the bias built in fp32 and cast to the query dtype last, in query chunks.

    Memory: each chunk of rows materializes a (b, h, rows, k) bias (and, on CPU, scores of that size) of about
    `SDPA_BIAS_BYTES`, so the peak grows linearly with the key length k instead of quadratically with the
    sequence length. With a windowed cache and chunked prefill, k stays below window + chunk: constant memory.
    """
    b, h, q_len, _ = query.shape
    k_len = key.shape[2]
    if q_len <= DECODE_MAX_QUERY_LEN and not mask.is_plain_causal:
        if _uses_triton_decode(mask, query, dropout):
            out = alibi_decode_attention(
                query, key, value, mask.slopes, scaling, mask.query_positions, mask.key_positions,
                key_padding=mask.key_padding, window=mask.window, max_distance=mask.max_distance,
            )
            return out, None
        return eager_attention(module, query, key, value, mask, scaling, dropout)[0], None
    # SDPA's causal mask is top-left aligned: right for a full square, or for one query that sees every key.
    sees_all_keys = mask.offset is not None and k_len == q_len + mask.offset and (q_len == 1 or mask.offset == 0)
    if mask.is_plain_causal and sees_all_keys:
        # Plain causal attention (position-encoding baselines): let SDPA pick its flash kernel.
        return F.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, is_causal=q_len > 1, scale=scaling
        ), None
    rows_per_chunk = max(1, SDPA_BIAS_BYTES // (4 * b * h * k_len))
    outputs = []
    for start in range(0, q_len, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, q_len))
        bias = mask.additive(rows).to(query.dtype)  # (b, h, rows, k)
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, rows], key, value, attn_mask=bias, dropout_p=dropout, scale=scaling
            )
        )
    return torch.cat(outputs, dim=2), None


# Plain causal block masks by (q_len, k_len, offset, window): training calls repeat one shape, and building a
# block mask costs milliseconds.
_FLEX_BLOCK_MASKS: dict[tuple[int, int, int, int | None, str], Any] = {}


def _index_offset(mask: AlibiAttentionMask) -> torch.Tensor | None:
    """Without padding, positions are indices shifted by one constant: distance = q_idx + offset - kv_idx.

    Reading two positions per score costs ~15-40% of flex's speed (benchmarks/attention_bench.py), so the
    unpadded case, which is every training step, uses the offset. Returns a 0-d int64 tensor, or None.
    """
    if mask.key_padding is not None:
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
    if offset is None and mask.key_padding is None:  # a full static cache: read the offset back once
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
        # Padding is per row: create_block_mask evaluates mask_mod on every (b, [h,] q, k) element. Compiling it
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
    window, max_distance = mask.window, mask.max_distance

    def mask_mod(b, h, q_idx, kv_idx):
        if offset is None:
            distance = query_positions[b, q_idx] - key_positions[b, kv_idx]
        else:
            distance = q_idx + offset - kv_idx
        allowed = distance >= 0
        if key_padding is not None:
            allowed = allowed & ~key_padding[b, kv_idx]
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
        and _decode_supported(query)  # CUDA, bf16/fp16, head dim <= 128
    )


def flex_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AlibiAttentionMask,
    scaling: float,
    dropout: float = 0.0,
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
    if not _uses_flex(query.device, query.shape[2]):
        return sdpa_attention(module, query, key, value, mask, scaling, dropout)
    if _uses_triton(mask, query, any(t.requires_grad for t in (query, key, value))):
        out = alibi_flash_attention(
            query, key, value, mask.slopes, scaling, offset=mask.offset, window=mask.window,
            max_distance=mask.max_distance,
        )
        return out, None
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
    out = _compiled_flex_alibi(
        query, key, value, block_mask, scaling, slopes, offset, mask.query_positions, mask.key_positions
    )
    return out, None


def flash_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AlibiAttentionMask,
    scaling: float,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, None]:
    """flash-attn with `alibi_slopes` (fp32, bottom-right aligned, so KV-cache offsets are handled in-kernel).

    Padded batches are unpadded into a varlen batch: compacting each row's real tokens gives exactly the
    cumulative-mask positions used by the other backends (a static cache's empty slots are padding too).
    `attention_window` W becomes flash-attn's `window_size=(W - 1, 0)`. Memory: no (q, k) tensor at all.
    """
    if flash_attn_func is None:
        raise ImportError('attn_implementation="flash_attention_2" needs flash-attn>=2.4: pip install "alibi-lm[flash]".')
    if mask.max_distance is not None:
        raise ValueError(
            "alibi_truncation needs a window per head, which flash-attn cannot express. Load with "
            'attn_implementation="flex_attention" (or "sdpa"), or set config.alibi_truncation=None.'
        )
    b, h, q_len, d = query.shape
    dropout = dropout if module.training else 0.0
    slopes = mask.slopes.to(query.device) if mask.slopes is not None else None
    # Only when set: unwindowed calls stay exactly as they were.
    window = {} if mask.window is None else {"window_size": (mask.window - 1, 0)}
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (b, len, h, d), flash-attn's layout
    if mask.key_padding is None:
        out = flash_attn_func(q, k, v, dropout, softmax_scale=scaling, causal=True, alibi_slopes=slopes, **window)
        return out.transpose(1, 2), None  # (b, h, q, d)
    key_valid = ~mask.key_padding  # (b, k)
    # Not key_valid[:, -q_len:]: a static cache's keys end in empty slots, after the queries.
    query_valid = ~mask.query_padding if mask.query_padding is not None else key_valid.new_ones(b, q_len)  # (b, q)
    cu_q = F.pad(query_valid.sum(-1).cumsum(0, dtype=torch.int32), (1, 0))
    cu_k = F.pad(key_valid.sum(-1).cumsum(0, dtype=torch.int32), (1, 0))
    out_packed = flash_attn_varlen_func(
        q[query_valid], k[key_valid], v[key_valid],  # (total, h, d)
        cu_q, cu_k, int(query_valid.sum(-1).max()), int(key_valid.sum(-1).max()),
        dropout, softmax_scale=scaling, causal=True, alibi_slopes=slopes, **window,
    )
    out = q.new_zeros(b, q_len, h, d)
    out[query_valid] = out_packed
    return out.transpose(1, 2), None  # (b, h, q, d)


ATTENTION_FUNCTIONS: dict[str, AttentionFn] = {
    "eager": eager_attention,  # the reference; the only one that returns weights
    "sdpa": sdpa_attention,
    "flex_attention": flex_attention_forward,
    "flash_attention_2": flash_attention_forward,
}


def default_attn_implementation() -> str:
    """The fastest correct backend for this machine: FlexAttention on CUDA, else SDPA."""
    if flex_attention is not None and torch.cuda.is_available():
        return "flex_attention"
    return "sdpa"


# ----------------------------------------------------------------------------------------------------------
# Position-encoding baselines (for the paper's comparisons; ALiBi needs none of these)
# ----------------------------------------------------------------------------------------------------------


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """fairseq/tensor2tensor sinusoids, [sin | cos] halves. Positions (b, q) -> (b, q, dim) fp32."""
    half = dim // 2
    frequencies = torch.exp(
        torch.arange(half, dtype=torch.float32, device=positions.device) * -(math.log(10000.0) / max(half - 1, 1))
    )
    angles = positions.float()[..., None] * frequencies  # (b, q, half)
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return F.pad(embedding, (0, dim - 2 * half))  # odd dim: one zero column, as fairseq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables (Su et al., 2021) for positions (b, q) -> cos, sin of shape (b, 1, q, d) in fp32."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (b, q, d/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (b, 1, q, d)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Adaptive input and adaptive softmax (Baevski & Auli, 2019), laid out as fairseq's transformer_lm_wiki103
# ----------------------------------------------------------------------------------------------------------


def _band_edges(cutoffs: list[int], vocab_size: int) -> list[tuple[int, int]]:
    edges = [0, *cutoffs, vocab_size]
    return list(zip(edges[:-1], edges[1:]))


class AlibiAdaptiveInput(nn.Module):
    """Frequency bands of shrinking width, each projected to the model width. Band b has width dim // factor**b."""

    def __init__(self, config: AlibiConfig):
        super().__init__()
        self.bands = _band_edges(config.adaptive_input_cutoffs, config.vocab_size)
        widths = [int(config.input_dim // config.adaptive_input_factor**b) for b in range(len(self.bands))]
        self.embeddings = nn.ModuleList(
            nn.Embedding(hi - lo, width, padding_idx=config.pad_token_id if b == 0 else None)
            for b, ((lo, hi), width) in enumerate(zip(self.bands, widths))
        )
        self.projections = nn.ModuleList(nn.Linear(width, config.hidden_size, bias=False) for width in widths)
        self.embedding_dim = config.hidden_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.projections[0].weight.new_zeros(*input_ids.shape, self.embedding_dim)  # (b, q, d)
        for (lo, hi), embedding, projection in zip(self.bands, self.embeddings, self.projections):
            in_band = (input_ids >= lo) & (input_ids < hi)
            out[in_band] = projection(embedding(input_ids[in_band] - lo))
        return out


class AlibiAdaptiveSoftmax(nn.Module):
    """Head softmax over the first band plus one cluster logit per tail band; tails are scored on demand.

    With `tie_adaptive_weights` the head and tail tables are the adaptive input's embeddings (the band-0 input
    projection is not used on the output side); with `tie_adaptive_proj` the tail projections are the input
    projections, transposed. Tied tensors are read from the input module at call time, so nothing is stored
    twice.
    """

    def __init__(self, config: AlibiConfig):
        super().__init__()
        self.bands = _band_edges(config.adaptive_softmax_cutoffs, config.vocab_size)
        self.tie_weights, self.tie_proj = config.tie_adaptive_weights, config.tie_adaptive_proj
        dim, tails = config.output_dim, self.bands[1:]
        widths = [int(dim // config.adaptive_softmax_factor ** (t + 1)) for t in range(len(tails))]
        self.cluster = nn.Linear(dim, len(tails), bias=False)
        if not self.tie_weights:
            self.head = nn.Linear(dim, self.bands[0][1], bias=False)
            self.tails = nn.ModuleList(nn.Linear(w, hi - lo, bias=False) for (lo, hi), w in zip(tails, widths))
        if not self.tie_proj:
            self.tail_projections = nn.ModuleList(nn.Linear(dim, w, bias=False) for w in widths)
        self.dropout = nn.Dropout(config.adaptive_softmax_dropout)

    def _head_log_probs(self, hidden: torch.Tensor, embeddings: AlibiAdaptiveInput | None) -> torch.Tensor:
        word_weight = embeddings.embeddings[0].weight if self.tie_weights else self.head.weight
        logits = torch.cat([F.linear(hidden, word_weight), self.cluster(hidden)], dim=-1)  # (n, c1 + tails)
        return torch.log_softmax(logits.float(), dim=-1)

    def _tail_log_probs(self, hidden: torch.Tensor, tail: int, embeddings: AlibiAdaptiveInput | None) -> torch.Tensor:
        if self.tie_proj:
            projected = F.linear(hidden, embeddings.projections[tail + 1].weight.t())  # (n, d_t)
        else:
            projected = self.tail_projections[tail](hidden)
        table = embeddings.embeddings[tail + 1].weight if self.tie_weights else self.tails[tail].weight
        return torch.log_softmax(F.linear(self.dropout(projected), table).float(), dim=-1)  # (n, band size)

    def log_probs(self, hidden: torch.Tensor, embeddings: AlibiAdaptiveInput | None = None) -> torch.Tensor:
        """Full-vocabulary log-probabilities (..., V) in fp32. Use only on the positions you need."""
        head = self._head_log_probs(hidden, embeddings)
        c1 = self.bands[0][1]
        parts = [head[..., :c1]]
        for tail in range(len(self.bands) - 1):
            parts.append(self._tail_log_probs(hidden, tail, embeddings) + head[..., c1 + tail, None])
        return torch.cat(parts, dim=-1)

    def target_log_probs(
        self, hidden: torch.Tensor, targets: torch.Tensor, embeddings: AlibiAdaptiveInput | None = None
    ) -> torch.Tensor:
        """log p(target) for hidden (n, d) and targets (n,), computing only the tails that targets fall in."""
        head = self._head_log_probs(hidden, embeddings)  # (n, c1 + tails)
        c1 = self.bands[0][1]
        out = head.gather(-1, targets.clamp(0, c1 - 1)[:, None]).squeeze(-1)  # (n,)
        for tail, (lo, hi) in enumerate(self.bands[1:]):
            in_band = ((targets >= lo) & (targets < hi)).nonzero().squeeze(-1)
            # A tail can be ten times wider than the head (207,744 of 267,744 words for WikiText-103).
            step = max(1, LOG_PROB_BYTES // (4 * (hi - lo)))
            for rows in in_band.split(step):
                tail_lp = self._tail_log_probs(hidden[rows], tail, embeddings)  # (rows, band size)
                word_lp = tail_lp.gather(-1, (targets[rows] - lo)[:, None]).squeeze(-1)
                out = out.index_put((rows,), word_lp + head[rows, c1 + tail])
        return out


# ----------------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------------


class AlibiAttention(nn.Module):
    """Multi-head self-attention; ALiBi and masking come in through `AlibiAttentionMask`."""

    def __init__(self, config: AlibiConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        mask: AlibiAttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, q_len, _ = hidden_states.shape
        heads = (b, q_len, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(heads).transpose(1, 2)  # (b, h, q, d)
        key = self.k_proj(hidden_states).view(heads).transpose(1, 2)  # (b, h, q, d)
        value = self.v_proj(hidden_states).view(heads).transpose(1, 2)  # (b, h, q, d)
        if rotary is not None:
            query, key = apply_rotary(query, *rotary), apply_rotary(key, *rotary)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)  # (b, h, k, d)
            seen = mask.key_positions.shape[1]
            if key.shape[2] > seen:  # a static cache's empty slots, after the keys of an unpadded prompt
                key, value = key[:, :, :seen], value[:, :, :seen]  # (b, h, seen, d) views

        implementation = self.config._attn_implementation
        if output_attentions and implementation != "eager":
            logger.warning_once(f"output_attentions=True is served by eager attention instead of {implementation}.")
            implementation = "eager"
        attend = ATTENTION_FUNCTIONS[implementation]
        dropout = self.config.attention_dropout if self.training else 0.0
        out, weights = attend(self, query, key, value, mask, scaling=self.scaling, dropout=dropout)
        out = out.transpose(1, 2).reshape(b, q_len, -1)  # (b, q, h * d)
        return self.o_proj(out), weights


class AlibiMLP(nn.Module):
    def __init__(self, config: AlibiConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.use_bias)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)
        self.activation = _ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.activation_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


class AlibiDecoderLayer(GradientCheckpointingLayer):
    """A transformer block, pre-norm or post-norm (fairseq `decoder_normalize_before`)."""

    def __init__(self, config: AlibiConfig, layer_idx: int):
        super().__init__()
        self.normalize_before = config.normalize_before
        self.self_attn = AlibiAttention(config, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = AlibiMLP(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        mask: AlibiAttentionMask | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, weights = self.self_attn(hidden_states, mask, rotary, past_key_values, output_attentions)
        hidden_states = residual + self.dropout(hidden_states)
        if not self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = residual + self.dropout(self.mlp(hidden_states))
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states, weights


class AlibiPreTrainedModel(PreTrainedModel):
    config_class = AlibiConfig
    config: AlibiConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AlibiDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True  # the transformers 4.x name
    _supports_cache_class = True

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, **kwargs: Any
    ) -> str:
        # Our own check first: transformers would otherwise look for a hub kernel, which has no ALiBi.
        if attn_implementation == "flash_attention_2" and flash_attn_func is None:
            raise ImportError('attn_implementation="flash_attention_2" needs flash-attn>=2.4: pip install "alibi-lm[flash]".')
        return super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check, **kwargs)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """Resolve `attn_implementation`; None picks the fastest correct backend for this machine."""
        if requested_attention is None:
            return default_attn_implementation()
        if requested_attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"Unknown attn_implementation={requested_attention!r}. Choose one of {ATTENTION_IMPLEMENTATIONS}; "
                "'eager' is the reference and runs everywhere."
            )
        if requested_attention == "flex_attention" and (flex_attention is None or not torch.cuda.is_available()):
            raise ValueError('attn_implementation="flex_attention" needs CUDA; use "sdpa" on this machine.')
        return requested_attention  # flash-attn's presence is checked first, in _check_and_adjust_attn_implementation


def _capturing(device: torch.device) -> bool:
    """Inside torch.compile or a CUDA-graph capture, where a forward must not read device values."""
    return torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _check_attention_mask(attention_mask: torch.Tensor, batch: int, seen: int, static: bool) -> None:
    """Raise unless the mask is (batch, cached + new tokens); a static cache also takes it padded to its slots."""
    width = attention_mask.shape[-1]
    if attention_mask.dim() == 2 and attention_mask.shape[0] == batch and (width == seen or (static and width > seen)):
        return
    raise ValueError(
        f"attention_mask must be a 2-D 0/1 tensor of shape (batch, cached + new tokens) = {(batch, seen)}, "
        f"got {tuple(attention_mask.shape)}. Pass the mask of the whole sequence so far, as generate() does."
    )


class AlibiModel(AlibiPreTrainedModel):
    """The decoder stack: embeddings, blocks and the optional final LayerNorm. No position embeddings with ALiBi."""

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        if config.adaptive_input:
            self.embed_tokens = AlibiAdaptiveInput(config)
        else:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.input_dim, padding_idx=config.pad_token_id)
        input_width = config.hidden_size if config.adaptive_input else config.input_dim
        self.project_in = None
        if input_width != config.hidden_size:
            self.project_in = nn.Linear(input_width, config.hidden_size, bias=False)
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embedding else 1.0
        self.embed_positions = None
        if config.position_encoding == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(AlibiDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.final_layer_norm else None
        self.project_out = None
        if config.output_dim != config.hidden_size and not config.tie_adaptive_weights:
            self.project_out = nn.Linear(config.hidden_size, config.output_dim, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        """Run the decoder.

        Args:
            input_ids: Token ids (b, q). Pass exactly one of `input_ids` and `inputs_embeds`.
            attention_mask: 0/1 mask (b, past + q) over every token seen so far, cached ones included, even those
                a sliding-window cache has dropped. ALiBi distances count only positions where it is 1, so left
                padding changes nothing. With a `StaticCache` it may be padded with zeros to the cache length.
            past_key_values: A `Cache`. When `use_cache` and none is given, `DynamicCache(config=config)` is made:
                with `config.attention_window` W its layers keep only the last W - 1 keys.
            inputs_embeds: Unscaled token embeddings (b, q, input dim), as `embed_tokens` returns them.
            kwargs: `cache_position` is accepted for compatibility and not needed: positions come from the
                cache length and the attention mask.

        Memory: activations are linear in q, and attention (sdpa, flex, flash) linear in the key count; eager
        is quadratic. For prompts of any length in bounded memory, feed them in chunks with the cache
        ([`AlibiForCausalLM.prefill`] or `generate(..., prefill_chunk_size=n)`), with `attention_window` set
        for a cache of constant size too.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        # Training needs no cache: filling one copies every layer's keys and values.
        use_cache = (config.use_cache and not self.training) if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation would append to the cache a second time
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=config)
        if not use_cache:
            past_key_values = None

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        hidden_states = inputs_embeds * self.embed_scale  # fairseq scales before any input projection
        if self.project_in is not None:
            hidden_states = self.project_in(hidden_states)
        mask = self._attention_mask(attention_mask, past_key_values, hidden_states)
        if self._runs_flex_kernel(mask, hidden_states):
            # Here, not in the first layer, so the decoder layers compile without a graph break.
            _flex_block_mask(mask, hidden_states.shape[1], mask.key_positions.shape[1], hidden_states.device)
        hidden_states, rotary = self._add_positions(hidden_states, mask.query_positions)
        hidden_states = self.dropout(hidden_states)

        all_hidden_states, all_attentions = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states, weights = layer(
                hidden_states,
                mask=mask,
                rotary=rotary,
                past_key_values=past_key_values,
                output_attentions=output_attentions,
            )
            if output_attentions:
                all_attentions.append(weights)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)
        if self.project_out is not None:
            hidden_states = self.project_out(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def _runs_flex_kernel(self, mask: AlibiAttentionMask, hidden_states: torch.Tensor) -> bool:
        """Whether the layers will run flex's kernel, which needs a block mask (SDPA and Triton calls do not)."""
        if self.config._attn_implementation != "flex_attention":
            return False
        if not _uses_flex(hidden_states.device, hidden_states.shape[1]):
            return False
        query_like = hidden_states.unflatten(-1, (self.config.num_attention_heads, -1)).transpose(1, 2)  # (b, h, q, d)
        requires_grad = hidden_states.requires_grad or any(p.requires_grad for p in self.layers.parameters())
        return not _uses_triton(mask, query_like, requires_grad)

    def _attention_mask(
        self, attention_mask: torch.Tensor | None, cache: Cache | None, hidden_states: torch.Tensor
    ) -> AlibiAttentionMask:
        """Real positions of this step's queries and of the keys the cache will return, from the 2-D mask.

        A cache may return fewer keys than the sequence has (a sliding-window cache keeps the last ones) or more
        (a static cache returns all its slots): `get_mask_sizes` says which columns of the mask they are, and
        columns past the mask's end are empty slots, hence padding. Positions are counted on the whole mask
        first, so kept keys keep their true positions however many were dropped.
        """
        batch, q_len = hidden_states.shape[:2]
        device = hidden_states.device
        past_length = cache.get_seq_length() if cache is not None else 0  # an int, or a 0-d tensor (static)
        kv_length, kv_offset = cache.get_mask_sizes(q_len, 0) if cache is not None else (q_len, 0)
        static = cache is not None and cache.is_compileable
        slopes = max_distance = None
        if self.config.position_encoding == "alibi":
            slopes = _device_slopes(self.config.num_attention_heads, self.config.alibi_bias_max, device)
            if self.config.alibi_truncation is not None:
                max_distance = self.config.alibi_truncation / slopes  # (h,): the penalty passes T beyond it
        options = dict(slopes=slopes, window=self.config.attention_window, max_distance=max_distance)
        window = self.config.attention_window  # a sliding static cache reorders its slots: keep the mask path
        if attention_mask is None and static and window is None and kv_offset == 0 and not _capturing(device):
            # An unpadded prompt into a full-size static cache (prefill, eager steps): read the length once, then
            # attend to the filled slots only (the layers slice the cache), like a dynamic cache.
            past_length, kv_length, static = int(past_length), int(past_length) + q_len, False
        if attention_mask is None and not static:
            # Every token is real: positions are indices, and nothing is read back from the device (no sync, no
            # graph break when compiled). This is the packed-training case.
            return AlibiAttentionMask(
                query_positions=(torch.arange(q_len, device=device) + past_length).expand(batch, q_len),
                key_positions=(torch.arange(kv_length, device=device) + kv_offset).expand(batch, kv_length),
                key_padding=None,
                offset=past_length - kv_offset,
                **options,
            )
        if attention_mask is None:
            attention_mask = torch.ones(batch, int(past_length) + q_len, dtype=torch.long, device=device)
        elif not torch.compiler.is_compiling():
            # A static cache's length is a device tensor: reading it would sync (and break CUDA-graph capture).
            _check_attention_mask(attention_mask, batch, q_len if static else past_length + q_len, static)
        mask = attention_mask.to(device=device, dtype=torch.long)
        if mask.shape[1] < kv_offset + kv_length:
            mask = F.pad(mask, (0, kv_offset + kv_length - mask.shape[1]))  # (b, m): empty slots count as padding
        positions = mask.cumsum(-1) - 1  # (b, m)
        query_index = torch.arange(q_len, device=device) + past_length  # (q,)
        key_padding = mask[:, kv_offset : kv_offset + kv_length] == 0  # (b, k)
        query_padding = mask[:, query_index] == 0  # (b, q)
        # A static cache always has empty slots until full; skipping the check keeps compiled decode graph-free.
        offset = None
        if not static and not key_padding.any():
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

    def _add_positions(
        self, hidden_states: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Apply the baseline position encodings; ALiBi adds nothing here (it lives in the attention scores)."""
        encoding, rotary = self.config.position_encoding, None
        positions = positions.clamp(min=0)  # padding has position -1; its value is masked anyway
        if encoding == "learned":
            # The check reads a device value: skipped inside compiled graphs and CUDA-graph capture.
            if not _capturing(positions.device) and int(positions.max()) >= self.config.max_position_embeddings:
                raise ValueError(
                    f"Position {int(positions.max())} is past max_position_embeddings="
                    f"{self.config.max_position_embeddings} of this learned-position model; ALiBi has no such limit."
                )
            hidden_states = hidden_states + self.embed_positions(positions)
        elif encoding == "sinusoidal":
            hidden_states = hidden_states + sinusoidal_embedding(positions, self.config.hidden_size).to(hidden_states.dtype)
        elif encoding == "rotary":
            rotary = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        return hidden_states, rotary


# Rows of log-probabilities computed at once when scoring targets: bounds the (rows, vocab) fp32 block.
LOG_PROB_BYTES = 256 * 2**20


class AlibiForCausalLM(AlibiPreTrainedModel, GenerationMixin):
    """ALiBi decoder with a language-model head: a plain (optionally tied) softmax or an adaptive softmax."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        self.model = AlibiModel(config)
        if config.adaptive_softmax_cutoffs:
            self.lm_head = AlibiAdaptiveSoftmax(config)
        else:
            self.lm_head = nn.Linear(config.output_dim, config.vocab_size, bias=False)
        self.post_init()

    @property
    def is_adaptive(self) -> bool:
        return isinstance(self.lm_head, AlibiAdaptiveSoftmax)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module | None:
        return None if self.is_adaptive else self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Language-model forward pass.

        Args:
            labels: Targets (b, q) aligned with `input_ids`; the model shifts them (position t predicts t + 1) and
                ignores -100. The loss is the mean negative log-likelihood in nats (or the sum over
                `num_items_in_batch` when the Trainer passes it).
            logits_to_keep: 0 keeps every position; an int n keeps the last n; a 1-D tensor keeps those indices.
                With an adaptive softmax the returned `logits` are full-vocabulary log-probabilities, and when
                `labels` are given with `logits_to_keep=0` they are not computed at all (None): the loss never
                builds a (q, vocab) tensor.
            Other arguments are those of [`AlibiModel.forward`].
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            kept = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        else:
            kept = hidden_states[:, logits_to_keep]

        logits = loss = None
        if self.is_adaptive:
            if labels is None or not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
                logits = self.lm_head.log_probs(kept, self.model.embed_tokens)
        else:
            logits = self.lm_head(kept)
        if labels is not None:
            full_logits = logits if kept is hidden_states and not self.is_adaptive else None
            loss = self._loss(hidden_states, labels, full_logits, num_items_in_batch)

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        chunk_size: int = 512,
        past_key_values: Cache | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Feed a prompt through the model `chunk_size` tokens at a time, filling the cache.

        Peak activation memory depends on `chunk_size`, not on the prompt length; with `config.attention_window`
        the cache stays bounded too. The result equals one forward over the whole prompt. Inference only (no
        gradients). `generate` does the same when given `prefill_chunk_size=n`.

        Args:
            input_ids: The new tokens (b, q).
            attention_mask: 0/1 mask (b, cached + q) over the cached and the new tokens; None means no padding.
            chunk_size: Tokens per forward pass.
            past_key_values: A cache to extend; None starts `DynamicCache(config=config)`.

        Returns:
            The logits of the last position (b, vocab) and the filled cache.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size={chunk_size} must be a positive number of tokens per forward pass.")
        if past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        q_len = input_ids.shape[1]
        # Without a mask the chunks go in unmasked: positions are indices, the fast path of every backend.
        past = int(past_key_values.get_seq_length()) if attention_mask is not None else 0
        logits = None
        for start in range(0, q_len, chunk_size):
            end = min(start + chunk_size, q_len)
            logits = self(
                input_ids[:, start:end],
                attention_mask=None if attention_mask is None else attention_mask[:, : past + end],
                past_key_values=past_key_values,
                use_cache=True,
                logits_to_keep=1,
            ).logits
        if logits is None:
            raise ValueError("prefill needs at least one new token in input_ids.")
        return logits[:, -1], past_key_values

    def create_masks_for_generate(
        self,
        config: AlibiConfig,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        **kwargs: Any,
    ) -> torch.Tensor | None:
        """Keep generate()'s 2-D mask for compileable (static) caches instead of its default 4-D causal mask.

        ALiBi positions come from the cumulative 2-D mask, so a 4-D mask would lose them. The mask is padded with
        zeros to the span of keys the cache returns, which keeps its shape fixed from step to step (one compiled
        graph) for a `StaticCache`.
        """
        if attention_mask is None or attention_mask.dim() != 2 or past_key_values is None:
            return attention_mask
        kv_length, kv_offset = past_key_values.get_mask_sizes(inputs_embeds.shape[1], 0)
        missing = kv_offset + kv_length - attention_mask.shape[1]
        return F.pad(attention_mask, (0, missing)) if missing > 0 else attention_mask

    def _loss(
        self,
        hidden_states: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor | None,
        num_items_in_batch: int | torch.Tensor | None,
    ) -> torch.Tensor:
        """Shifted cross-entropy; reuses full logits when they exist, else scores targets in chunks."""
        targets = labels[:, 1:].to(hidden_states.device)  # (b, q - 1)
        if logits is not None:
            nll = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"
            )
        else:
            nll = -self._target_log_probs(hidden_states[:, :-1], targets).sum()
        count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
        return nll / count

    def _target_log_probs(self, hidden_states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(targets) for hidden (b, q, d) and targets (b, q) -> (b, q) fp32; 0 where the target is -100.

        Works in row chunks so that no (q, vocab) block larger than `LOG_PROB_BYTES` exists at once.
        """
        hidden, flat_targets = hidden_states.flatten(0, 1), targets.flatten()  # (n, d), (n,)
        ignored = flat_targets == -100
        flat_targets = flat_targets.masked_fill(ignored, 0)
        width = self.lm_head.bands[0][1] + len(self.lm_head.bands) if self.is_adaptive else self.config.vocab_size
        rows = max(1, LOG_PROB_BYTES // (4 * width))
        chunks = []
        for start in range(0, hidden.shape[0], rows):
            h, t = hidden[start : start + rows], flat_targets[start : start + rows]
            if self.is_adaptive:
                chunks.append(self.lm_head.target_log_probs(h, t, self.model.embed_tokens))
            else:
                chunks.append(torch.log_softmax(self.lm_head(h).float(), dim=-1).gather(-1, t[:, None]).squeeze(-1))
        log_probs = torch.cat(chunks) if chunks else hidden.new_zeros(0, dtype=torch.float32)
        return log_probs.masked_fill(ignored, 0.0).view_as(targets)

    def token_log_probs(
        self, input_ids: torch.LongTensor, target_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-token log p(target_ids[:, t] | input_ids[:, :t + 1]) as (b, q) fp32, with no shift; -100 gives 0.

        This is what corpus perplexity needs: it never builds full-vocabulary logits for all positions.
        """
        hidden_states = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self._target_log_probs(hidden_states, target_ids.to(hidden_states.device))


__all__ = [
    "AlibiAttentionMask",
    "AlibiForCausalLM",
    "AlibiModel",
    "AlibiPreTrainedModel",
    "alibi_bias",
    "alibi_slopes",
]
