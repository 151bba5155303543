"""fairseq-eval-lm's window rule (shared/spec/fairseq.md §5): which stream positions each window scores, and
which it only reads as context. `modeling_alibi.evaluation` scores a model with it."""

from __future__ import annotations

from collections.abc import Iterator


def eval_lm_windows(
    num_tokens: int, tokens_per_sample: int, context_window: int = 0
) -> Iterator[tuple[int, int, int]]:
    """Yield `(context_start, block_start, end)` stream positions of each fairseq-eval-lm window.

    Block k scores targets S[block_start:end] (B = tokens_per_sample - context_window of them, fewer in
    the last block). Its model input is S_in[context_start:end], where S_in is the stream shifted right
    by one with `</s>` first, and the first `block_start - context_start` (<= context_window) inputs are
    context only (fairseq's LMContextWindowDataset keeps the last `context_window` inputs).
    """
    if context_window < 0:
        raise ValueError(f"context_window={context_window} must be >= 0.")
    if tokens_per_sample <= context_window:
        raise ValueError(
            f"context_window={context_window} must be smaller than tokens_per_sample={tokens_per_sample}: each "
            "window scores tokens_per_sample - context_window tokens (use context_window = L - 1 for sliding)."
        )
    block = tokens_per_sample - context_window
    for block_start in range(0, num_tokens, block):
        yield max(0, block_start - context_window), block_start, min(block_start + block, num_tokens)


__all__ = ["eval_lm_windows"]
