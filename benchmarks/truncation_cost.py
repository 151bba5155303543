"""Perplexity cost of ALiBi truncation (`alibi_truncation=T`) on a trained model, against the untruncated model.

The data is encoded as in training (`--text-mode document` for the gutenberg presets). Prints a table and writes
truncation_cost.json to $OUT (or .). extrapolation_gpu.sh runs it after training; on the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/truncation_cost.py MODEL_DIR --data test.txt.xz --length 4096 \\
        --thresholds 20,10,5
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from modeling_alibi.evaluation import evaluate_perplexity  # noqa: E402
from modeling_alibi.training import encode_corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--text-mode", default="document", choices=["line", "document"])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--thresholds", default="20,10,5")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    stream = encode_corpus([args.data], tokenizer, args.text_mode)
    rows = []
    for threshold in [None] + [float(t) for t in args.thresholds.split(",")]:
        model = AutoModelForCausalLM.from_pretrained(args.model, alibi_truncation=threshold).to(device)
        result = evaluate_perplexity(model, stream, args.length, batch_size=args.batch_size, device=device,
                                     eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, progress=False)
        rows.append(dict(threshold=threshold, length=args.length, tokens=result.num_tokens,
                         perplexity=result.perplexity, loss_nats=result.loss_nats))
        base = rows[0]["perplexity"]
        rows[-1]["relative_change"] = result.perplexity / base - 1
        print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(os.environ.get("OUT", "."), "truncation_cost.json"), "w") as f:
        json.dump(dict(model=args.model, device=device, rows=rows), f, indent=1)
    print(f"\n{'T':>6s} {'perplexity':>11s} {'change':>10s}")
    for r in rows:
        print(f"{r['threshold']!s:>6s} {r['perplexity']:11.4f} {r['relative_change']:+10.5%}")


if __name__ == "__main__":
    main()
