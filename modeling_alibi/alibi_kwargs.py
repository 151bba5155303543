"""The model's side of transformers' calling contract: the KV cache's name across releases, and the keywords
`forward` takes beyond its named arguments (typed, and never swallowed).

Hub payload: imports only torch, transformers and the standard library.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from typing import Any, TypedDict

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast

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
    skip_logits: bool  # the loss alone (logits None), the head's GEMM fused into it (as Liger-Kernel's keyword)


def reject_unknown(kwargs: dict, allowed: type, owner: str) -> None:
    """Raise on keywords the model does not understand, instead of swallowing them."""
    unknown = set(kwargs) - (allowed.__required_keys__ | allowed.__optional_keys__)
    if unknown:
        raise TypeError(
            f"{owner}.forward() got unexpected keyword arguments {sorted(unknown)}. It takes its named arguments "
            f"and {sorted(allowed.__optional_keys__)}."
        )


def take_cache(cache: Cache | None, kwargs: dict) -> Cache | None:
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


def check_inputs(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, vocab_size: int) -> None:
    """Cheap checks of the token inputs, each a ValueError with the fix: shapes and dtypes always; the ids' range
    only for CPU tensors outside torch.compile, where reading them costs no device sync. The attention mask is
    checked where it is read, in alibi_mask.build_attention_mask."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
    if inputs_embeds is not None and inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must be (batch, length, width), got shape {tuple(inputs_embeds.shape)}.")
    values = not torch.compiler.is_compiling()
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be 2-D (batch, length), got shape {tuple(input_ids.shape)}; for one sequence pass "
                "input_ids[None] (or tokenizer(..., return_tensors='pt'))."
            )
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}; use .long().")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids is empty (length 0): pass at least one token, e.g. the BOS token.")
        if values and input_ids.device.type == "cpu" and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
            raise ValueError(
                f"input_ids must lie in [0, vocab_size={vocab_size}), got values in [{int(input_ids.min())}, "
                f"{int(input_ids.max())}]; encode with this model's tokenizer."
            )


def output_cache(outputs: Any) -> Cache | None:
    """The cache a forward returned, read under the installed transformers' name (the old one warns from 5.24 on)."""
    return getattr(outputs, CACHE_NAME)
