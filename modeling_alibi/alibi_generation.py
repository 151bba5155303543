"""Generation hooks of the causal LM: chunked prefill in bounded memory, and the 2-D mask `generate` keeps.

Hub payload: imports only torch, transformers, the standard library and its sibling files.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache
from transformers.processing_utils import Unpack

from .alibi_decoding import graph_generate_for, greedy_generate_call
from .alibi_kwargs import AlibiModelKwargs, reject_unknown, take_cache
from .configuration_alibi import AlibiConfig


class AlibiGenerationMixin:
    """Mixed into AlibiForCausalLM before transformers' GenerationMixin."""

    def generate(self, inputs: torch.Tensor | None = None, generation_config: Any = None, *args: Any,
                 **kwargs: Any) -> Any:
        """transformers' `generate`, with plain greedy calls on CUDA decoded by `graph_generate`.

        A call with nothing but lengths, token ids and a mask (greedy, one beam, no processors, streamer, scores or
        cache given), on a model in eval mode, fills a static cache and replays one compiled CUDA graph per token:
        the same tokens as transformers' loop, several times faster. The first call for a batch size and cache
        size compiles the step (seconds). Anything else, or `cache_implementation=...`, runs transformers' loop.
        """
        call = None if args else greedy_generate_call(self, inputs, generation_config, kwargs)
        if call is None:
            return super().generate(inputs, generation_config, *args, **kwargs)
        return graph_generate_for(self, call)

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
        cache = take_cache(cache, kwargs)
        reject_unknown(kwargs, AlibiModelKwargs, "prefill")
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
        cache = take_cache(cache, kwargs)
        if attention_mask is None or attention_mask.dim() != 2 or cache is None:
            return attention_mask
        kv_length, kv_offset = cache.get_mask_sizes(inputs_embeds.shape[1], 0)
        missing = kv_offset + kv_length - attention_mask.shape[1]
        return F.pad(attention_mask, (0, missing)) if missing > 0 else attention_mask
