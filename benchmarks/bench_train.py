"""model_bench.py's `train` part: tokens/s and MFU of a whole training step (fwd+bwd+AdamW), ours against MPT, BLOOM.

L=512, 16 sequences (FULL sizes). Ours on the default backend (flex on CUDA); MPT and BLOOM eager (transformers
refuses sdpa for them). All use fused AdamW; the row also gives tokens/s with the default (foreach) AdamW of the
anchor method. FLOPs per step = 6 * params * tokens + attention 12 * layers * d * L * tokens / 2 (causal); the
peak is the bf16 matmul rate measured in the same run (harness.py). The `train_compiled` extra adds rows for
our compiled step in mode "default" and "reduce-overhead" (CUDA only), and marks the one that `alibi-lm train`
uses by default on one GPU (training.loop.default_compile_mode). Both compile `training.loop.training_loss(model)`,
the loss alone, as `alibi-lm train` does; run D (thirteenth session) and earlier runs compiled the module. Its
rows are the `[train]` section of model_bench's table. On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/model_bench.py --parts train
    HF_HUB_OFFLINE=1 python3 benchmarks/model_bench.py --parts train,train_compiled
"""

from __future__ import annotations

import time

import torch

from modeling_alibi.training.loop import default_compile_mode, training_loss

from harness import Bench


def run(bench: Bench) -> None:
    """The part: ours on the default backend, then each peer."""
    rows = train_rows(bench)
    model = bench.ours()
    rows.append(dict(model="alibi", backend=model.config._attn_implementation,
                     **bench.case("train alibi", train_rate, bench, model)))
    del model
    bench.save()
    for name, make in bench.peers():
        model = bench.build(make)
        rows.append(dict(model=name, backend="eager", **bench.case(f"train {name}", train_rate, bench, model)))
        del model
        bench.save()


def extra_compiled(bench: Bench) -> None:
    """The `train_compiled` extra: rows for our compiled model, placed after the uncompiled row."""
    rows = train_rows(bench)
    # The mode `alibi-lm train` picks by default on one GPU at this row length: its row is marked.
    default_mode, _ = default_compile_mode("cuda", 1, bench.S["train_len"])
    # Mode "default", then with CUDA graphs for forward and backward.
    for position, (label, mode) in enumerate((("", "default"), (" reduce-overhead", "reduce-overhead"))):
        model = bench.ours()
        compiled = torch.compile(training_loss(model), mode=mode)  # as alibi-lm train compiles its step
        rows.insert(min(1 + position, len(rows)), dict(
            model=f"alibi torch.compile{label}", backend=model.config._attn_implementation,
            train_default=mode == default_mode,
            **bench.case(f"train alibi compiled{label}", train_rate, bench, model, compiled)))
        del model, compiled
        bench.save()


def train_rows(bench: Bench) -> list:
    return bench.result.setdefault("train", dict(batch=bench.S["train_batch"], length=bench.S["train_len"],
                                                 optimizer="fused AdamW (CUDA), all models", rows=[]))["rows"]


def train_rate(bench: Bench, model: torch.nn.Module, step_loss=None) -> dict:
    """One case: tokens/s with fused AdamW (and with the default AdamW), TFLOP/s and MFU. step_loss(**batch) gives
    the loss; by default the model's own output's."""
    s = bench.S
    B, L = s["train_batch"], s["train_len"]
    model.train()
    x = bench.ids(L, B)
    step_loss = step_loss if step_loss is not None else lambda **batch: model(**batch).loss
    params = sum(p.numel() for p in model.parameters())
    out = dict(params=params)
    for label, fused in (("tok_s", bench.cuda), ("tok_s_default_adamw", None)):
        first_step_s, tok_s = adamw_rate(bench, model, step_loss, x, fused)
        if label == "tok_s":
            out["first_step_s"] = first_step_s  # includes compilation
        out[label] = tok_s
    flops_per_token = 6 * params + 12 * s["layers"] * s["d"] * L / 2
    out["tflops"] = round(flops_per_token * out["tok_s"] / 1e12, 1)
    peak = bench.result["meta"].get("matmul_tflops")
    out["mfu"] = round(out["tflops"] / peak, 3) if peak else None
    return out


def adamw_rate(bench: Bench, model: torch.nn.Module, step_loss, x: torch.Tensor, fused) -> tuple[float, int]:
    """(first step seconds, tokens/s) of whole steps with a fresh AdamW(fused=fused), freed on return."""
    s = bench.S
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

    def step():
        loss = step_loss(input_ids=x, labels=x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    bench.sync()
    t0 = time.perf_counter()
    step()
    bench.sync()
    first_step_s = round(time.perf_counter() - t0, 2)
    for _ in range(s["train_warmup"] - 1):
        step()
    bench.sync()
    t0 = time.perf_counter()
    for _ in range(s["train_reps"]):
        step()
    bench.sync()
    return first_step_s, round(s["train_batch"] * s["train_len"] * s["train_reps"] / (time.perf_counter() - t0))


def report(part: dict) -> list[str]:
    """The `[train]` section of the table."""
    lines = [f"[train] L={part['length']} x {part['batch']} seqs, bf16 weights, {part['optimizer']}",
             f"  {'model':35s} {'backend':15s} {'params':>8s} {'tok/s':>9s} {'(adamw)':>9s} {'TFLOP/s':>8s} "
             f"{'MFU':>6s} {'1st step':>8s} {'x mpt':>6s} {'x bloom':>7s}"]
    rate = {r["model"]: r.get("tok_s") for r in part["rows"] if r.get("status") == "ok"}
    for r in part["rows"]:
        if r.get("status") != "ok":
            lines.append(f"  {r['model']:35s} {r['backend']:15s} {r['status'].upper()} {r.get('error', '')[:80]}")
            continue
        mpt, bloom = (f"{r['tok_s'] / rate[p]:.2f}" if rate.get(p) else "-" for p in ("mpt", "bloom"))
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(f"  {r['model']:35s} {r['backend']:15s} {r['params'] / 1e6:7.1f}M {r['tok_s']:9d} "
                     f"{r['tok_s_default_adamw']:9d} {r['tflops']:8.1f} {mfu:>6s} {r['first_step_s']:8.1f} "
                     f"{mpt:>6s} {bloom:>7s}{'  <- alibi-lm train default' if r.get('train_default') else ''}")
    return lines
