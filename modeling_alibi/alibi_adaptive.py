"""Adaptive input and adaptive softmax (Baevski & Auli, 2019), laid out as fairseq's transformer_lm_wiki103.

Hub payload: imports only torch, the standard library and configuration_alibi.py.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_alibi import AlibiConfig

# Rows of log-probabilities computed at once when scoring targets: bounds the (rows, vocab) fp32 block.
LOG_PROB_BYTES = 256 * 2**20


def _band_edges(cutoffs: list[int], vocab_size: int) -> list[tuple[int, int]]:
    edges = [0, *cutoffs, vocab_size]
    return list(pairwise(edges))


class AlibiAdaptiveInput(nn.Module):
    """Frequency bands of shrinking width, each projected to the model width. Band b has width dim // factor**b."""

    def __init__(self, config: AlibiConfig):
        super().__init__()
        self.bands = _band_edges(config.adaptive_input_cutoffs, config.vocab_size)
        widths = [int(config.input_dim // config.adaptive_input_factor**b) for b in range(len(self.bands))]
        self.embeddings = nn.ModuleList(
            nn.Embedding(hi - lo, width, padding_idx=config.pad_token_id if b == 0 else None)
            for b, ((lo, hi), width) in enumerate(zip(self.bands, widths, strict=True))
        )
        self.projections = nn.ModuleList(nn.Linear(width, config.hidden_size, bias=False) for width in widths)
        self.embedding_dim = config.hidden_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.projections[0].weight.new_zeros(*input_ids.shape, self.embedding_dim)  # (b, q, d)
        for (lo, hi), embedding, projection in zip(self.bands, self.embeddings, self.projections, strict=True):
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
            bands = zip(tails, widths, strict=True)
            self.tails = nn.ModuleList(nn.Linear(w, hi - lo, bias=False) for (lo, hi), w in bands)
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



__all__ = ["AlibiAdaptiveInput", "AlibiAdaptiveSoftmax", "LOG_PROB_BYTES"]
