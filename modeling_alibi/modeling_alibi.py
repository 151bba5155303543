"""ALiBi causal language model (Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022) for Transformers.

The decoder layers and the model classes. ALiBi itself, the mask object and the attention backends live in
alibi_attention.py; adaptive input and softmax in alibi_adaptive.py.

Hub payload: configuration_alibi.py, alibi_attention.py, alibi_adaptive.py, this file and the kernel files
alibi_triton.py and alibi_triton_decode.py. They import only torch, transformers, the standard library, triton
(inside `try`) and each other, so `save_pretrained` ships them as remote code unchanged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.processing_utils import Unpack
from transformers.utils import logging

from .alibi_adaptive import LOG_PROB_BYTES, AlibiAdaptiveInput, AlibiAdaptiveSoftmax
from .alibi_attention import (
    ALIBI_BACKENDS,
    ALL_ATTENTION_FUNCTIONS,
    NO_BIAS_BACKENDS,
    AlibiAttentionMask,
    alibi_bias,
    alibi_slopes,
    build_attention_mask,
    default_attn_implementation,
    eager_attention_forward,
    flash_attn_func,
    flex_attention,
    prepare_block_mask,
    tracing,
)
from .configuration_alibi import AlibiConfig

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the KV-cache argument and output field from `past_key_values` to `cache`. The output
# classes of the installed transformers say which name it uses; the model returns the cache under that name and
# takes it under either.
CACHE_NAME = "cache" if "cache" in {field.name for field in fields(BaseModelOutputWithPast)} else "past_key_values"


class AlibiModelKwargs(TypedDict, total=False):
    """Keywords `AlibiModel.forward` takes beyond its named arguments. Any other name raises a TypeError."""

    past_key_values: Cache | None  # the cache under its name before transformers 5.24 (`cache` now)


class AlibiCausalLMKwargs(AlibiModelKwargs, total=False):
    """Keywords `AlibiForCausalLM.forward` takes beyond its named arguments: the Trainer's loss keywords."""

    num_items_in_batch: torch.Tensor | int | None  # the loss is summed over the batch and divided by it
    shift_labels: torch.Tensor | None  # targets already aligned with positions (context parallelism): no shift


def _reject_unknown(kwargs: dict, allowed: type, owner: str) -> None:
    """Raise on keywords the model does not understand, instead of swallowing them."""
    unknown = set(kwargs) - (allowed.__required_keys__ | allowed.__optional_keys__)
    if unknown:
        raise TypeError(
            f"{owner}.forward() got unexpected keyword arguments {sorted(unknown)}. It takes its named arguments "
            f"and {sorted(allowed.__optional_keys__)}."
        )


def _take_cache(cache: Cache | None, kwargs: dict) -> Cache | None:
    """The cache under either name: `cache` (transformers 5.24) or `past_key_values` (before, and in old code).

    Where transformers itself says `cache`, the old name warns as transformers' own models do.
    """
    if "past_key_values" not in kwargs:
        return cache
    old_name = kwargs.pop("past_key_values")
    if cache is not None and old_name is not None:
        raise ValueError("Pass the KV cache once, as `cache` or as `past_key_values`, not both.")
    if CACHE_NAME == "cache" and not torch.compiler.is_compiling():
        warnings.warn(
            "`past_key_values` is deprecated since transformers 5.24 renamed it: pass the KV cache as `cache`.",
            FutureWarning,
            stacklevel=3,
        )
    return cache if old_name is None else old_name


def output_cache(outputs: Any) -> Cache | None:
    """The cache a forward returned, read under the installed transformers' name (the old one warns from 5.24 on)."""
    return getattr(outputs, CACHE_NAME)


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
# Decoder
# ----------------------------------------------------------------------------------------------------------


class AlibiAttention(nn.Module):
    """Multi-head self-attention; ALiBi and masking come in through `AlibiAttentionMask`."""

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
        b, q_len, _ = hidden_states.shape
        heads = (b, q_len, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(heads).transpose(1, 2)  # (b, h, q, d)
        key = self.k_proj(hidden_states).view(heads).transpose(1, 2)  # (b, h, q, d)
        value = self.v_proj(hidden_states).view(heads).transpose(1, 2)  # (b, h, q, d)
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
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        mask = attention_mask
        if attention_interface not in ALIBI_BACKENDS:  # registered from outside: a 4-D float mask carries the bias
            mask = attention_mask.additive().to(query.dtype)  # (b, h or 1, q, k)
        dropout = self.config.attention_dropout if self.training else 0.0
        out, weights = attention_interface(self, query, key, value, mask, scaling=self.scaling, dropout=dropout)
        out = out.reshape(b, q_len, -1)  # (b, q, h * d)
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
        attention_mask: AlibiAttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, weights = self.self_attn(hidden_states, attention_mask, rotary, cache, output_attentions)
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
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    # Attention goes through ALL_ATTENTION_FUNCTIONS: functions registered with transformers' AttentionInterface
    # run too, on the additive ALiBi mask.
    _supports_attention_backend = True
    # Compiled static-cache decoding runs as one graph: nothing reads device values while traced.
    _can_compile_fullgraph = True

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
        if requested_attention in NO_BIAS_BACKENDS:
            raise ValueError(
                f"attn_implementation={requested_attention!r} cannot apply ALiBi ({NO_BIAS_BACKENDS[requested_attention]}). "
                'Use "flash_attention_2", "flex_attention", "sdpa" or "eager".'
            )
        if requested_attention != "eager" and requested_attention not in ALL_ATTENTION_FUNCTIONS:
            raise ValueError(
                f'Specified `attn_implementation="{requested_attention}"` is not supported. Choose "eager", "sdpa", '
                '"flex_attention" or "flash_attention_2", or register a function with AttentionInterface.register.'
            )
        if requested_attention == "flex_attention" and (flex_attention is None or not torch.cuda.is_available()):
            raise ValueError('attn_implementation="flex_attention" needs CUDA; use "sdpa" on this machine.')
        return requested_attention  # flash-attn's presence is checked first, in _check_and_adjust_attn_implementation


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
        cache = _take_cache(cache, kwargs)
        _reject_unknown(kwargs, AlibiModelKwargs, type(self).__name__)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        cache = self._cache_for_call(cache, use_cache)

        hidden_states = self._embed(input_ids, inputs_embeds)
        mask = build_attention_mask(config, attention_mask, cache, hidden_states, position_ids)
        prepare_block_mask(mask, config._attn_implementation, hidden_states, config.num_attention_heads, self.layers)
        positions = mask.query_positions if position_ids is None else position_ids.to(hidden_states.device)
        hidden_states, rotary = self._add_positions(hidden_states, positions)
        hidden_states = self.dropout(hidden_states)

        all_hidden_states, all_attentions = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states, weights = layer(hidden_states, mask, rotary, cache, output_attentions)
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
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            **{CACHE_NAME: cache},
        )
        return output if return_dict else output.to_tuple()

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

    def _add_positions(
        self, hidden_states: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Apply the baseline position encodings; ALiBi adds nothing here (it lives in the attention scores)."""
        encoding, rotary = self.config.position_encoding, None
        positions = positions.clamp(min=0)  # padding has position -1; its value is masked anyway
        if encoding == "learned":
            # The check reads a device value: skipped inside compiled graphs and CUDA-graph capture.
            if not tracing(positions.device) and int(positions.max()) >= self.config.max_position_embeddings:
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
                ignores -100. The loss is the mean negative log-likelihood in nats over the targets that count.
            logits_to_keep: 0 keeps every position; an int n keeps the last n; a 1-D tensor keeps those indices.
                With an adaptive softmax the returned `logits` are full-vocabulary log-probabilities, and when
                a loss is computed with `logits_to_keep=0` they are not computed at all (None): the loss never
                builds a (q, vocab) tensor.
            num_items_in_batch: (keyword, from the Trainer) the loss is the summed negative log-likelihood divided
                by it, so gradient accumulation weighs every target once, as transformers' own loss does.
            shift_labels: (keyword, from the Trainer under context parallelism) targets already aligned with the
                positions, used instead of shifting `labels`.
            Other arguments are those of [`AlibiModel.forward`].
        """
        cache = _take_cache(cache, kwargs)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        _reject_unknown(kwargs, AlibiCausalLMKwargs, type(self).__name__)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            kept = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        else:
            kept = hidden_states[:, logits_to_keep]

        wants_loss = labels is not None or shift_labels is not None
        logits = loss = None
        if not self.is_adaptive:
            logits = self.lm_head(kept)
        elif not wants_loss or not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            logits = self.lm_head.log_probs(kept, self.model.embed_tokens)
        if wants_loss:
            full_logits = logits if kept is hidden_states and not self.is_adaptive else None
            loss = self._loss(hidden_states, labels, shift_labels, full_logits, num_items_in_batch)

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_NAME: output_cache(outputs)},
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        chunk_size: int = 512,
        cache: Cache | None = None,
        **kwargs: Unpack[AlibiModelKwargs],
    ) -> tuple[torch.Tensor, Cache]:
        """Feed a prompt through the model `chunk_size` tokens at a time, filling the cache.

        Peak activation memory depends on `chunk_size`, not on the prompt length; with `config.attention_window`
        the cache stays bounded too. The result equals one forward over the whole prompt. Inference only (no
        gradients). `generate` does the same when given `prefill_chunk_size=n`.

        Args:
            input_ids: The new tokens (b, q).
            attention_mask: 0/1 mask (b, cached + q) over the cached and the new tokens; None means no padding.
            chunk_size: Tokens per forward pass.
            cache: A cache to extend (`past_key_values=` is taken too); None starts `DynamicCache(config=config)`.

        Returns:
            The logits of the last position (b, vocab) and the filled cache.
        """
        cache = _take_cache(cache, kwargs)
        _reject_unknown(kwargs, AlibiModelKwargs, "prefill")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size={chunk_size} must be a positive number of tokens per forward pass.")
        if cache is None:
            cache = DynamicCache(config=self.config)
        q_len = input_ids.shape[1]
        # Without a mask the chunks go in unmasked: positions are indices, the fast path of every backend.
        past = int(cache.get_seq_length()) if attention_mask is not None else 0
        logits = None
        for start in range(0, q_len, chunk_size):
            end = min(start + chunk_size, q_len)
            logits = self(
                input_ids[:, start:end],
                attention_mask=None if attention_mask is None else attention_mask[:, : past + end],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits
        if logits is None:
            raise ValueError("prefill needs at least one new token in input_ids.")
        return logits[:, -1], cache

    def create_masks_for_generate(
        self,
        config: AlibiConfig,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | None:
        """Keep generate()'s 2-D mask for compileable (static) caches instead of its default 4-D causal mask.

        ALiBi positions come from the cumulative 2-D mask, so a 4-D mask would lose them. The mask is padded with
        zeros to the span of keys the cache returns, which keeps its shape fixed from step to step (one compiled
        graph) for a `StaticCache`. generate() passes the cache as `cache` (transformers 5.24) or
        `past_key_values` (before); its other keywords (position_ids, ...) describe the same tokens.
        """
        cache = _take_cache(cache, kwargs)
        if attention_mask is None or attention_mask.dim() != 2 or cache is None:
            return attention_mask
        kv_length, kv_offset = cache.get_mask_sizes(inputs_embeds.shape[1], 0)
        missing = kv_offset + kv_length - attention_mask.shape[1]
        return F.pad(attention_mask, (0, missing)) if missing > 0 else attention_mask

    def _loss(
        self,
        hidden_states: torch.Tensor,
        labels: torch.Tensor | None,
        shift_labels: torch.Tensor | None,
        logits: torch.Tensor | None,
        num_items_in_batch: int | torch.Tensor | None,
    ) -> torch.Tensor:
        """Next-token cross-entropy; reuses full logits when they exist, else scores targets in chunks.

        Targets are `shift_labels` as given, else `labels` shifted by one, as in transformers' ForCausalLMLoss.
        """
        if shift_labels is None:
            targets = labels[:, 1:]  # (b, q - 1): position t predicts t + 1
            hidden_states = hidden_states[:, :-1]
            logits = logits[:, :-1] if logits is not None else None
        else:
            targets = shift_labels  # (b, q)
        targets = targets.to(hidden_states.device)
        if logits is not None:
            nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
        else:
            nll = -self._target_log_probs(hidden_states, targets).sum()
        count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
        if isinstance(count, torch.Tensor):
            count = count.to(nll.device)
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
