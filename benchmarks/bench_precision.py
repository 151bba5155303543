"""model_bench.py's `precision` part: bf16 log-prob error against fp32 at 65,536 tokens, early and late positions.

A smaller model (4 layers, d 512, 8 heads) in bf16 against the same weights in fp32 at 65,536 tokens: max / mean
|log-prob difference| over the first 256 and the last 256 positions (there should be no growth with position).
Rows for the default backend and for sdpa (bias cast to bf16). Its rows are the `[precision]` section of
model_bench's table. On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/model_bench.py --parts precision
"""

from __future__ import annotations

import copy

import torch

from harness import Bench


def run(bench: Bench) -> None:
    """The part: the fp32 reference, then one bf16 row per backend (the default, and sdpa)."""
    s = bench.S
    sizes, length, n = s["precision"], s["precision_len"], s["precision_n"]
    part = bench.result.setdefault("precision", dict(length=length, positions=n, sizes=sizes, rows=[]))
    reference = bench.ours(torch.float32, sizes)
    ids = bench.ids(length)
    keep = torch.cat([torch.arange(n), torch.arange(length - n, length)]).to(bench.dev)
    part["reference_backend"] = reference.config._attn_implementation
    lp32 = bench.case("precision fp32", reference_log_probs, reference, ids, keep)
    lp32_value = lp32.pop("lp", None)
    part["reference"] = lp32
    if lp32_value is None:
        return
    model = copy.deepcopy(reference).to(torch.bfloat16)
    del reference
    default = model.config._attn_implementation
    backends = [default] + (["sdpa"] if default != "sdpa" else [])
    for backend in backends:
        model.config._attn_implementation = backend
        row = bench.case(f"precision bf16 {backend}", compare, model, ids, keep, lp32_value, n)
        part["rows"].append(dict(dtype="bf16", backend=backend, **row))
        bench.save()
    del model


def reference_log_probs(model, ids, keep) -> dict:
    """The fp32 case: its log-probs, under "lp" (taken out of the row before it is stored)."""
    return dict(lp=log_probs(model, ids, keep))


def compare(model, ids, keep, lp32: torch.Tensor, n: int) -> dict:
    """One bf16 case: max and mean |log-prob difference| over the first and the last n kept positions."""
    diff = (log_probs(model, ids, keep) - lp32).abs()
    first, last = diff[:n], diff[n:]
    out = dict(first_max=float(first.max()), first_mean=float(first.mean()),
               last_max=float(last.max()), last_mean=float(last.mean()))
    out["growth_max"] = round(out["last_max"] / out["first_max"], 2)
    out["growth_mean"] = round(out["last_mean"] / out["first_mean"], 2)
    return out


def log_probs(model, ids, keep) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits[0]  # (2n, vocab)
    return torch.log_softmax(logits.float(), dim=-1)


def report(part: dict) -> list[str]:
    """The `[precision]` section of the table."""
    lines = [f"[precision] bf16 vs fp32 ({part.get('reference_backend')}) log-probs, {part['sizes']}, "
             f"L={part['length']}, first/last {part['positions']} positions; reference {part['reference']['status']}"]
    for r in part["rows"]:
        if r.get("status") != "ok":
            lines.append(f"  {r['backend']:15s} {r['status']} {r.get('error', '')[:80]}")
            continue
        lines.append(f"  {r['backend']:15s} first max {r['first_max']:.2e} mean {r['first_mean']:.2e} | last max "
                     f"{r['last_max']:.2e} mean {r['last_mean']:.2e} | growth x{r['growth_max']} / "
                     f"x{r['growth_mean']}")
    return lines
