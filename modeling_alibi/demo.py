"""`alibi-lm demo`: train short, test long, on a CPU in a few minutes.

1. Train a small ALiBi model and a sinusoidal baseline at L=64 on the in-repo gutenberg-tiny corpus
   (configuration/train/demo-cpu.yaml).
2. Evaluate both at 1x to 8x the training length and write the extrapolation table and plot.
3. Generate a continuation of a prompt three times longer than the training length.
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .evaluation import ExtrapolationPoint, extrapolate, markdown_table, relative_change, write_report
from .resources import resource_path
from .training import encode_corpus, parse_args, train

logger = logging.getLogger(__name__)

CORPUS = resource_path("data", "gutenberg-tiny")  # shipped in the wheel, or the checkout's data/
ENCODINGS = ("alibi", "sinusoidal")


def train_models(output: Path, steps: int | None) -> dict[str, Path]:
    """Both models share the preset, seed, data and tokenizer; only the position encoding differs."""
    folders = {}
    for encoding in ENCODINGS:
        argv = ["--config", str(resource_path("configuration", "train", "demo-cpu.yaml")),
                "--train_files", str(CORPUS / "train.txt"), "--validation_files", str(CORPUS / "valid.txt"),
                "--position_encoding", encoding, "--output_dir", str(output / encoding),
                "--save_every", "0", "--report_to", "none", "--cache_dir", str(output / "cache")]
        argv += ["--max_steps", str(steps)] if steps else []
        logger.info("training the %s model", encoding)
        folders[encoding] = train(parse_args(argv))
    return folders


def generate_long(folder: Path, prompt_tokens: int, new_tokens: int) -> tuple[str, str]:
    """Continue the first `prompt_tokens` tokens of the validation text; returns (prompt tail, continuation)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    stream = encode_corpus([CORPUS / "valid.txt"], tokenizer, "document")[:prompt_tokens]
    prompt = torch.tensor([stream])
    torch.manual_seed(0)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                         do_sample=True, top_p=0.9, temperature=0.8, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(stream[-60:]), tokenizer.decode(out[0, prompt.shape[1]:])


def quiet_libraries() -> None:
    """Keep stderr to the demo's own lines and training bars: no datasets/transformers progress bars
    (tokenizing, saving, loading and writing weights) and no per-file cache chatter."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    logging.getLogger("modeling_alibi.training.data").setLevel(logging.WARNING)


def summarize(points: Sequence[ExtrapolationPoint], train_len: int) -> str:
    """How to read the table: the offset at L, then each model's drift from L to the longest length."""
    longest = max(p.length for p in points)
    cell = {(p.model, p.length): p.perplexity for p in points}
    offset = relative_change(points, "sinusoidal", train_len, "alibi")
    worse = "worse" if offset >= 0 else "better"
    lines = [f"At L={train_len} the sinusoidal model already starts {abs(offset):.0%} {worse} than ALiBi "
             f"({cell['sinusoidal', train_len]:.2f} vs {cell['alibi', train_len]:.2f}): that part of the gap is "
             "an offset from training, not a failure to extrapolate."]
    for model in ENCODINGS:
        drift = relative_change(points, model, longest, baseline_length=train_len)
        lines.append(f"From L to {longest // train_len}xL ({longest} tokens) {model} changes by {drift:+.1%}.")
    return "\n".join(lines)


def _indent(text: str) -> str:
    """Generated text as text: its own line breaks kept, long lines wrapped, every line indented."""
    lines = [textwrap.fill(line, 100) if line.strip() else "" for line in text.strip().splitlines()]
    return textwrap.indent("\n".join(lines), "    ", lambda _: True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alibi-lm demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="outputs/demo", help="folder for the models, table and plot")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default: the preset's)")
    parser.add_argument("--eval-tokens", type=int, default=24_576, help="test tokens scored at each length")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the libraries' progress bars and log lines (datasets, weight writing)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not args.verbose:
        quiet_libraries()

    folders = train_models(output, args.steps)
    model = AutoModelForCausalLM.from_pretrained(folders["alibi"])
    train_len, parameters = model.config.train_seq_len, model.num_parameters()
    lengths = [train_len * k for k in (1, 2, 4, 8)]
    logger.info("evaluating both models at %s tokens", lengths)
    points = extrapolate(folders, CORPUS / "test.txt", lengths, text_mode="document", max_tokens=args.eval_tokens,
                         batch_size=4, device="cpu")
    caption = (f"gutenberg-tiny test ({args.eval_tokens:,} tokens, text mode document), trained at L={train_len}, "
               "nonoverlapping")
    report = write_report(points, output / "extrapolation", caption)
    prompt_tail, continuation = generate_long(folders["alibi"], 3 * train_len, 80)

    print(f"\nTwo models of {parameters:,} parameters each, trained at L={train_len}.")
    print(f"{caption}\n\n{markdown_table(points)}\n\n{summarize(points, train_len)}\n")
    print(f"ALiBi continuing a {3 * train_len}-token prompt (3x its training length). The prompt ends:")
    print(f"{_indent(prompt_tail)}\n  and the model continues:\n{_indent(continuation)}\n")
    print("Outputs:")
    for encoding, folder in folders.items():
        print(f"  {encoding:<11} model  {folder}  (AutoModelForCausalLM.from_pretrained)")
    print(f"  table        {report['md']}\n  plot         {report['png']}\n"
          f"  csv/json     {report['csv']}, {report['json']}")
    return 0
