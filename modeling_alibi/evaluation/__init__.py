"""Evaluation tooling: corpus perplexity with fairseq-eval-lm semantics, extrapolation reports (perplexity against
evaluation length) and the `corpus_perplexity` metric for `evaluate.load(CORPUS_PERPLEXITY_METRIC_PATH)`."""

from .extrapolation import (
    ExtrapolationPoint,
    evaluate_lengths,
    extrapolate,
    markdown_table,
    plot,
    relative_change,
    write_report,
)
from .perplexity import (
    CORPUS_PERPLEXITY_METRIC_PATH,
    TEXT_MODES,
    PerplexityResult,
    encode_text,
    evaluate_perplexity,
    format_result_table,
    score_tokens,
)

__all__ = [
    "CORPUS_PERPLEXITY_METRIC_PATH",
    "TEXT_MODES",
    "ExtrapolationPoint",
    "PerplexityResult",
    "encode_text",
    "evaluate_lengths",
    "evaluate_perplexity",
    "extrapolate",
    "format_result_table",
    "markdown_table",
    "plot",
    "relative_change",
    "score_tokens",
    "write_report",
]
