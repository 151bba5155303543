"""ALiBi attention: the eager reference, the fast kernels, the rule table that picks one per call, the registry.

Every backend takes transformers' attention-function signature, `(module, query, key, value, attention_mask,
scaling, dropout, **kwargs)` with (b, h, q, d) query and (b, h, k, d) key/value, and returns the (b, q, h, d)
output and the attention weights (eager only). `attention_mask` is the `AlibiAttentionMask` of alibi_mask.py. They
are registered in this model's own `AttentionInterface` (`ALL_ATTENTION_FUNCTIONS`) under transformers' names, so
`attn_implementation="sdpa"` picks the ALiBi-aware SDPA path for this model only.

Inside a backend, `choose_kernel` picks the kernel for each call from `KERNEL_RULES`, a table read top to bottom.
To add a kernel: write it with the `_KernelFn` signature, add it to `KERNELS`, add a row to `KERNEL_RULES` whose
condition holds exactly where it computes the same function as eager, and test it against eager.

Hub payload: imports only torch, transformers, the standard library, its sibling files and (inside `try`) the
optional kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import AttentionInterface

from .alibi_cudnn import alibi_cudnn_attention
from .alibi_cudnn import is_supported as _cudnn_supported
from .alibi_flex import flex_alibi_attention, flex_attention, flex_block_mask
from .alibi_mask import AlibiAttentionMask

try:  # flash-attn >= 2.4 takes per-head ALiBi slopes; optional `flash` extra.
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:
    flash_attn_func = flash_attn_varlen_func = None

try:  # Our Triton ALiBi kernels; triton is absent on CPU-only builds of torch and on macOS.
    from .alibi_triton import alibi_flash_attention
    from .alibi_triton import is_supported as _triton_supported
    from .alibi_triton_decode import alibi_decode_attention
    from .alibi_triton_decode import decode_supported as _decode_supported
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
# The flex backend runs inference forwards (prefill, scoring, long prompts) on the Triton ALiBi kernel: on an
# H100 (bf16, d 128) its forward reaches 0.79x of unbiased SDPA flash at 16K tokens against flex's 0.50x. Its
# forward+backward is no faster than flex's (0.62x vs 0.61x at 16K, slower at 1K-4K), so training keeps flex.
# Set False to always use flex (for comparisons).
TRITON_INFERENCE = True
# Training, scoring and whole-prompt prefill run on cuDNN's fused ALiBi (alibi_cudnn.py) where it computes the
# call exactly and nvidia-cudnn-frontend is installed (`alibi-lm[cudnn]`): forward+backward at 0.91x of unbiased
# SDPA at 16K tokens on an H200, against flex's 0.38x (benchmarks/cudnn_bench.py). Set False to compare.
CUDNN_ALIBI = True


# ----------------------------------------------------------------------------------------------------------
# Kernels. Each takes (b, h, q, d) query, (b, h, k, d) key/value and the mask, and returns the (b, q, h, d)
# output and the attention weights (eager only, else None). `dropout` is already 0.0 outside training.
# ----------------------------------------------------------------------------------------------------------

_KernelFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, AlibiAttentionMask, float, float],
    tuple[torch.Tensor, torch.Tensor | None],
]


def _eager(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    """The reference: scores, bias and softmax in fp32.

    Memory: materializes (b, h, q, k) fp32 scores, bias and weights at once, so it is quadratic in the prompt
    length. Chosen for decode steps no faster kernel serves, and when asked for.
    """
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling  # (b, h, q, k)
    # The bias is added after scaling, as in the paper and fairseq: it is not divided by sqrt(d).
    weights = torch.softmax(scores + mask.additive(), dim=-1).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=dropout > 0.0)
    return torch.matmul(weights, value).transpose(1, 2), weights  # (b, q, h, d), (b, h, q, k)


def _matmul(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    """Eager's two matmuls without the weights: decode steps that no faster kernel serves."""
    return _eager(query, key, value, mask, scaling, dropout)[0], None


def _sdpa_bias(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    """torch SDPA with the bias built in fp32 and cast to the query dtype last, in query chunks.

    Memory: each chunk of rows materializes a (b, h, rows, k) bias (and, on CPU, scores of that size) of about
    `SDPA_BIAS_BYTES`, so the peak grows linearly with the key length k instead of quadratically with the
    sequence length. With a windowed cache and chunked prefill, k stays below window + chunk: constant memory.
    """
    b, h, q_len, _ = query.shape
    rows_per_chunk = max(1, SDPA_BIAS_BYTES // (4 * b * h * key.shape[2]))
    outputs = []
    for start in range(0, q_len, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, q_len))
        bias = mask.additive(rows).to(query.dtype)  # (b, h, rows, k)
        chunk = query[:, :, rows]  # (b, h, rows, d)
        outputs.append(F.scaled_dot_product_attention(chunk, key, value, bias, dropout_p=dropout, scale=scaling))
    return torch.cat(outputs, dim=2).transpose(1, 2), None  # (b, q, h, d)


def _sdpa_causal(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    """Plain causal attention (the position-encoding baselines): SDPA's built-in mask, so its flash kernel."""
    causal = query.shape[2] > 1  # one query that sees every key needs no mask
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=causal, scale=scaling)
    return out.transpose(1, 2), None  # (b, q, h, d)


def _cudnn(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    return alibi_cudnn_attention(query, key, value, scaling).transpose(1, 2), None  # (b, q, h, d)


def _triton(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    out = alibi_flash_attention(
        query, key, value, mask.slopes, scaling, offset=mask.offset, window=mask.window, max_distance=mask.max_distance
    )  # (b, h, q, d)
    return out.transpose(1, 2), None


def _triton_decode(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    out = alibi_decode_attention(
        query, key, value, mask.slopes, scaling, mask.query_positions, mask.key_positions,
        key_padding=mask.key_padding, window=mask.window, max_distance=mask.max_distance,
    )  # (b, h, q, d)
    return out.transpose(1, 2), None


def _flex(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    return flex_alibi_attention(query, key, value, mask, scaling).transpose(1, 2), None  # (b, q, h, d)


def _flash(query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    """flash-attn with `alibi_slopes` (fp32, bottom-right aligned, so KV-cache offsets are handled in-kernel).

    Padded batches are unpadded into a varlen batch: compacting each row's real tokens gives exactly the
    cumulative-mask positions used by the other backends (a static cache's empty slots are padding too). Packed
    rows run as one varlen sequence per document. `attention_window` W becomes flash-attn's
    `window_size=(W - 1, 0)`. Memory: no (q, k) tensor at all.
    """
    if mask.max_distance is not None:
        raise ValueError(
            "alibi_truncation needs a window per head, which flash-attn cannot express. Load with "
            'attn_implementation="flex_attention" (or "sdpa"), or set config.alibi_truncation=None.'
        )
    options = dict(softmax_scale=scaling, causal=True, alibi_slopes=mask.slopes)
    if mask.window is not None:  # only when set: unwindowed calls stay exactly as they were
        options["window_size"] = (mask.window - 1, 0)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (b, len, h, d), flash-attn's layout
    if mask.segments is not None:
        return _flash_packed(q, k, v, mask, dropout, options), None
    if mask.key_padding is not None:
        return _flash_padded(q, k, v, mask, dropout, options), None
    return flash_attn_func(q, k, v, dropout, **options), None  # (b, q, h, d)


def _flash_packed(q, k, v, mask: AlibiAttentionMask, dropout: float, options: dict) -> torch.Tensor:
    """Packed rows: every token is real, and each document runs as one varlen sequence."""
    b, q_len, h, d = q.shape
    documents = mask.segments + torch.arange(b, device=q.device)[:, None] * q_len  # (b, q), unique per row
    lengths = torch.unique_consecutive(documents.flatten(), return_counts=True)[1]  # (n_docs,)
    cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    longest = int(lengths.max())
    q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)  # (b * q, h, d)
    out = flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, dropout, **options)  # (b * q, h, d)
    return out.view(b, q_len, h, d)


def _flash_padded(q, k, v, mask: AlibiAttentionMask, dropout: float, options: dict) -> torch.Tensor:
    """Padded rows: each row's real queries and keys are compacted into one varlen sequence."""
    b, q_len, h, d = q.shape
    key_valid = ~mask.key_padding  # (b, k)
    # Not key_valid[:, -q_len:]: a static cache's keys end in empty slots, after the queries.
    query_valid = ~mask.query_padding if mask.query_padding is not None else key_valid.new_ones(b, q_len)  # (b, q)
    cu_q = F.pad(query_valid.sum(-1).cumsum(0, dtype=torch.int32), (1, 0))
    cu_k = F.pad(key_valid.sum(-1).cumsum(0, dtype=torch.int32), (1, 0))
    longest_q, longest_k = int(query_valid.sum(-1).max()), int(key_valid.sum(-1).max())
    out_packed = flash_attn_varlen_func(
        q[query_valid], k[key_valid], v[key_valid], cu_q, cu_k, longest_q, longest_k, dropout, **options
    )  # (total, h, d)
    out = q.new_zeros(b, q_len, h, d)
    out[query_valid] = out_packed
    return out  # (b, q, h, d)


KERNELS: dict[str, _KernelFn] = {
    "eager": _eager,
    "matmul": _matmul,
    "sdpa_bias": _sdpa_bias,
    "sdpa_causal": _sdpa_causal,
    "cudnn": _cudnn,
    "triton": _triton,
    "triton_decode": _triton_decode,
    "flex": _flex,
    "flash": _flash,
}


# ----------------------------------------------------------------------------------------------------------
# Kernel choice: one table of rules
# ----------------------------------------------------------------------------------------------------------


class KernelCall(NamedTuple):
    """What the kernel choice reads about one attention call."""

    implementation: str  # the registered name: "eager", "sdpa", "flex_attention", "flash_attention_2"
    mask: AlibiAttentionMask
    query: torch.Tensor  # (b, h, q, d), or any tensor with its device, dtype, head dim and query count at dim 2
    key_length: int
    dropout: float
    needs_grad: bool  # autograd will differentiate through this call


def _flex_device(device: torch.device) -> bool:
    """FlexAttention's kernel runs on CUDA here (tests point this at CPU to exercise the dispatch)."""
    return device.type == "cuda"


def _always(call: KernelCall) -> bool:
    return True


def _flex_sized(call: KernelCall) -> bool:
    """A query block worth a block mask, on a device where flex runs."""
    return _flex_device(call.query.device) and call.query.shape[2] >= FLEX_MIN_QUERY_LEN


def _flex_blocks(call: KernelCall) -> bool:
    """`_flex_sized`, unless a per-row block mask (padding, packed rows) would be built inside a compiled graph:
    inductor fails on it once Dynamo makes the length symbolic, as it does from the second length a compiled model
    sees (torch 2.11, H200: `CantSplit` on the block count in create_block_mask). SDPA with the bias serves those
    calls at any length; compiled unpadded calls keep flex (their block masks compile)."""
    mask = call.mask
    per_row = mask.offset is None and (mask.key_padding is not None or mask.segments is not None)
    return _flex_sized(call) and not (per_row and torch.compiler.is_compiling())


def _cudnn_exact(call: KernelCall) -> bool:
    """Queries and keys are the same unpadded tokens (no cache prefix) of a plain causal ALiBi model with the
    paper's slopes: what cuDNN's built-in ALiBi computes (top-left causal, slopes from the head count, bias_max 8)."""
    mask, q_len = call.mask, call.query.shape[2]
    return (
        CUDNN_ALIBI
        and mask.slopes is not None
        and mask.bias_max == 8.0
        and mask.key_padding is None
        and mask.segments is None
        and mask.window is None
        and mask.max_distance is None
        and mask.offset == 0
        and call.key_length == q_len
        and call.dropout == 0.0
        and _cudnn_supported(call.query, call.query)  # CUDA, bf16/fp16, head dim; the key has the query's shape
    )


def _triton_prompt(call: KernelCall) -> bool:
    """Half-precision ALiBi inference without padding, window or truncation, outside torch.compile."""
    mask = call.mask
    return (
        _flex_sized(call)
        and TRITON_INFERENCE
        and alibi_flash_attention is not None
        and not call.needs_grad
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
        and call.query.dtype in (torch.float16, torch.bfloat16)
        and _triton_supported(call.query)
    )


def _decode_step(call: KernelCall) -> bool:
    """A few query rows (decode steps) with a bias or mask: SDPA's biased kernels would use a few SMs."""
    return call.query.shape[2] <= DECODE_MAX_QUERY_LEN and not call.mask.is_plain_causal


def _triton_decode_step(call: KernelCall) -> bool:
    """Decode steps of half-precision ALiBi inference on CUDA (a custom op: compiled graphs call it too)."""
    return (
        _decode_step(call)
        and TRITON_INFERENCE
        and alibi_decode_attention is not None
        and call.dropout == 0.0
        and not call.needs_grad
        and call.mask.slopes is not None  # ALiBi only: the baselines have no bias
        and call.mask.segments is None  # it takes positions per key, not documents
        and _decode_supported(call.query)  # CUDA, bf16/fp16, head dim <= 128
    )


def _plain_causal_square(call: KernelCall) -> bool:
    """No bias, padding or window, and SDPA's top-left causal mask is right: a full square, or one query that
    sees every key."""
    mask, q_len = call.mask, call.query.shape[2]
    offset = mask.offset
    sees_all_keys = offset is not None and call.key_length == q_len + offset and (q_len == 1 or offset == 0)
    return mask.is_plain_causal and sees_all_keys


_SDPA_FLEX = ("sdpa", "flex_attention")

# The first row whose implementation and condition match picks the kernel. `sdpa` and `flex_attention` share
# every row but flex's own two: flex hands short query blocks (and CPU tensors) to SDPA's kernels.
KERNEL_RULES: tuple[tuple[str, tuple[str, ...], Callable[[KernelCall], bool]], ...] = (
    # kernel          implementations          condition
    ("eager",         ("eager",),              _always),
    ("flash",         ("flash_attention_2",),  _always),
    ("cudnn",         _SDPA_FLEX,              _cudnn_exact),  # training and prefill; fwd+bwd 0.91x of unbiased
    ("triton",        ("flex_attention",),     _triton_prompt),  # inference; 0.79x of unbiased flash vs flex's 0.50x
    ("flex",          ("flex_attention",),     _flex_blocks),  # CUDA, >= FLEX_MIN_QUERY_LEN queries
    ("triton_decode", _SDPA_FLEX,              _triton_decode_step),  # split-K over every SM
    ("matmul",        _SDPA_FLEX,              _decode_step),  # other decode steps: eager without weights
    ("sdpa_causal",   _SDPA_FLEX,              _plain_causal_square),  # baselines: SDPA's own flash kernel
    ("sdpa_bias",     _SDPA_FLEX,              _always),  # the bias in row chunks of SDPA_BIAS_BYTES
)  # fmt: skip


def choose_kernel(call: KernelCall) -> str:
    """The name (a key of `KERNELS`) of the kernel that serves this call, by `KERNEL_RULES`."""
    for kernel, implementations, condition in KERNEL_RULES:
        if call.implementation in implementations and condition(call):
            return kernel
    raise ValueError(f"No ALiBi kernel for attn_implementation={call.implementation!r}.")


def _attend(implementation: str, module, query, key, value, mask: AlibiAttentionMask, scaling: float, dropout: float):
    dropout = dropout if module is not None and module.training else 0.0
    needs_grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    call = KernelCall(implementation, mask, query, key.shape[2], dropout, needs_grad)
    return KERNELS[choose_kernel(call)](query, key, value, mask, scaling, dropout)


# ----------------------------------------------------------------------------------------------------------
# Backends, with transformers' attention-function signature
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
    """The reference, in fp32; the only backend that returns the attention weights. Quadratic memory."""
    return _attend("eager", module, query, key, value, attention_mask, scaling, dropout)


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
    """torch SDPA with the ALiBi bias as its float mask, built in row chunks: memory linear in the key count.

    Decode steps run the Triton decode kernel where it serves them, else eager's two matmuls.
    """
    return _attend("sdpa", module, query, key, value, attention_mask, scaling, dropout)


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
    Unpadded, plain-causal half-precision ALiBi calls without autograd take the Triton kernel.
    """
    if dropout > 0.0:
        raise ValueError(
            "flex_attention has no attention dropout. Set config.attention_dropout=0.0 for training, or load with "
            'attn_implementation="sdpa" (or "eager").'
        )
    return _attend("flex_attention", module, query, key, value, attention_mask, scaling, dropout)


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
    """flash-attn 2 with per-head ALiBi slopes; padded and packed rows run as varlen batches."""
    if flash_attn_func is None:
        raise ImportError(FLASH_MISSING)
    return _attend("flash_attention_2", module, query, key, value, attention_mask, scaling, dropout)


FLASH_MISSING = 'attn_implementation="flash_attention_2" needs flash-attn>=2.4: pip install "alibi-lm[flash]".'

# This model's attention registry: transformers' names, mapped to the ALiBi-aware backends for this model only
# (registering them globally would replace every other model's sdpa). Names not set here fall through to
# transformers' global registry (`AttentionInterface.register`): those functions get the 4-D float mask
# `AlibiAttentionMask.additive()`, which carries the bias, so any backend that adds its mask computes ALiBi.
ALL_ATTENTION_FUNCTIONS = AttentionInterface()
ALL_ATTENTION_FUNCTIONS["eager"] = eager_attention_forward
ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa_attention_forward
ALL_ATTENTION_FUNCTIONS["flex_attention"] = flex_attention_forward
ALL_ATTENTION_FUNCTIONS["flash_attention_2"] = flash_attention_forward
ALIBI_BACKENDS = frozenset(
    {eager_attention_forward, sdpa_attention_forward, flex_attention_forward, flash_attention_forward}
)

# transformers' global backends that ignore or reject an additive float mask, so they would drop the bias.
NO_BIAS_BACKENDS = {
    "flash_attention_3": "flash-attn 3 takes no ALiBi slopes",
    "flash_attention_4": "flash-attn 4 takes no ALiBi slopes",
    "paged|eager": "paged attention builds its own mask",
}


def default_attn_implementation() -> str:
    """The fastest correct backend for this machine: FlexAttention on CUDA, else SDPA."""
    if flex_attention is not None and torch.cuda.is_available():
        return "flex_attention"
    return "sdpa"


def resolve_attn_implementation(requested: str | None) -> str:
    """The backend for `attn_implementation=requested`; None picks the fastest correct one for this machine."""
    if requested is None:
        return default_attn_implementation()
    if requested in NO_BIAS_BACKENDS:
        raise ValueError(
            f"attn_implementation={requested!r} cannot apply ALiBi ({NO_BIAS_BACKENDS[requested]}). "
            'Use "flash_attention_2", "flex_attention", "sdpa" or "eager".'
        )
    if requested != "eager" and requested not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(
            f'Specified `attn_implementation="{requested}"` is not supported. Choose "eager", "sdpa", '
            '"flex_attention" or "flash_attention_2", or register a function with AttentionInterface.register.'
        )
    if requested == "flex_attention" and (flex_attention is None or not torch.cuda.is_available()):
        raise ValueError('attn_implementation="flex_attention" needs CUDA; use "sdpa" on this machine.')
    return requested  # flash-attn's presence is checked earlier, in _check_and_adjust_attn_implementation


def prepare_block_mask(
    mask: AlibiAttentionMask, implementation: str, hidden_states: torch.Tensor, num_heads: int, layers: nn.Module
) -> None:
    """Build flex's block mask before the layers, when they will run flex's kernel (other kernels need none).
    Built once here, not in the first layer, so the decoder layers compile without a graph break."""
    query_like = hidden_states.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (b, h, q, d)
    k_len = mask.key_positions.shape[1]
    call = KernelCall(implementation, mask, query_like, k_len, dropout=0.0, needs_grad=False)
    if implementation != "flex_attention" or not _flex_sized(call):
        return  # decided before scanning the parameters, which every decode step would pay for
    needs_grad = torch.is_grad_enabled() and (
        hidden_states.requires_grad or any(p.requires_grad for p in layers.parameters())
    )
    if choose_kernel(call._replace(needs_grad=needs_grad)) == "flex":
        flex_block_mask(mask, query_like.shape[2], k_len, query_like.device)
