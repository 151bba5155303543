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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import check_input_file, check_model_folder, check_output_free
from ..io_utils import atomic_write_bytes, atomic_write_text
from .perplexity import TEXT_MODE_HELP, TEXT_MODES, TextMode, encode_text, evaluate_perplexity

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


def extrapolate(
    models: Mapping[str, str | Path],
    data: str | Path,
    lengths: Sequence[int],
    text_mode: TextMode = "fairseq",
    max_tokens: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> list[ExtrapolationPoint]:
    """Perplexity of saved models on a text file at each evaluation length (what `alibi-lm extrapolate` runs).

    Args:
        models: label -> model folder (or Hub id) holding the model and its tokenizer, loaded one at a time.
        data: The text file; `text_mode` says how it becomes a token stream (`encode_text`).
        lengths: Window lengths, e.g. 1x to 8x the training length.
        text_mode: "fairseq", "line" or "document"; score a model on text read the way it was trained.
        max_tokens: Score only the first `max_tokens` tokens of each model's stream.
        stride: None for nonoverlapping windows, else sliding windows scoring `stride` tokens each.
        batch_size, device, dtype, trust_remote_code, progress: as for `evaluate_perplexity` / `from_pretrained`.

    Returns:
        One `ExtrapolationPoint` per model and length, for `markdown_table`, `plot` and `write_report`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    points = []
    for name, path in models.items():
        check_model_folder(path)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        stream = encode_text(tokenizer, data, text_mode)[:max_tokens]  # each model with its own tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        points += evaluate_lengths(name, model, stream, lengths, stride=stride, batch_size=batch_size, device=device,
                                   eos_id=tokenizer.eos_token_id, pad_id=pad_id, progress=progress)
        del model  # hold one model at a time
    return points


def relative_change(points: Sequence[ExtrapolationPoint], model: str, length: int, baseline: str | None = None,
                    baseline_length: int | None = None) -> float:
    """Relative perplexity change, e.g. 0.53 for 53% worse: `model` at `length` against `baseline` (default: the
    same model) at `baseline_length` (default: `length`). `relative_change(p, "alibi", 512, baseline_length=64)`
    is how much ALiBi drifts from L to 8L; `relative_change(p, "sinusoidal", 64, "alibi")` is the offset at L."""
    cell = {(p.model, p.length): p.perplexity for p in points}
    reference = cell[baseline or model, baseline_length or length]
    return cell[model, length] / reference - 1.0


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
    """The paper's Figure 1: one line per model, log-scaled length, each training length dashed.

    The x-axis is labelled in tokens at the evaluated lengths, the y-axis starts at 0 so a drift of a few percent
    looks like one, and each line is annotated with its change from the shortest length to the longest.
    """
    # A bare Figure renders with Agg and leaves pyplot's global backend (a notebook's, say) untouched.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for index, model in enumerate(dict.fromkeys(p.model for p in points)):
        mine = sorted((p for p in points if p.model == model), key=lambda p: p.length)
        color = f"C{index}"
        axes.plot([p.length for p in mine], [p.perplexity for p in mine], marker="o", color=color, label=model)
        if len(mine) > 1:  # the change from the shortest length, written at the longest
            change = mine[-1].perplexity / mine[0].perplexity - 1.0
            axes.annotate(f"{change:+.1%} vs {mine[0].length}", (mine[-1].length, mine[-1].perplexity),
                          textcoords="offset points", xytext=(-4, 7), ha="right", color=color, fontsize=9)
        if mine[0].train_seq_len:
            axes.axvline(mine[0].train_seq_len, color=color, linestyle="--", alpha=0.6)
    lengths = sorted({p.length for p in points})
    axes.set_xscale("log", base=2)
    axes.set_xticks(lengths, [str(n) for n in lengths])  # 64, 128, ... in tokens, not 2^6, 2^7
    axes.minorticks_off()
    axes.set_xlabel("evaluation length (tokens); dashed: training length")
    axes.set_ylabel("perplexity")
    # From zero, so a 1% drift does not look like a cliff; headroom above for the annotations.
    axes.set_ylim(0, 1.15 * max(p.perplexity for p in points))
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
    parser.add_argument("--text-mode", default="fairseq", choices=TEXT_MODES, help=TEXT_MODE_HELP)
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


def _model_spec(spec: str) -> tuple[str | None, str]:
    """`NAME=PATH` -> (NAME, PATH); a bare PATH (which may itself contain '=') -> (None, PATH), labelled later."""
    if "=" not in spec or Path(spec).exists():
        return None, spec
    name, path = spec.split("=", 1)
    return name, path


def unique_labels(specs: Sequence[tuple[str | None, str]]) -> list[str]:
    """Labels for (NAME or None, PATH) pairs: NAME when given, else the folder's name, made unique.

    A run's model lives in RUN/final, so `final` is labelled by its run (`alibi/final` -> `alibi`). Bare paths whose
    labels still collide take more of their path (`a/alibi`, `b/alibi`), and identical paths a suffix (`alibi-2`).
    """
    # Folder names from the last one up, a run's `final` skipped: its run names the model.
    parts = [[p for p in reversed(Path(path).resolve().parts[1:])] for _, path in specs]
    parts = [names[1:] if len(names) > 1 and names[0] == "final" else names for names in parts]
    depth = [1] * len(specs)

    def label(i: int) -> str:
        return specs[i][0] or "/".join(reversed(parts[i][: depth[i]])) or specs[i][1]

    for _ in range(max(map(len, parts), default=0)):  # widen the colliding bare labels one folder at a time
        labels = [label(i) for i in range(len(specs))]
        clash = [i for i, name in enumerate(labels) if specs[i][0] is None and any(
            labels[j] == name and parts[j] != parts[i] for j in range(len(specs)))]  # another folder, same label
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    labels, seen = [label(i) for i in range(len(specs))], {}
    for i, name in enumerate(labels):  # the same folder twice
        seen[name] = seen.get(name, 0) + 1
        labels[i] = name if seen[name] == 1 else f"{name}-{seen[name]}"
    return labels


def main(argv: list[str] | None = None) -> int:
    """Evaluate every model at every length and write the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    lengths = args.lengths
    if args.stride is not None and not args.sliding:
        parser.error("--stride applies to sliding evaluation: add --sliding")
    stride = (args.stride or 1) if args.sliding else None
    if stride is not None and stride > lengths[0]:
        parser.error(f"--stride {stride} is larger than the smallest length {lengths[0]}")
    specs = [_model_spec(spec) for spec in args.models]
    named = [name for name, _ in specs if name is not None]
    if len(set(named)) < len(named):
        parser.error("two models are given the same NAME in NAME=PATH; give each its own")
    models = dict(zip(unique_labels(specs), (path for _, path in specs), strict=True))
    for _, path in specs:
        check_model_folder(path)  # all of them before the first loads
    check_input_file(args.data, "--data")
    check_report_free(args.output, args.overwrite)  # before the evaluation, not after
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    points = extrapolate(models, args.data, lengths, text_mode=args.text_mode, max_tokens=args.max_tokens,
                         stride=stride, batch_size=args.batch_size, device=device, dtype=getattr(torch, args.dtype),
                         trust_remote_code=args.trust_remote_code, progress=not args.no_progress)
    mode = "nonoverlapping windows" if stride is None else f"sliding windows, stride {stride}"
    counts = {p.num_tokens for p in points}  # models with different tokenizers score different streams
    tokens = f" ({counts.pop():,} tokens)" if len(counts) == 1 else ""
    caption = f"Perplexity on {Path(args.data).name}{tokens}, {mode}, text mode {args.text_mode}"
    paths = write_report(points, args.output, caption, overwrite=args.overwrite)
    print(caption + "\n\n" + markdown_table(points))
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


__all__ = [
    "ExtrapolationPoint",
    "evaluate_lengths",
    "extrapolate",
    "main",
    "markdown_table",
    "plot",
    "relative_change",
    "unique_labels",
    "write_report",
]
