"""The training loss's rows (alibi_triton_loss.py) against the bytes they must move, and a bf16 check of the
fused head (`skip_logits`) against the loss on full logits.

Part `kernel`: for (rows, vocab) bf16 logits (default 8,192 x 32,000, model_bench's training step), the time to
get each row's loss and the gradient of the logits, with CUDA events (benchmarks/cuda_timing.py):
  * eager `F.cross_entropy` on the fp32 logits, forward and backward (what the eager model's loss does);
  * the same compiled (inductor: what the compiled step did before the head was fused into the loss);
  * `_loss_and_grad` compiled (the fused head's plain-ops form, which inductor fuses);
  * the rows kernel: one row per program, the row in registers;
  * the floor: one read and one write of the logits at the device-to-device copy bandwidth measured here.
Part `check`: one training step of a small bf16-parameter model, compiled `training_loss` (head fused) against
the eager model on full logits, eagerly and compiled with and without CUDA graphs: every parameter's largest
gradient difference over the largest gradient.

Prints a table and writes loss_bench.json to --out (default $OUT or .). On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/loss_bench.py [--parts kernel,check] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modeling_alibi import AlibiConfig, AlibiForCausalLM, alibi_loss, alibi_triton_loss  # noqa: E402
from modeling_alibi.training.loop import training_loss  # noqa: E402

from cuda_timing import copy_gb_s, median_ms  # noqa: E402  (beside this file)


def kernel_rows(rows: int, vocab: int) -> list[dict]:
    logits = torch.randn(rows, vocab, device="cuda", dtype=torch.bfloat16) * 4
    targets = torch.randint(0, vocab, (rows,), device="cuda")
    count = (targets != -100).sum()
    reference = F.cross_entropy(logits.float(), targets, reduction="none")

    leaf = logits.clone().requires_grad_()

    def ce_loss(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x.float(), targets, reduction="sum") / count

    def grad_of(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(leaf), leaf)[0]

    eager_ce, compiled_ce = grad_of(ce_loss), grad_of(torch.compile(ce_loss))
    plain = torch.compile(alibi_loss._loss_and_grad)
    cases = [("eager F.cross_entropy fwd+bwd", eager_ce), ("compiled F.cross_entropy fwd+bwd", compiled_ce),
             ("compiled plain ops (_loss_and_grad)", lambda: plain(logits, targets, count))]
    cases.append(("rows kernel, row in registers", lambda: alibi_triton_loss._rows(logits, targets, count)))
    out = []
    for label, fn in cases:
        result = fn()
        nll = result[0] if isinstance(result, tuple) and result[0].dim() == 1 else None
        error = None if nll is None else (nll - reference).abs().max().item()
        out.append(dict(path=label, ms=round(median_ms(fn, 20), 4), nll_max_error=error))
    return out


def check_rows() -> list[dict]:
    config = AlibiConfig(vocab_size=32_000, hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    eager = AlibiForCausalLM(config).to("cuda", torch.bfloat16).train()
    ids = torch.randint(3, 32_000, (4, 256), device="cuda")
    eager(input_ids=ids, labels=ids).loss.backward()
    scale = max(p.grad.abs().max() for p in eager.parameters())
    out = []
    for label, wrap in [("eager skip_logits", lambda f: f), ("compiled", torch.compile),
                        ("compiled reduce-overhead", lambda f: torch.compile(f, mode="reduce-overhead"))]:
        model = copy.deepcopy(eager)
        model.zero_grad(set_to_none=True)
        wrap(training_loss(model))(input_ids=ids, labels=ids).backward()
        diffs = {n: ((q.grad.float() - p.grad.float()).abs().max() / scale).item()
                 for (n, p), q in zip(eager.named_parameters(), model.parameters(), strict=True)}
        worst = max(diffs, key=diffs.get)
        out.append(dict(path=label, worst=worst, worst_diff=round(diffs[worst], 5),
                        embed_diff=round(diffs["model.embed_tokens.weight"], 5)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="kernel,check")
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    parts = args.parts.split(",")
    bandwidth = copy_gb_s()
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, copy_gb_s=round(bandwidth))
    print(f"{result['device']} | torch {torch.__version__} | copy {bandwidth:.0f} GB/s")
    if "kernel" in parts:
        floor = 2 * args.rows * args.vocab * 2 / bandwidth / 1e6
        result["kernel"] = kernel_rows(args.rows, args.vocab) + [dict(path="floor (read + write at copy rate)",
                                                                      ms=round(floor, 4))]
        for row in result["kernel"]:
            print(f"{row['path']:<42} {row['ms']:8.4f} ms  {floor / row['ms']:5.2f} of floor  "
                  f"nll error {row.get('nll_max_error')}")
    if "check" in parts:
        result["check"] = check_rows()
        for row in result["check"]:
            print(f"{row['path']:<42} worst {row['worst']} {row['worst_diff']}  embed {row['embed_diff']}")
    with open(os.path.join(args.out, "loss_bench.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
