"""q, k and v as one GEMM whose output cuDNN's ALiBi reads in place: compiled training's attention input.

Why: with three projections, the backward runs three input-gradient GEMMs and adds their outputs, three weight-
gradient GEMMs and three bias sums. Stacked, each is one larger GEMM or sum, and the attention's backward writes
the three gradients into the one (b, q, 3 * hidden) tensor that the projection's backward reads
(`alibi_cudnn_attention_packed`; q, k and v split apart would cost a copy each way). On an H200 (the model_bench
model, 16 x 512 tokens, `mode="reduce-overhead"`) the step took 24.56 ms against 24.93 with three projections with
bf16 parameters, and 27.21 against 28.02 ms under autocast (docs/benchmarks.md, twentieth session).

The weights stay three `nn.Linear`s, stacked at every call: checkpoints, the fairseq conversion and adapters
that target `q_proj`, `k_proj` or `v_proj` are unchanged. The stack costs 6 MB of copies a layer at bf16 and
hidden 1,024, about 0.04 ms a step: 23.89 ms against 23.85 with one stacked parameter (nineteenth session).

Used where `packed_qkv_applies`: the call is one the kernel-choice table gives to cuDNN (alibi_attention.py:
no cache, padding, packed rows, window or dropout) and the projections are plain `nn.Linear`s (LoRA and quantized
layers keep their own forward). The model uses it in compiled training only (`AlibiAttention.forward`), where
it was measured; the op is a `torch.library` custom op, whose eager dispatch costs host time.

Hub payload: imports only torch and its sibling files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .alibi_attention import ALIBI_BACKENDS, ALL_ATTENTION_FUNCTIONS, KernelCall, choose_kernel
from .alibi_cudnn import alibi_cudnn_attention_packed
from .alibi_mask import AlibiAttentionMask


def _projections(attention: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    return attention.q_proj, attention.k_proj, attention.v_proj


def packed_qkv_applies(attention: nn.Module, hidden_states: torch.Tensor, mask: AlibiAttentionMask) -> bool:
    """Whether `packed_qkv_attention` computes this `AlibiAttention` call (no cache, no attention weights asked):
    plain projections alike in bias, and one of our backends (a function registered from outside gets the
    three), whose kernel choice gives the call to cuDNN."""
    projections = _projections(attention)
    if not all(type(p) is nn.Linear and (p.bias is None) == (projections[0].bias is None) for p in projections):
        return False
    implementation = attention.config._attn_implementation
    if ALL_ATTENTION_FUNCTIONS.get_interface(implementation, None) not in ALIBI_BACKENDS:
        return False
    device = hidden_states.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden_states.dtype
    b, q_len, _ = hidden_states.shape
    query = hidden_states.new_empty(b, attention.num_heads, q_len, attention.head_dim, dtype=dtype)  # only read
    dropout = attention.config.attention_dropout if attention.training else 0.0
    call = KernelCall(implementation, mask, query, q_len, dropout, needs_grad=True)
    return choose_kernel(call) == "cudnn"


def packed_qkv_attention(attention: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """The attention output before `o_proj`, (b, q, hidden), from (b, q, hidden) inputs: q, k and v projected as
    one GEMM on the three weights stacked, and cuDNN's causal ALiBi reading them in place."""
    projections = _projections(attention)
    weight = torch.cat([p.weight for p in projections])  # (3 * hidden, hidden)
    bias = None if projections[0].bias is None else torch.cat([p.bias for p in projections])  # (3 * hidden,)
    qkv = F.linear(hidden_states, weight, bias)  # (b, q, 3 * hidden): each token's q, k, v
    out = alibi_cudnn_attention_packed(qkv, attention.num_heads, attention.scaling)  # (b, h, q, d)
    return out.transpose(1, 2).flatten(2)  # (b, q, h * d), a view: the output is (b, q, h, d) in memory
