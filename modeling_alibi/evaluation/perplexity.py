"""Corpus perplexity with exactly the semantics of `fairseq-eval-lm` (docs/fairseq.md), and its CLI.

The paper's numbers are corpus perplexities: one token stream (every line plus its `</s>`), cut into
blocks, every token scored exactly once. This is not the `evaluate` library's `perplexity` metric, which
averages per-text perplexities.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..alibi_ops import IGNORE_INDEX
from ..errors import check_input_file, check_model_folder, check_output_free, int_at_least
from ..fairseq.eval_lm import eval_lm_windows
from ..io_utils import atomic_write_text

logger = logging.getLogger(__name__)

# `evaluate.load(CORPUS_PERPLEXITY_METRIC_PATH)` gives the metric version of `evaluate_perplexity`.
CORPUS_PERPLEXITY_METRIC_PATH = str(Path(__file__).parent / "metrics" / "corpus_perplexity")

TextMode = Literal["fairseq", "line", "document"]
TEXT_MODES: tuple[str, ...] = ("fairseq", "line", "document")
TEXT_MODE_HELP = ("how the text becomes one token stream: 'fairseq' (every line + </s>, exactly as fairseq-eval-lm), "
                  "or as training read it ('line' or 'document' records, each + end-of-sequence). Score a model "
                  "trained with --text_mode document (the demo's) in 'document' mode.")


def encode_text(tokenizer, path: str | Path, text_mode: TextMode = "fairseq") -> list[int]:
    """The token stream a text file is scored on, in one of `TEXT_MODES`.

    Args:
        tokenizer: The model's tokenizer; it needs an eos token.
        path: A text file (or .xz/.gz/.bz2).
        text_mode: "fairseq": every line followed by `</s>`, exactly as fairseq-eval-lm (blank lines included).
            "line" or "document": records as training reads them (`TrainArguments.text_mode`), each followed by
            end-of-sequence; a model trained on whole documents is scored on documents, not on lines it never
            saw end.
    """
    if text_mode == "fairseq":
        from ..tokenization import encode_file

        return encode_file(tokenizer, path)
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode={text_mode!r} must be one of {list(TEXT_MODES)}.")
    from ..training.data import encode_corpus  # imports datasets: only when needed

    return encode_corpus([path], tokenizer, text_mode)


@dataclass(frozen=True)
class PerplexityResult:
    """Corpus scores as fairseq-eval-lm reports them: `loss_base2` is its "Loss (base 2)"."""

    num_tokens: int  # scored targets (fairseq's `count`)
    nll_sum: float  # -sum of ln p over the scored targets, accumulated in float64
    loss_base2: float  # nll_sum / num_tokens / ln 2
    loss_nats: float  # nll_sum / num_tokens
    perplexity: float  # 2 ** loss_base2 == exp(loss_nats)
    num_inf_skipped: int = 0  # targets with log p = -inf, dropped from sum and count as fairseq does

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _window_batches(
    stream: torch.Tensor, windows: Sequence[tuple[int, int, int]], batch_size: int, eos_id: int, pad_id: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Consecutive windows in groups of `batch_size`, right-padded to the longest window of the group."""
    shifted = torch.cat([stream.new_tensor([eos_id]), stream[:-1]])  # S_in: eos is the start symbol
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        width = max(end - ctx for ctx, _, end in group)
        input_ids = stream.new_full((len(group), width), pad_id)  # (b, T)
        target_ids = stream.new_full((len(group), width), IGNORE_INDEX)  # (b, T)
        attention_mask = stream.new_zeros((len(group), width))  # (b, T)
        for row, (ctx, start, end) in enumerate(group):
            input_ids[row, : end - ctx] = shifted[ctx:end]
            target_ids[row, start - ctx : end - ctx] = stream[start:end]
            attention_mask[row, : end - ctx] = 1
        # An all-ones mask adds nothing: let the model take its unpadded (faster) path.
        yield input_ids, target_ids, None if bool(attention_mask.all()) else attention_mask


def score_tokens(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    target_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(target_ids[:, t] | input_ids[:, :t+1]) as (b, T) float32; 0 where the target is -100.

    Uses the model's `token_log_probs` when it has one (AlibiForCausalLM: no full-vocabulary logits with
    an adaptive softmax), else a log-softmax of `model(...).logits`.
    """
    if hasattr(model, "token_log_probs"):
        return model.token_log_probs(input_ids, target_ids, attention_mask=attention_mask).float()
    logits = model(input_ids, attention_mask=attention_mask).logits  # (b, T, V)
    log_probs = logits.float().log_softmax(dim=-1)
    picked = log_probs.gather(-1, target_ids.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (b, T)
    return picked.masked_fill(target_ids == IGNORE_INDEX, 0.0)


def evaluate_perplexity(
    model: torch.nn.Module,
    token_stream: torch.Tensor | Sequence[int],
    tokens_per_sample: int,
    context_window: int = 0,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    eos_id: int = 2,
    pad_id: int = 1,
    progress: bool = True,
) -> PerplexityResult:
    """Corpus perplexity of `token_stream` with fairseq-eval-lm's windowing (Press et al. 2022, §4).

    Args:
        model: A causal LM; put in eval mode for the call (its previous mode is restored).
        token_stream: The whole corpus as one 1-D id sequence, each line followed by `</s>`
            (see `modeling_alibi.tokenization.encode_lines`).
        tokens_per_sample: L, the window length (fairseq `--tokens-per-sample`).
        context_window: C, context-only tokens per window (`--context-window`): 0 for nonoverlapping
            evaluation, L - 1 for sliding evaluation (one scored token per window).
        batch_size: Windows per forward; groups with different lengths are right-padded with `pad_id`
            and an attention mask (only the first windows and the last one are shorter).
        device: Where to run; the model is moved there. Default: the model's own device.
        eos_id: Start symbol fed before the first token (fairseq uses `</s>`).
        pad_id: Padding id for the input of short windows.
        progress: Show a tqdm progress bar (in scored tokens) once the evaluation has run for 2 seconds.

    Returns:
        The summed log-probability in float64 and the derived losses. fairseq adds each window's sum into
        a float32 total: on 217,646 simulated targets that moved perplexity by under 5e-7 relative for
        nonoverlapping windows and 1.6e-5 for sliding windows of one target (docs/fairseq.md).
    """
    stream = _as_stream(token_stream)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    windows = list(eval_lm_windows(len(stream), tokens_per_sample, context_window))
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    was_training = model.training
    model.eval()
    nll_sum, count, skipped = 0.0, 0, 0
    # delay: a bar only for work that lasts (a short evaluation prints nothing to stderr)
    bar = tqdm(total=len(stream), unit="tok", desc="eval-ppl", disable=not progress, delay=2.0)
    try:
        with torch.inference_mode():
            for input_ids, target_ids, mask in _window_batches(stream, windows, batch_size, eos_id, pad_id):
                input_ids, target_ids = input_ids.to(device), target_ids.to(device)
                mask = mask.to(device) if mask is not None else None
                scores = score_tokens(model, input_ids, target_ids, mask)[target_ids != IGNORE_INDEX].double()
                finite = torch.isfinite(scores)
                nll_sum -= scores[finite].sum().item()
                count += int(finite.sum())
                skipped += int((~finite).sum())
                bar.update(scores.numel())
    finally:
        bar.close()
        model.train(was_training)
    return _result(nll_sum, count, skipped)


def _as_stream(token_stream: torch.Tensor | Sequence[int]) -> torch.Tensor:
    stream = torch.as_tensor(token_stream, dtype=torch.long).cpu()
    if stream.dim() != 1 or stream.numel() == 0:
        raise ValueError(
            f"token_stream must be a non-empty 1-D sequence of token ids, got shape {tuple(stream.shape)}; "
            "concatenate the encoded lines (encode_lines) into one stream."
        )
    return stream


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _result(nll_sum: float, count: int, skipped: int) -> PerplexityResult:
    if skipped:
        logger.warning("%d targets had log-probability -inf and were skipped, as fairseq-eval-lm does.", skipped)
    if count == 0:
        raise ValueError("No target got a finite log-probability: the model assigns probability 0 everywhere.")
    loss_nats = nll_sum / count
    loss_base2 = loss_nats / math.log(2)
    return PerplexityResult(count, nll_sum, loss_base2, loss_nats, 2.0**loss_base2, skipped)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of `alibi-lm eval-ppl`; pass a subparser to add them to it."""
    parser = parser or argparse.ArgumentParser(prog="alibi-lm eval-ppl", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="Model folder or Hub id (loaded with AutoModelForCausalLM).")
    parser.add_argument("--data", required=True, help="Text file (or .xz/.gz/.bz2); see --text-mode.")
    parser.add_argument("--text-mode", default="fairseq", choices=TEXT_MODES, help=TEXT_MODE_HELP)
    parser.add_argument("--tokens-per-sample", type=int_at_least(1), required=True, help="Window length L.")
    parser.add_argument("--context-window", type=int_at_least(0), default=0,
                        help="Context-only tokens per window (L-1: sliding).")
    parser.add_argument("--batch-size", type=int_at_least(1), default=1, help="Windows per forward pass.")
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder or id (default: MODEL).")
    parser.add_argument("--json", dest="json_path", default=None, help="Write the result and settings as JSON here.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --json file.")
    parser.add_argument("--trust-remote-code", action="store_true", help="Allow the model's own Hub code.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`alibi-lm eval-ppl MODEL --data FILE --tokens-per-sample L [...]`; returns the exit status."""
    # Imported here so `import modeling_alibi.evaluation.perplexity` stays light. Importing this module already ran
    # the package __init__, which registers the "alibi" model type with the Auto classes.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.context_window >= args.tokens_per_sample:
        parser.error(f"--context-window {args.context_window} must be smaller than --tokens-per-sample "
                     f"{args.tokens_per_sample} (use L - 1 for a sliding window)")
    check_model_folder(args.model)
    check_input_file(args.data, "--data")
    if args.json_path:
        check_output_free(args.json_path, args.overwrite, "--json")  # before the evaluation, not after
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model, trust_remote_code=args.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, trust_remote_code=args.trust_remote_code)
    stream = encode_text(tokenizer, args.data, args.text_mode)
    result = evaluate_perplexity(
        model,
        stream,
        args.tokens_per_sample,
        context_window=args.context_window,
        batch_size=args.batch_size,
        device=device,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        progress=not args.no_progress,
    )
    settings = {
        k: getattr(args, k)
        for k in ("model", "data", "text_mode", "tokens_per_sample", "context_window", "batch_size", "dtype")
    }
    print(format_result_table(result, settings))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        report = json.dumps({**settings, "device": device, **result.to_dict()}, indent=2) + "\n"
        atomic_write_text(args.json_path, report)
    return 0


def format_result_table(result: PerplexityResult, settings: dict[str, object] | None = None) -> str:
    rows = [(k.replace("_", " "), str(v)) for k, v in (settings or {}).items()]
    rows += [
        ("tokens scored", f"{result.num_tokens:,}"),
        ("loss (base 2)", f"{result.loss_base2:.4f}"),
        ("loss (nats)", f"{result.loss_nats:.4f}"),
        ("perplexity", f"{result.perplexity:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


__all__ = [
    "CORPUS_PERPLEXITY_METRIC_PATH",
    "TEXT_MODES",
    "PerplexityResult",
    "build_parser",
    "encode_text",
    "evaluate_perplexity",
    "format_result_table",
    "main",
    "score_tokens",
]
