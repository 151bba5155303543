"""graph_generate's batch-1 step through a pre-norm decoder layer: LayerNorm and the stacked q, k, v projection;
attention over the cache (the model's backend: the cache write and the decode kernel's two launches); the output
projection with the residual add; LayerNorm, fc1 and ReLU; fc2 with the residual add. The four linear layers are
alibi_triton_gemv.py's kernels, one launch each.

Why: at batch 1 a token's time is its kernels' fixed costs, not their bytes. The compiled step leaves each
LayerNorm's statistics in a kernel of its own, beside about eight other kernels per layer (the weights of the
WikiText-103-size model alone would take 0.11 ms at an H200's copy rate, its step took 0.53 ms of GPU time at
2,048 keys: docs/benchmarks.md, twenty-third session). With these layers the step is 138 launches
instead of 170, and with the kernels' programmatic dependent launch 0.478 ms a token instead of 0.576
(benchmarks/step_profile.py --parts graph, twenty-fifth session).

Used where `fused_decode_applies`: one token of one row, inside graph_generate's step (the layer's q, k and v are
stacked, `AlibiAttention.fused_qkv`), in eval mode, pre-norm, ReLU, plain `nn.Linear` layers and affine
LayerNorms, no autocast, on a FUSED_DECODE_DEVICES device with triton. Every other call runs the layer's forward.
The results are eager's up to the order of the fp32 sums (alibi_triton_gemv.py rounds where the separate ops do).

Hub payload: imports only torch and its siblings (alibi_triton_gemv.py inside `try`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

try:  # Triton kernels; without triton every layer runs its own forward
    from .alibi_triton_gemv import gemv_supported, linear_add, norm_linear
except ImportError:
    gemv_supported = linear_add = norm_linear = None

if TYPE_CHECKING:
    from transformers.cache_utils import Cache

    from .alibi_mask import AlibiAttentionMask

# Devices where graph_generate's batch-1 step runs the fused layer; () keeps the layers' own forward (the compiled
# step then writes about ten kernels per layer; benchmarks/step_profile.py --parts graph compares the two).
FUSED_DECODE_DEVICES = ("cuda",)


def fused_decode_applies(layer: nn.Module, hidden_states: Any, rotary: Any, cache: Cache | None,
                         output_attentions: bool) -> bool:
    """Whether `fused_decode_layer` computes this `AlibiDecoderLayer` call (see the module docstring)."""
    attention, mlp = layer.self_attn, layer.mlp
    if not (
        norm_linear is not None
        and attention.fused_qkv is not None
        and isinstance(hidden_states, torch.Tensor)
        and hidden_states.shape[:-1] == (1, 1)
        and hidden_states.device.type in FUSED_DECODE_DEVICES
        and not torch.is_autocast_enabled(hidden_states.device.type)
        and cache is not None
        and rotary is None
        and not output_attentions
        and not layer.training
        and layer.normalize_before
        and mlp.activation is torch.nn.functional.relu
        and all(type(m) is nn.Linear for m in (attention.o_proj, mlp.fc1, mlp.fc2))
        and all(_affine(norm, hidden_states) for norm in (layer.self_attn_layer_norm, layer.final_layer_norm))
    ):
        return False
    row = hidden_states.reshape(1, -1)  # (1, d)
    inner = row.new_empty(1, mlp.fc1.out_features)  # only its shape and dtype are read
    return all(gemv_supported(x, weight) for x, weight in (
        (row, attention.fused_qkv[0]), (row, attention.o_proj.weight), (row, mlp.fc1.weight), (inner, mlp.fc2.weight)))


def _affine(norm: nn.Module, hidden_states: torch.Tensor) -> bool:
    return (isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None
            and norm.weight.dtype == hidden_states.dtype)


def fused_decode_layer(layer: nn.Module, hidden_states: torch.Tensor, attention_mask: AlibiAttentionMask,
                       cache: Cache) -> torch.Tensor:
    """The pre-norm layer's output (1, 1, d) for one token (1, 1, d), as `AlibiDecoderLayer.forward` computes it."""
    attention, mlp = layer.self_attn, layer.mlp
    residual = hidden_states.reshape(1, -1)  # (1, d)
    qkv = norm_linear(residual, layer.self_attn_layer_norm, *attention.fused_qkv)  # (1, 3 * d)
    query, key, value = qkv.view(1, 1, -1).chunk(3, dim=-1)  # (1, 1, d) views
    out, _ = attention.attend(query, key, value, attention_mask, None, cache)  # (1, 1, d)
    o_proj, fc1, fc2 = attention.o_proj, mlp.fc1, mlp.fc2
    residual = linear_add(out.reshape(1, -1).contiguous(), o_proj.weight, o_proj.bias, residual)  # (1, d)
    inner = norm_linear(residual, layer.final_layer_norm, fc1.weight, fc1.bias, relu=True)  # (1, d_ffn)
    return linear_add(inner, fc2.weight, fc2.bias, residual).view_as(hidden_states)  # (1, 1, d)
