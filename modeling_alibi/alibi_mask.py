"""What every attention backend reads: ALiBi's slopes and bias, and the mask object built once per forward.

`build_attention_mask` is the one place where a call's 2-D attention mask, cache and `position_ids` become
positions: it returns an `AlibiAttentionMask` (query and key positions, padding, packed documents, window, per-head
truncation, slopes) that every layer and every backend reads, and nothing else re-derives them.

Hub payload: imports only torch and the standard library.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------
# ALiBi: slopes and bias
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
    # The `alibi_bias_max` the slopes were made with: kernels with built-in slopes (cuDNN: the paper's 8) check it.
    bias_max: float | None = None

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
# The mask object, from the 2-D attention mask, the cache and position_ids
# ----------------------------------------------------------------------------------------------------------


def tracing(device: torch.device) -> bool:
    """Inside torch.compile, torch.export or a CUDA-graph capture, where a forward must not read device values."""
    return torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


# Set (to True) by `empty_static_cache()`: the static cache of the forwards inside is known to be empty.
_EMPTY_STATIC_CACHE = contextvars.ContextVar("alibi_empty_static_cache", default=False)


@contextlib.contextmanager
def empty_static_cache():
    """Forwards inside may assume their static cache is empty, rather than read its length from the device.

    For the graph decoder's prompt (alibi_decoding), which it captures as a CUDA graph: reading the length would
    sync, which a capture forbids, and without it an unpadded prompt would take the padded path, whose kernels
    attend to every empty slot. Only for one forward right after the cache's `reset()`."""
    token = _EMPTY_STATIC_CACHE.set(True)
    try:
        yield
    finally:
        _EMPTY_STATIC_CACHE.reset(token)


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
    # Never inside torch.compile: dynamo cannot trace ContextVar.get (a graph break), and compiled steps need no hint.
    empty = static and not torch.compiler.is_compiling() and _EMPTY_STATIC_CACHE.get()
    if attention_mask is None and static and config.attention_window is None and kv_offset == 0 and (
            empty or not tracing(device)):
        # An unpadded prompt into a full-size static cache (prefill, eager steps): read the length once (or know it
        # is 0), then attend to the filled slots only (the layers slice the cache), like a dynamic cache.
        past_length = 0 if empty else int(past_length)
        kv_length, static = past_length + q_len, False
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
    slopes = max_distance = bias_max = None
    if config.position_encoding == "alibi":
        bias_max = config.alibi_bias_max
        slopes = _device_slopes(config.num_attention_heads, bias_max, device)
        if config.alibi_truncation is not None:
            max_distance = config.alibi_truncation / slopes  # (h,): the penalty passes T beyond it
    return dict(slopes=slopes, window=config.attention_window, max_distance=max_distance, bias_max=bias_max)


def _documents(position_ids: torch.Tensor, batch: int) -> torch.Tensor | None:
    """(b, q) document index per token of packed rows, where positions restart; None when no row is packed."""
    position_ids = position_ids.expand(batch, -1)  # (b, q)
    starts = position_ids[:, 1:] != position_ids[:, :-1] + 1  # (b, q - 1)
    # One read, as transformers' find_packed_sequence_indices does: unpacked rows keep the fast unpadded paths.
    if not tracing(position_ids.device) and not starts.any():
        return None
    return F.pad(starts, (1, 0)).cumsum(-1)  # (b, q)


def _check_attention_mask(attention_mask: torch.Tensor, batch: int, seen: int, static: bool) -> None:
    """Raise unless the mask is (batch, cached + new tokens) of 0/1; a static cache also takes it padded to its
    slots. The values are read only on the CPU, where that costs no device sync."""
    width = attention_mask.shape[-1]
    fits = width == seen or (static and width > seen)
    if not (attention_mask.dim() == 2 and attention_mask.shape[0] == batch and fits):
        raise ValueError(
            f"attention_mask must be a 2-D 0/1 tensor of shape (batch, cached + new tokens) = {(batch, seen)}, "
            f"got {tuple(attention_mask.shape)}. Pass the mask of the whole sequence so far, as generate() does."
        )
    if attention_mask.device.type == "cpu" and (
        attention_mask.is_complex() or ((attention_mask != 0) & (attention_mask != 1)).any()
    ):
        raise ValueError(
            "attention_mask must hold only 0 (padding) and 1 (token), got other values; pass the tokenizer's "
            "attention_mask, or (mask != 0).long()."
        )

