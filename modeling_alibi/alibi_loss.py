"""The causal-LM loss and per-token log-probabilities, in bounded memory, for plain and adaptive softmax heads.

Hub payload: imports only torch, the standard library and alibi_adaptive.py.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .alibi_adaptive import LOG_PROB_BYTES, AlibiAdaptiveSoftmax

IGNORE_INDEX = -100


def causal_lm_loss(
    lm_head: nn.Module,
    embeddings: nn.Module,
    hidden_states: torch.Tensor,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None,
    logits: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None,
) -> torch.Tensor:
    """Next-token cross-entropy in nats; reuses full logits (b, q, vocab) when they exist, else scores the
    targets in chunks from the hidden states (b, q, d).

    Targets are `shift_labels` as given, else `labels` shifted by one, as in transformers' ForCausalLMLoss. The
    sum is divided by `num_items_in_batch` when given (the Trainer's gradient accumulation), else by the number of
    targets that count.

    With no target that counts (every label -100) the loss is 0, not 0/0 = NaN: the sum is empty, so it adds
    nothing to the gradient. A warning says so where the count can be read without a device sync (CPU tensors,
    outside torch.compile).
    """
    if shift_labels is None and logits is not None:
        # Position t predicts t + 1; the last predicts nothing. Padding the labels keeps the logits whole (as
        # transformers' ForCausalLMLoss does): a slice of them would be copied, and its gradient zero-filled.
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (b, q)
    elif shift_labels is None:
        targets = labels[:, 1:]  # (b, q - 1)
        hidden_states = hidden_states[:, :-1]
    else:
        targets = shift_labels  # (b, q)
    targets = targets.to(hidden_states.device)
    if logits is not None:
        flat_logits = logits.flatten(0, 1).float()  # (b * q, vocab)
        nll = F.cross_entropy(flat_logits, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    else:
        nll = -target_log_probs(lm_head, embeddings, hidden_states, targets).sum()
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    if isinstance(count, torch.Tensor):
        if count.device.type == "cpu" and not torch.compiler.is_compiling() and int(count) == 0:
            _warn_no_targets()
        count = count.to(nll.device).clamp(min=1)
    elif count == 0:
        _warn_no_targets()
        count = 1
    return nll / count


def _warn_no_targets() -> None:
    warnings.warn(
        "No label counts toward the loss (all are -100, or only the first position is labelled): the loss is 0. "
        "Check the labels, or drop such batches.",
        stacklevel=4,
    )


def target_log_probs(
    lm_head: nn.Module, embeddings: nn.Module, hidden_states: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """log p(targets) for hidden (b, q, d) and targets (b, q) -> (b, q) fp32; 0 where the target is -100.

    Works in row chunks so that no (rows, vocab) block larger than `LOG_PROB_BYTES` exists at once.
    `embeddings` are the adaptive input's, which a tied adaptive softmax reads.
    """
    adaptive = isinstance(lm_head, AlibiAdaptiveSoftmax)
    hidden, flat_targets = hidden_states.flatten(0, 1), targets.flatten()  # (n, d), (n,)
    ignored = flat_targets == IGNORE_INDEX
    flat_targets = flat_targets.masked_fill(ignored, 0)
    width = lm_head.bands[0][1] + len(lm_head.bands) if adaptive else lm_head.out_features
    rows = max(1, LOG_PROB_BYTES // (4 * width))
    chunks = []
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start : start + rows], flat_targets[start : start + rows]  # (rows, d), (rows,)
        if adaptive:
            chunks.append(lm_head.target_log_probs(h, t, embeddings))
        else:
            chunks.append(torch.log_softmax(lm_head(h).float(), dim=-1).gather(-1, t[:, None]).squeeze(-1))
    log_probs = torch.cat(chunks) if chunks else hidden.new_zeros(0, dtype=torch.float32)
    return log_probs.masked_fill(ignored, 0.0).view_as(targets)
