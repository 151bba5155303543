"""ALiBi causal language model (Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022) for Transformers.

The decoder layers and the model classes. What they read per call comes from alibi_mask.py (positions, padding,
slopes: built once per forward), attention runs through alibi_attention.py's backends, the baselines' position
encodings are in alibi_positions.py, adaptive input and softmax in alibi_adaptive.py, the loss in alibi_loss.py,
the MLP (with compiled training's fused fc1 and ReLU) in alibi_linear_relu.py, its fused residual add and LayerNorm in
alibi_norm.py and its stacked q, k and v projection in alibi_packed.py, graph_generate's batch-1 layer in
alibi_fused_decode.py, chunked prefill and generate's mask hook in alibi_generation.py, and transformers' keyword
and cache contract in alibi_kwargs.py.

Hub payload: hub.PAYLOAD lists the files. They import only torch, transformers, the standard library, triton
(inside `try`) and each other, so `save_pretrained` ships them as remote code unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.processing_utils import Unpack
from transformers.utils import logging

from .alibi_adaptive import AlibiAdaptiveInput, AlibiAdaptiveSoftmax
from .alibi_attention import (
    ALIBI_BACKENDS,
    ALL_ATTENTION_FUNCTIONS,
    FLASH_MISSING,
    eager_attention_forward,
    flash_attn_func,
    prepare_block_mask,
    resolve_attn_implementation,
)
from .alibi_fused_decode import fused_decode_applies, fused_decode_layer
from .alibi_generation import AlibiGenerationMixin
from .alibi_kwargs import (
    CACHE_NAME,
    AlibiCausalLMKwargs,
    AlibiModelKwargs,
    check_inputs,
    output_cache,
    reject_unknown,
    take_cache,
)
from .alibi_linear_relu import AlibiMLP
from .alibi_loss import causal_lm_loss, target_log_probs
from .alibi_mask import AlibiAttentionMask, alibi_bias, alibi_slopes, build_attention_mask, tracing
from .alibi_norm import PendingAdd, add_layer_norm, add_layer_norm_applies
from .alibi_ops import compiled_training
from .alibi_packed import packed_qkv_applies, packed_qkv_attention
from .alibi_positions import add_positions, apply_rotary
from .configuration_alibi import AlibiConfig

logger = logging.get_logger(__name__)


class AlibiAttention(nn.Module):
    """Multi-head self-attention; ALiBi and masking come in through `AlibiAttentionMask`."""

    # (weight (3 * hidden, hidden), bias or None): q, k, v stacked by the graph decoder (alibi_decoding) while it runs
    # its step. A batch-1 GEMV's fixed cost sets its time, so one of 3x the rows beats three (step_profile.py).
    fused_qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def __init__(self, config: AlibiConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True  # read by transformers' attention functions
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: AlibiAttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Compiled training of a call cuDNN serves: q, k, v as one GEMM (alibi_packed.py).
        if (cache is None and not output_attentions and compiled_training(hidden_states, PACKED_QKV_DEVICES)
                and packed_qkv_applies(self, hidden_states, attention_mask)):
            return self.o_proj(packed_qkv_attention(self, hidden_states)), None
        out, weights = self.attend(*self._project(hidden_states), attention_mask, rotary, cache, output_attentions)
        return self.o_proj(out), weights

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: AlibiAttentionMask,
               rotary: tuple[torch.Tensor, torch.Tensor] | None = None, cache: Cache | None = None,
               output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of the projected (b, q, hidden) query, key and value: (b, q, hidden) before `o_proj`, weights."""
        b, q_len, _ = query.shape
        heads = (b, q_len, self.num_heads, self.head_dim)
        query, key, value = (x.view(heads).transpose(1, 2) for x in (query, key, value))  # (b, h, q, d)
        if rotary is not None:
            query, key = apply_rotary(query, *rotary), apply_rotary(key, *rotary)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # (b, h, k, d)
            seen = attention_mask.key_positions.shape[1]
            if key.shape[2] > seen:  # a static cache's empty slots, after the keys of an unpadded prompt
                key, value = key[:, :, :seen], value[:, :, :seen]  # (b, h, seen, d) views

        implementation = self.config._attn_implementation
        if output_attentions and implementation != "eager":
            logger.warning_once(f"output_attentions=True is served by eager attention instead of {implementation}.")
            implementation = "eager"
        # Spelled as in transformers' models: `set_attn_implementation` looks for this call in the source.
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        mask = attention_mask
        if attention not in ALIBI_BACKENDS:  # registered from outside: a 4-D float mask carries the bias
            mask = attention_mask.additive().to(query.dtype)  # (b, h or 1, q, k)
        dropout = self.config.attention_dropout if self.training else 0.0
        out, weights = attention(self, query, key, value, mask, scaling=self.scaling, dropout=dropout)  # (b, q, h, d)
        return out.reshape(b, q_len, -1), weights  # (b, q, h * d)

    def _project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query, key, value), each (b, q, hidden): three projections, or one stacked one (`fused_qkv`)."""
        if self.fused_qkv is None:
            return self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        return F.linear(hidden_states, *self.fused_qkv).chunk(3, dim=-1)  # views of (b, q, 3 * hidden)


# Where compiled training runs a pre-norm layer's residual adds and LayerNorms as one node (alibi_norm.py) and q, k,
# v as one GEMM (alibi_packed.py): measured on CUDA. fc1 and ReLU: alibi_linear_relu.FUSED_RELU_DEVICES.
FUSED_NORM_DEVICES = PACKED_QKV_DEVICES = ("cuda",)


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
        hidden_states: torch.Tensor | PendingAdd,
        attention_mask: AlibiAttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        defer_add: bool = False,
    ) -> tuple[torch.Tensor | PendingAdd, torch.Tensor | None]:
        """`hidden_states` may be the previous pre-norm block's `PendingAdd`; with `defer_add` (pre-norm only) this
        block returns its own last add as one (`AlibiModel._defers_adds`)."""
        if fused_decode_applies(self, hidden_states, rotary, cache, output_attentions):  # graph_generate's batch 1
            return fused_decode_layer(self, hidden_states, attention_mask, cache), None
        if isinstance(hidden_states, PendingAdd):
            residual, hidden_states = _add_and_norm(*hidden_states, self.self_attn_layer_norm)
        else:
            residual = hidden_states
            if self.normalize_before:
                hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, weights = self.self_attn(hidden_states, attention_mask, rotary, cache, output_attentions)
        hidden_states = self.dropout(hidden_states)
        if self.normalize_before:
            residual, hidden_states = _add_and_norm(residual, hidden_states, self.final_layer_norm)
        else:
            residual = hidden_states = self.self_attn_layer_norm(residual + hidden_states)

        delta = self.dropout(self.mlp(hidden_states))
        if defer_add:
            return PendingAdd(residual, delta), weights
        hidden_states = residual + delta
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states, weights


def _add_and_norm(residual: torch.Tensor, delta: torch.Tensor, norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + delta, norm of it). In compiled training, one node whose backward takes one pass over the rows
    and adds the residual stream's gradient in it (alibi_norm.py)."""
    if compiled_training(residual, FUSED_NORM_DEVICES) and add_layer_norm_applies(residual, delta, norm):
        return add_layer_norm(residual, delta, norm)
    total = residual + delta
    return total, norm(total)


class AlibiPreTrainedModel(PreTrainedModel):
    config_class = AlibiConfig
    config: AlibiConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AlibiDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    # Attention goes through ALL_ATTENTION_FUNCTIONS: functions registered with transformers' AttentionInterface
    # run too, on the additive ALiBi mask.
    _supports_attention_backend = True
    # Compiled static-cache decoding runs as one graph: nothing reads device values while traced.
    _can_compile_fullgraph = True

    def _check_and_adjust_attn_implementation(self, attn_implementation: str | None, is_init_check: bool = False,
                                              **kwargs: Any) -> str:
        # Our own check first: transformers would otherwise look for a hub kernel, which has no ALiBi.
        if attn_implementation == "flash_attention_2" and flash_attn_func is None:
            raise ImportError(FLASH_MISSING)
        return super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check, **kwargs)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """Resolve `attn_implementation`; None picks the fastest correct backend for this machine."""
        return resolve_attn_implementation(requested_attention)


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
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Unpack[AlibiModelKwargs],
    ) -> BaseModelOutputWithPast | tuple:
        """Run the decoder.

        Args:
            input_ids: Token ids (b, q). Pass exactly one of `input_ids` and `inputs_embeds`.
            attention_mask: 0/1 mask (b, past + q) over every token seen so far, cached ones included, even those
                a sliding-window cache has dropped. ALiBi distances count only positions where it is 1, so left
                padding changes nothing. With a `StaticCache` it may be padded with zeros to the cache length.
            position_ids: (b, q) or (1, q). Without `attention_mask` and cached tokens, positions that restart mark
                packed documents (padding-free training, as `DataCollatorWithFlattening` makes): each token then
                attends within its document only. The baseline encodings (`sinusoidal`, `rotary`, `learned`)
                read them as positions; ALiBi needs only distances, which the mask and the cache give.
            cache: A `Cache` (transformers' name since 5.24; `past_key_values=` is taken too). When `use_cache`
                and none is given, `DynamicCache(config=config)` is made: with `config.attention_window` W its
                layers keep only the last W - 1 keys.
            inputs_embeds: Unscaled token embeddings (b, q, input dim), as `embed_tokens` returns them.

        Memory: activations are linear in q, and attention (sdpa, flex, flash) linear in the key count; eager
        is quadratic. For prompts of any length in bounded memory, feed them in chunks with the cache
        ([`AlibiForCausalLM.prefill`] or `generate(..., prefill_chunk_size=n)`), with `attention_window` set
        for a cache of constant size too.
        """
        cache = take_cache(cache, kwargs)
        reject_unknown(kwargs, AlibiModelKwargs, type(self).__name__)
        check_inputs(input_ids, inputs_embeds, self.config.vocab_size)
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        cache = self._cache_for_call(cache, use_cache)

        hidden_states = self._embed(input_ids, inputs_embeds)  # (b, q, d_model)
        # The one place this call's positions, padding and bias are built; every layer and backend reads `mask`.
        mask = build_attention_mask(config, attention_mask, cache, hidden_states, position_ids)
        prepare_block_mask(mask, config._attn_implementation, hidden_states, config.num_attention_heads, self.layers)
        positions = mask.query_positions if position_ids is None else position_ids.to(hidden_states.device)
        hidden_states, rotary = add_positions(
            hidden_states, positions, config, self.embed_positions, check=not tracing(hidden_states.device)
        )
        hidden_states = self.dropout(hidden_states)
        output = self._run_layers(hidden_states, mask, rotary, cache, output_attentions, output_hidden_states)
        return_dict = config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()

    def _run_layers(self, hidden_states: torch.Tensor, mask: AlibiAttentionMask,
                    rotary: tuple[torch.Tensor, torch.Tensor] | None, cache: Cache | None, output_attentions: bool,
                    output_hidden_states: bool) -> BaseModelOutputWithPast:
        all_hidden_states, all_attentions = [], []
        defer_add = self._defers_adds(hidden_states, output_hidden_states)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states, weights = layer(
                hidden_states, mask, rotary, cache, output_attentions, defer_add=defer_add and i < last)
            if output_attentions:
                all_attentions.append(weights)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)
        if self.project_out is not None:
            hidden_states = self.project_out(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None, **{CACHE_NAME: cache},
        )

    def _defers_adds(self, hidden_states: torch.Tensor, output_hidden_states: bool) -> bool:
        """Whether pre-norm blocks but the last leave their last residual add to the next block's first LayerNorm
        (`PendingAdd`): in compiled training where alibi_norm's node serves that norm, so that it is a node too (why
        not the last block: alibi_norm.py). On an H200 that took 0.3 ms off a 24.2 ms step (docs/benchmarks.md,
        twenty-first and twenty-third sessions). Not where the hidden states are returned or recomputed (gradient
        checkpointing), which need the sums themselves."""
        first = self.layers[0] if len(self.layers) else None
        return (
            first is not None
            and self.config.normalize_before
            and not output_hidden_states
            and not (self.gradient_checkpointing and self.training)
            and compiled_training(hidden_states, FUSED_NORM_DEVICES)
            and add_layer_norm_applies(hidden_states, hidden_states, first.self_attn_layer_norm)
        )

    def _cache_for_call(self, cache: Cache | None, use_cache: bool | None) -> Cache | None:
        """The cache this call reads and fills, or None."""
        # Training needs no cache: filling one copies every layer's keys and values.
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation would append to the cache a second time
        if not use_cache:
            return None
        return DynamicCache(config=self.config) if cache is None else cache

    def _embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        hidden_states = inputs_embeds * self.embed_scale  # fairseq scales before any input projection
        if self.project_in is not None:
            hidden_states = self.project_in(hidden_states)
        return hidden_states  # (b, q, d_model)


class AlibiForCausalLM(AlibiPreTrainedModel, AlibiGenerationMixin, GenerationMixin):
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
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[AlibiCausalLMKwargs],
    ) -> CausalLMOutputWithPast | tuple:
        """Language-model forward pass.

        Args:
            labels: Targets (b, q) aligned with `input_ids`; the model shifts them (position t predicts t + 1) and
                ignores -100. The loss is the mean negative log-likelihood in nats over the targets that count; with
                none that counts (all -100) it is 0, with a warning where that is known without a device sync.
            logits_to_keep: 0 keeps every position; an int n keeps the last n; a 1-D tensor keeps those indices.
                With an adaptive softmax the returned `logits` are full-vocabulary log-probabilities, and when
                a loss is computed with `logits_to_keep=0` they are not computed at all (None): the loss never
                builds a (q, vocab) tensor.
            num_items_in_batch: (keyword, from the Trainer) the loss is the summed negative log-likelihood divided
                by it, so gradient accumulation weighs every target once, as transformers' own loss does.
            shift_labels: (keyword, from the Trainer under context parallelism) targets already aligned with the
                positions, used instead of shifting `labels`.
            skip_logits: (keyword) return the loss and no logits (None). With a plain softmax head and gradients
                enabled, the head's GEMM, the loss and its gradient then run as one `linear_cross_entropy`, which
                never keeps the (b, q, vocab) logits: what `alibi-lm train` uses. Needs labels and every position.
            Other arguments are those of [`AlibiModel.forward`].
        """
        cache = take_cache(cache, kwargs)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        skip_logits = kwargs.pop("skip_logits", False)
        reject_unknown(kwargs, AlibiCausalLMKwargs, type(self).__name__)
        wants_loss = labels is not None or shift_labels is not None
        if skip_logits and not (wants_loss and isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError(
                "skip_logits=True returns the loss alone: pass labels (or shift_labels) and leave logits_to_keep at 0."
            )
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        hidden_states = outputs.last_hidden_state  # (b, q, d)
        logits, full = (None, True) if skip_logits else self._logits(hidden_states, logits_to_keep, wants_loss)
        loss = None
        if wants_loss:
            embeddings = self.model.embed_tokens
            full_logits = logits if full and not self.is_adaptive else None
            loss = causal_lm_loss(
                self.lm_head, embeddings, hidden_states, labels, shift_labels, full_logits, num_items_in_batch,
                fuse_head=skip_logits,
            )
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **{CACHE_NAME: output_cache(outputs)},
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()

    def _logits(
        self, hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor, wants_loss: bool
    ) -> tuple[torch.Tensor | None, bool]:
        """The logits of the kept positions, and whether every position was kept.

        An adaptive softmax returns full-vocabulary log-probabilities, and none at all when only the loss over
        every position is wanted: the loss then scores its targets in chunks instead.
        """
        keeps_all = isinstance(logits_to_keep, int) and logits_to_keep == 0
        if isinstance(logits_to_keep, int):
            kept = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states  # (b, n, d)
        else:
            kept = hidden_states[:, logits_to_keep]  # (b, n, d)
        if not self.is_adaptive:
            return self.lm_head(kept), keeps_all
        if wants_loss and keeps_all:
            return None, keeps_all
        return self.lm_head.log_probs(kept, self.model.embed_tokens), keeps_all

    def token_log_probs(
        self, input_ids: torch.LongTensor, target_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-token log p(target_ids[:, t] | input_ids[:, :t + 1]) as (b, q) fp32, with no shift; -100 gives 0.

        This is what corpus perplexity needs: it never builds full-vocabulary logits for all positions.
        """
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden_states = outputs.last_hidden_state  # (b, q, d)
        targets = target_ids.to(hidden_states.device)
        return target_log_probs(self.lm_head, self.model.embed_tokens, hidden_states, targets)


__all__ = [
    "CACHE_NAME", "AlibiAttentionMask", "AlibiForCausalLM", "AlibiModel", "AlibiPreTrainedModel", "alibi_bias",
    "alibi_slopes", "output_cache",
]
