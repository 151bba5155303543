"""`alibi-lm demo`: train short, test long, on a CPU in a few minutes.

1. Train a small ALiBi model and a sinusoidal baseline at L=64 on the in-repo gutenberg-tiny corpus
   (configuration/train/demo-cpu.yaml).
2. Evaluate both at 1x to 8x the training length and write the extrapolation table and plot.
3. Generate a continuation of a prompt three times longer than the training length.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .evaluation import evaluate_lengths, markdown_table, write_report
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alibi-lm demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="outputs/demo", help="folder for the models, table and plot")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default: the preset's)")
    parser.add_argument("--eval-tokens", type=int, default=24_576, help="test tokens scored at each length")
    args = parser.parse_args(argv)
    output = Path(args.output)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    folders = train_models(output, args.steps)
    train_len = AutoModelForCausalLM.from_pretrained(folders["alibi"]).config.train_seq_len
    lengths = [train_len * k for k in (1, 2, 4, 8)]
    points = []
    for encoding, folder in folders.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        stream = encode_corpus([CORPUS / "test.txt"], tokenizer, "document")[: args.eval_tokens]
        points += evaluate_lengths(encoding, model, torch.tensor(stream), lengths, batch_size=4, device="cpu",
                                   eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    caption = f"gutenberg-tiny test ({args.eval_tokens:,} tokens), trained at L={train_len}, nonoverlapping"
    report = write_report(points, output / "extrapolation", caption)
    prompt_tail, continuation = generate_long(folders["alibi"], 3 * train_len, 80)

    print(f"\n{caption}\n\n{markdown_table(points)}\n")
    print(f"ALiBi continuing a {3 * train_len}-token prompt (3x its training length):")
    print(f"  ...{prompt_tail!r}\n  -> {continuation!r}\n")
    print("Outputs:")
    for encoding, folder in folders.items():
        print(f"  {encoding:<11} model  {folder}  (AutoModelForCausalLM.from_pretrained)")
    print(f"  table        {report['md']}\n  plot         {report['png']}\n"
          f"  csv/json     {report['csv']}, {report['json']}")
    return 0
