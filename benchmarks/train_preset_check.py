"""`alibi-lm train` on a GPU preset, as a user runs it: the default (on one CUDA process, compiled with CUDA graphs)
against mode "default" (compiled, no CUDA graphs) and `--torch_compile false`.

Both runs train the same preset on the same text for the same steps, one process, through `scripts/train.py` (what
`alibi-lm train` runs). The text is synthetic, so the GPU machine needs no corpus: sentences of made-up words drawn
from a Zipf distribution with a fixed seed. Each run's `metrics.jsonl` gives `train/tokens_per_s` per log line;
the table shows the median over the log lines after the first (the first holds the compilation), the first line's
rate, the wall time of the whole run (tokenizer and packing are cached by the first run) and the last loss. Prints
the table and writes train_preset_check.json to --out (default $OUT or .). On the GPU machine, with `datasets`
carried as a wheel:

    HF_HUB_OFFLINE=1 python3 benchmarks/train_preset_check.py --preset gutenberg-small-h100 --steps 400
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = (("default (no flag)", []), ("--torch_compile_mode default", ["--torch_compile_mode", "default"]),
        ("--torch_compile false", ["--torch_compile", "false"]))


def write_text(path: Path, megabytes: float, seed: int) -> None:
    """Zipf-distributed sentences of made-up words, a blank line between paragraphs (document mode's unit)."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgk"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    lines, size = [], 0
    while size < megabytes * 2**20:
        sentence = " ".join(rng.choices(words, weights, k=rng.randint(5, 25))).capitalize() + "."
        lines.append(sentence + ("\n\n" if rng.random() < 0.2 else "\n"))
        size += len(lines[-1])
    path.write_text("".join(lines), encoding="utf-8")


def train(name: str, extra: list[str], args: argparse.Namespace, data: Path, work: Path) -> dict:
    out = work / name.split()[0].strip("-")
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", args.preset,
               "--train_files", str(data / "train.txt"), "--validation_files", str(data / "valid.txt"),
               "--max_steps", str(args.steps), "--log_every", str(args.log_every), "--eval_every", "0",
               "--eval_batches", "5", "--save_every", "0", "--report_to", "none", "--output_dir", str(out),
               "--cache_dir", str(work / "cache"), *extra]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    row = dict(run=name, command=" ".join(command[1:]), wall_s=round(time.perf_counter() - start, 1),
               exit_code=run.returncode)
    if run.returncode:
        row["error"] = run.stderr[-3000:]
        return row
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [m["train/tokens_per_s"] for m in metrics if "train/tokens_per_s" in m]
    row.update(first_log_tok_s=round(rates[0]), tok_s=round(statistics.median(rates[1:])) if len(rates) > 1 else None,
               last_loss=round([m["train/loss"] for m in metrics if "train/loss" in m][-1], 4),
               compile_line=next((line for line in run.stderr.splitlines() if "Training step:" in line), None))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gutenberg-small-h100")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--megabytes", type=float, default=12.0, help="size of the synthetic training text")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_text(work / "train.txt", args.megabytes, seed=0)
        write_text(work / "valid.txt", 0.2, seed=1)
        rows = [train(name, extra, args, work, work) for name, extra in RUNS]
    print(f"{'run':<28} {'tok/s':>9} {'first log tok/s':>15} {'wall s':>7} {'last loss':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['run']:<28} failed (exit {r['exit_code']}):\n{r['error']}")
            continue
        print(f"{r['run']:<28} {r['tok_s']:>9,} {r['first_log_tok_s']:>15,} {r['wall_s']:>7} {r['last_loss']:>9}")
        print(f"{'':<28} {r['compile_line']}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train_preset_check.json"), "w") as f:
        json.dump(dict(preset=args.preset, steps=args.steps, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
