"""The causal-LM loss and per-token log-probabilities, in bounded memory, for plain and adaptive softmax heads;
and the training loss with the head fused into it (`linear_cross_entropy`).

Hub payload: imports only torch, the standard library, alibi_adaptive.py, alibi_ops.py and (inside `try`)
alibi_triton_loss.py.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .alibi_adaptive import LOG_PROB_BYTES, AlibiAdaptiveSoftmax
from .alibi_ops import IGNORE_INDEX, autocast_inputs

try:  # a Triton kernel for the loss rows on CUDA; plain ops where triton is missing
    from .alibi_triton_loss import cross_entropy_rows, rows_supported
except ImportError:
    cross_entropy_rows = rows_supported = None

# Devices where linear_cross_entropy's loss rows run as alibi_triton_loss's kernel (one read of the logits)
# instead of plain ops; () gives plain ops everywhere, as the benchmarks' comparison rows do.
ROWS_KERNEL_DEVICES = ("cuda",)


def causal_lm_loss(
    lm_head: nn.Module,
    embeddings: nn.Module,
    hidden_states: torch.Tensor,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None,
    logits: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None,
    fuse_head: bool = False,
) -> torch.Tensor:
    """Next-token cross-entropy in nats; reuses full logits (b, q, vocab) when they exist, else scores the
    targets from the hidden states (b, q, d): in chunks, or with `fuse_head` and gradients wanted through a plain
    head, as one `linear_cross_entropy` (the head's GEMM, the loss and its gradient in the forward).

    Targets are `shift_labels` as given, else `labels` shifted by one, as in transformers' ForCausalLMLoss. The
    sum is divided by `num_items_in_batch` when given (the Trainer's gradient accumulation), else by the number of
    targets that count.

    With no target that counts (every label -100) the loss is 0, not 0/0 = NaN: the sum is empty, so it adds
    nothing to the gradient. A warning says so where the count can be read without a device sync (CPU tensors,
    outside torch.compile).
    """
    fused = (
        fuse_head and logits is None and not isinstance(lm_head, AlibiAdaptiveSoftmax) and torch.is_grad_enabled()
    )
    if shift_labels is None and (logits is not None or fused):
        # Position t predicts t + 1; the last predicts nothing. Padding the labels keeps the logits whole (as
        # transformers' ForCausalLMLoss does): a slice of them would be copied, and its gradient zero-filled.
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (b, q)
    elif shift_labels is None:
        targets = labels[:, 1:]  # (b, q - 1)
        hidden_states = hidden_states[:, :-1]
    else:
        targets = shift_labels  # (b, q)
    targets = targets.to(hidden_states.device)
    count = _target_count(targets, num_items_in_batch, hidden_states.device)
    if fused:
        return linear_cross_entropy(hidden_states.flatten(0, 1), lm_head.weight, targets.flatten(), count)
    if logits is not None:
        flat_logits = logits.flatten(0, 1)  # (b * q, vocab), in fp32 at least (fp64 stays fp64)
        flat_logits = flat_logits.to(torch.promote_types(flat_logits.dtype, torch.float32))
        nll = F.cross_entropy(flat_logits, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    else:
        nll = -target_log_probs(lm_head, embeddings, hidden_states, targets).sum()
    return nll / count


def _target_count(
    targets: torch.Tensor, num_items_in_batch: int | torch.Tensor | None, device: torch.device
) -> int | torch.Tensor:
    """What the summed loss is divided by: `num_items_in_batch`, else the targets that count; at least 1."""
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    if isinstance(count, torch.Tensor):
        if count.device.type == "cpu" and not torch.compiler.is_compiling() and int(count) == 0:
            _warn_no_targets()
        count = count.to(device).clamp(min=1)
    elif count == 0:
        _warn_no_targets()
        count = 1
    return count


def _warn_no_targets() -> None:
    warnings.warn(
        "No label counts toward the loss (all are -100, or only the first position is labelled): the loss is 0. "
        "Check the labels, or drop such batches.",
        stacklevel=5,
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


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over counted rows of cross_entropy(hidden @ weight.T) / count, whose forward also computes the gradients.

    The loss is the last op of a training step, so its gradient with respect to the logits, (softmax - one-hot) /
    count, is known in the forward. Computing it there lets the compiled forward read the (rows, vocab) logits
    once, in one kernel with the log-sum-exp, instead of once for the loss and again in the backward. The two
    GEMMs that take the gradient back through the head run in the forward too. The backward only scales their
    (rows, d) and (vocab, d) results by the incoming gradient, which is linear in it. The logits are never kept.
    On CUDA the loss rows are one Triton kernel (alibi_triton_loss.py: one read of the logits, one exponential
    each); elsewhere plain ops. Liger-Kernel's fused linear cross-entropy works the same way.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, count: torch.Tensor
    ) -> torch.Tensor:
        logits = hidden @ weight.t()  # (n, vocab) in hidden's dtype, as F.linear gives it
        if logits.device.type in ROWS_KERNEL_DEVICES and rows_supported is not None and rows_supported(logits):
            nll_rows, grad = cross_entropy_rows(logits, targets, count)  # (n,) fp32, (n, vocab)
            nll = nll_rows.sum()
        else:
            nll, grad = _loss_and_grad(logits, targets, count)
        del logits
        grad_hidden = grad @ weight if hidden.requires_grad else None  # (n, d)
        grad_weight = grad.t() @ hidden if weight.requires_grad else None  # (vocab, d)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return nll / count

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        scaled = [None if g is None else g * grad_loss for g in (grad_hidden, grad_weight)]
        return scaled[0], scaled[1], None, None


def _loss_and_grad(
    logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed nll (fp32 at least) and d(nll / count) / d logits (logits' dtype) of (n, vocab) logits, plain ops."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))  # the loss in fp32 (fp64 stays fp64)
    lse = torch.logsumexp(x, dim=-1, keepdim=True)  # (n, 1)
    counted = targets != IGNORE_INDEX  # (n,)
    safe = targets.masked_fill(~counted, 0)  # (n,)
    nll = (lse.squeeze(-1) - x.gather(-1, safe[:, None]).squeeze(-1)).masked_fill(~counted, 0.0).sum()
    one_hot = safe[:, None] == torch.arange(x.shape[-1], device=x.device)  # (n, vocab)
    probs = torch.exp(x - lse)  # (n, vocab)
    weights = counted[:, None].to(x.dtype) / count  # (n, 1): 1 / count, 0 for ignored rows
    return nll, ((probs - one_hot.to(x.dtype)) * weights).to(logits.dtype)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, count: int | torch.Tensor
) -> torch.Tensor:
    """Summed cross-entropy of `hidden` (n, d) @ `weight` (vocab, d).T against `targets` (n,; -100 ignored),
    divided by `count`, with the gradients computed in the forward (`_LinearCrossEntropy`).

    Under autocast the GEMMs run in autocast's dtype, as `F.linear` would (an autograd.Function's inputs are not
    cast for it).
    """
    hidden, weight = autocast_inputs(hidden, weight)
    count = torch.as_tensor(count, device=hidden.device)
    return _LinearCrossEntropy.apply(hidden, weight, targets, count)
