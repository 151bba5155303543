"""`evaluate` metric: corpus perplexity with fairseq-eval-lm semantics (Press et al., "Train Short, Test Long").

Load it from this folder: `evaluate.load(modeling_alibi.evaluation.CORPUS_PERPLEXITY_METRIC_PATH)`.
"""

from __future__ import annotations

import datasets
import evaluate
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_alibi.evaluation import evaluate_perplexity
from modeling_alibi.tokenization import encode_lines, split_lines

_DESCRIPTION = """
Corpus perplexity of a causal language model, computed exactly like `fairseq-eval-lm`, which is how the
ALiBi paper (and most word-level LM papers) report WikiText-103 results.

All texts are split into lines; every line is encoded and followed by the end-of-sentence token, and the
lines are concatenated into ONE token stream. The stream is cut into windows of `tokens_per_sample`
tokens, of which the first `context_window` are context only, so every token is scored exactly once.
The result is exp(total negative log-likelihood / number of tokens).

This is not what `evaluate.load("perplexity")` computes: that metric scores each text on its own
(truncated to the model's length) and returns the MEAN OF PER-TEXT PERPLEXITIES, which weighs a short
text like a long one, never lets one text be context for the next, and does not match the paper's numbers.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the corpus. Each item is split into lines (universal newlines, a trailing
        newline does not add a line); an empty string is one blank line, so the rows of the Hugging Face
        `wikitext` datasets reproduce the original files line for line.
    model_id (str): model folder or Hub id, loaded with `AutoModelForCausalLM`.
    tokens_per_sample (int): window length L.
    context_window (int, default 0): context-only tokens per window; 0 is nonoverlapping evaluation,
        L - 1 is sliding evaluation.
    batch_size (int, default 1): windows per forward pass.
    device (str, optional): default cuda when available, else cpu.
    dtype (str, default "float32"): model dtype ("float32", "bfloat16", "float16" or "auto").
    tokenizer_id (str, optional): tokenizer folder or id, default `model_id`.
Returns:
    perplexity, loss_base2 (fairseq's "Loss (base 2)"), loss_nats, num_tokens, nll_sum, num_inf_skipped.
Examples:
    >>> metric = evaluate.load(CORPUS_PERPLEXITY_METRIC_PATH)
    >>> metric.compute(predictions=lines, model_id="alibi-wt103-L512", tokens_per_sample=512)["perplexity"]
"""

_CITATION = """
@inproceedings{press2022train,
  title={Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation},
  author={Press, Ofir and Smith, Noah A. and Lewis, Mike},
  booktitle={International Conference on Learning Representations},
  year={2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CorpusPerplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://github.com/ofirpress/attention_with_linear_biases"],
        )

    def _compute(
        self,
        predictions: list[str],
        model_id: str,
        tokens_per_sample: int,
        context_window: int = 0,
        batch_size: int = 1,
        device: str | None = None,
        dtype: str = "float32",
        tokenizer_id: str | None = None,
    ) -> dict[str, float | int]:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_id or model_id)
        model = AutoModelForCausalLM.from_pretrained(
            model_id, dtype=dtype if dtype == "auto" else getattr(torch, dtype)
        )
        lines = [line for text in predictions for line in split_lines(text)]
        result = evaluate_perplexity(
            model,
            encode_lines(tokenizer, lines),
            tokens_per_sample,
            context_window=context_window,
            batch_size=batch_size,
            device=device,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            progress=False,
        )
        return result.to_dict()
