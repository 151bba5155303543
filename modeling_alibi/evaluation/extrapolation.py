"""`alibi-lm extrapolate`: perplexity against evaluation length, one line per model (the paper's Figure 1).

Each model is scored with fairseq-eval-lm windowing (`perplexity.evaluate_perplexity`) at every length, and the
results are written as a Markdown table, CSV, JSON and a PNG plot with each model's training length marked.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import check_input_file, check_model_folder, check_output_free
from ..io_utils import atomic_write_bytes, atomic_write_text
from .perplexity import evaluate_perplexity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtrapolationPoint:
    model: str
    train_seq_len: int | None
    length: int
    context_window: int
    num_tokens: int
    loss_nats: float
    perplexity: float


def evaluate_lengths(
    name: str,
    model: torch.nn.Module,
    stream: torch.Tensor | Sequence[int],
    lengths: Sequence[int],
    stride: int | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    eos_id: int = 2,
    pad_id: int = 1,
    progress: bool = True,
) -> list[ExtrapolationPoint]:
    """Score `stream` at each window length; nonoverlapping, or sliding with `stride` scored tokens per window."""
    if stride is not None and not 1 <= stride <= min(lengths):
        raise ValueError(f"stride={stride} must be between 1 and the smallest length ({min(lengths)}): "
                         "each window scores `stride` tokens after length - stride tokens of context.")
    points = []
    for length in lengths:
        context = 0 if stride is None else length - stride
        result = evaluate_perplexity(model, stream, length, context_window=context, batch_size=batch_size,
                                     device=device, eos_id=eos_id, pad_id=pad_id, progress=progress)
        point = ExtrapolationPoint(name, getattr(model.config, "train_seq_len", None), length, context,
                                   result.num_tokens, result.loss_nats, result.perplexity)
        logger.info("%s at %d tokens: perplexity %.3f", name, length, point.perplexity)
        points.append(point)
    return points


def markdown_table(points: list[ExtrapolationPoint]) -> str:
    """Models as rows, evaluation lengths as columns, perplexity in the cells."""
    lengths = sorted({p.length for p in points})
    models = list(dict.fromkeys(p.model for p in points))
    cell = {(p.model, p.length): p.perplexity for p in points}
    trained = {p.model: p.train_seq_len for p in points}
    lines = ["| model | trained on | " + " | ".join(str(n) for n in lengths) + " |",
             "| --- | --- | " + " | ".join("---" for _ in lengths) + " |"]
    for model in models:
        values = " | ".join(f"{cell[model, n]:.2f}" if (model, n) in cell else "–" for n in lengths)
        lines.append(f"| {model} | {trained[model] or '?'} | {values} |")
    return "\n".join(lines)


def plot(points: list[ExtrapolationPoint], path: Path, title: str = "Perplexity against evaluation length") -> None:
    """The paper's Figure 1: one line per model, log-scaled length, each training length dashed."""
    # A bare Figure renders with Agg and leaves pyplot's global backend (a notebook's, say) untouched.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for index, model in enumerate(dict.fromkeys(p.model for p in points)):
        mine = sorted((p for p in points if p.model == model), key=lambda p: p.length)
        color = f"C{index}"
        axes.plot([p.length for p in mine], [p.perplexity for p in mine], marker="o", color=color, label=model)
        if mine[0].train_seq_len:
            axes.axvline(mine[0].train_seq_len, color=color, linestyle="--", alpha=0.6)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("evaluation length (tokens); dashed: training length")
    axes.set_ylabel("perplexity")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    atomic_write_bytes(path, image.getvalue())


REPORT_KINDS = ("md", "csv", "json", "png")


def report_paths(output_dir: str | Path) -> dict[str, Path]:
    """The report's files: extrapolation.{md,csv,json,png} in `output_dir`."""
    return {kind: Path(output_dir) / f"extrapolation.{kind}" for kind in REPORT_KINDS}


def check_report_free(output_dir: str | Path, overwrite: bool) -> None:
    """Refuse to replace an earlier report without `overwrite` (the folder itself may hold other files)."""
    for path in report_paths(output_dir).values():
        check_output_free(path, overwrite, "--output")


def write_report(
    points: list[ExtrapolationPoint], output_dir: str | Path, caption: str | None = None, overwrite: bool = True
) -> dict[str, Path]:
    """Write extrapolation.{md,csv,json,png} into `output_dir` (`caption` heads the table and titles the plot).

    Each file is written atomically (a temporary sibling, fsynced, renamed). With `overwrite=False` an existing
    report raises `OutputExistsError` before anything is written.
    """
    check_report_free(output_dir, overwrite)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    paths = report_paths(output_dir)
    rows = [asdict(p) for p in points]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths["csv"], table.getvalue())
    atomic_write_text(paths["json"], json.dumps(rows, indent=1) + "\n")
    plot(points, paths["png"], **({"title": caption} if caption else {}))
    atomic_write_text(paths["md"], (f"{caption}\n\n" if caption else "") + markdown_table(points) + "\n")
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alibi-lm extrapolate", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders (each with its tokenizer); NAME=PATH sets the label")
    parser.add_argument("--data", required=True, help="text file (or .xz/.gz/.bz2); each line is encoded, then </s>")
    parser.add_argument("--lengths", required=True, type=_lengths,
                        help="comma-separated window lengths, e.g. 256,512,1024")
    parser.add_argument("--text-mode", default="fairseq", choices=["fairseq", "line", "document"],
                        help="how the data becomes one token stream: 'fairseq' (every line + </s>, exactly as "
                        "fairseq-eval-lm), or as training read it ('line' or 'document' records + end-of-sequence)")
    parser.add_argument("--sliding", action="store_true", help="sliding-window evaluation instead of nonoverlapping")
    parser.add_argument("--stride", type=_positive, default=None,
                        help="with --sliding: scored tokens per window (default 1: the paper's)")
    parser.add_argument("--max-tokens", type=_positive, default=None,
                        help="score only the first N tokens of the stream")
    parser.add_argument("--batch-size", type=_positive, default=1)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--output", default="outputs/extrapolation", help="folder for the table, CSV, JSON and PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --output")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the models' own Hub code")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _lengths(text: str) -> list[int]:
    """`--lengths 512,1024`: positive integers, deduplicated and sorted."""
    try:
        return sorted({_positive(n.strip()) for n in text.split(",")})
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 512,1024,2048, got {text!r}"
        ) from None


def _model_spec(spec: str) -> tuple[str, str]:
    """`NAME=PATH` -> (NAME, PATH); a bare PATH (which may itself contain '=') is labelled by its folder name."""
    if "=" not in spec or Path(spec).exists():
        return Path(spec).name or spec, spec
    name, path = spec.split("=", 1)
    return name, path


def main(argv: list[str] | None = None) -> int:
    """Evaluate every model at every length and write the report."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..tokenization import encode_file
    from ..training.data import encode_corpus

    parser = build_parser()
    args = parser.parse_args(argv)
    lengths = args.lengths
    if args.stride is not None and not args.sliding:
        parser.error("--stride applies to sliding evaluation: add --sliding")
    stride = (args.stride or 1) if args.sliding else None
    if stride is not None and stride > lengths[0]:
        parser.error(f"--stride {stride} is larger than the smallest length {lengths[0]}")
    specs = [_model_spec(spec) for spec in args.models]
    if len({name for name, _ in specs}) < len(specs):
        parser.error("two models have the same label; name them with NAME=PATH")
    for _, path in specs:
        check_model_folder(path)
    check_input_file(args.data, "--data")
    check_report_free(args.output, args.overwrite)  # before the evaluation, not after
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    points = []
    for name, path in specs:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype),
                                                     trust_remote_code=args.trust_remote_code)
        if args.text_mode == "fairseq":
            stream = encode_file(tokenizer, args.data)
        else:  # a model trained on documents is scored on documents, not on lines it never saw end
            stream = encode_corpus([args.data], tokenizer, args.text_mode)
        stream = stream[: args.max_tokens]  # each model with its own tokenizer
        points += evaluate_lengths(
            name, model, stream, lengths, stride=stride, batch_size=args.batch_size,
            device=device, eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            progress=not args.no_progress,
        )
        del model  # hold one model at a time
    mode = "nonoverlapping windows" if stride is None else f"sliding windows, stride {stride}"
    counts = {p.num_tokens for p in points}  # models with different tokenizers score different streams
    tokens = f" ({counts.pop():,} tokens)" if len(counts) == 1 else ""
    caption = f"Perplexity on {Path(args.data).name}{tokens}, {mode}"
    paths = write_report(points, args.output, caption, overwrite=args.overwrite)
    print(caption + "\n\n" + markdown_table(points))
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


__all__ = ["ExtrapolationPoint", "evaluate_lengths", "markdown_table", "plot", "write_report", "main"]
