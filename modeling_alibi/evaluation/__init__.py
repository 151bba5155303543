"""Evaluation tooling: corpus perplexity with fairseq-eval-lm semantics, extrapolation reports (perplexity against
evaluation length) and the `corpus_perplexity` metric for `evaluate.load(CORPUS_PERPLEXITY_METRIC_PATH)`."""

from .extrapolation import ExtrapolationPoint, evaluate_lengths, markdown_table, plot, write_report
from .perplexity import (
    CORPUS_PERPLEXITY_METRIC_PATH,
    PerplexityResult,
    evaluate_perplexity,
    format_result_table,
    score_tokens,
)

__all__ = [
    "CORPUS_PERPLEXITY_METRIC_PATH",
    "ExtrapolationPoint",
    "PerplexityResult",
    "evaluate_lengths",
    "evaluate_perplexity",
    "format_result_table",
    "markdown_table",
    "plot",
    "score_tokens",
    "write_report",
]
