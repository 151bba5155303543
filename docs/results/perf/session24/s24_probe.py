"""Session 24: where the training step's 82 memsets and 32 host-to-device copies come from, and what follows them.

    python3 s24_probe.py OUTDIR

A: mode default (no CUDA graphs), CPU + CUDA profiler: each host operator that launched a memset or a copy, with
   its input shapes and the device activities it launched.
B: reduce-overhead: one step's device activities in order (name, µs, gap before it), to OUTDIR/s24_order.json.
C: the step's input-gradient GEMM shapes alone: memsets per call and µs per call under the default settings,
   without reduced-precision bf16 reductions, and with cuBLASLt preferred.
"""
import json
import sys
import time
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "benchmarks")
from modeling_alibi import AlibiConfig, AlibiForCausalLM  # noqa: E402
from modeling_alibi.training.loop import training_loss  # noqa: E402


def model_step(mode):
    torch._dynamo.reset()
    config = AlibiConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=16, num_attention_heads=8,
                         intermediate_size=4096, hidden_dropout=0.0, train_seq_len=512)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AlibiForCausalLM(config).to(torch.bfloat16).train()
    compiled = torch.compile(training_loss(model), mode=mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(3, 32000, (16, 512), device="cuda")

    def step():
        compiled(input_ids=x, labels=x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(4):
        step()
    torch.cuda.synchronize()
    return step


def part_a(out):
    step = model_step("default")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        step()
        torch.cuda.synchronize()
    found = Counter()
    for e in prof.events():
        kernels = [k.name for k in getattr(e, "kernels", [])]
        if any("Memset" in k or "Memcpy" in k for k in kernels):
            found[(e.name, str(e.input_shapes)[:160], " | ".join(k[:40] for k in kernels))] += 1
    rows = [dict(op=op, shapes=shapes, activities=acts, count=n) for (op, shapes, acts), n in found.most_common()]
    for r in rows:
        print(f"A x{r['count']:<3} {r['op'][:60]:60s} {r['shapes']}\n      -> {r['activities']}")
    out["a"] = rows


def part_b(out):
    step = model_step("reduce-overhead")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type.name == "CUDA")
    order, reach = [], spans[0][0]
    for start, end, name in spans:
        order.append(dict(name=name[:80], us=round(end - start, 1), gap=round(max(0.0, start - reach), 1)))
        reach = max(reach, end)
    out["b"] = order
    print(f"B {len(order)} activities, {sum(o['gap'] for o in order):.0f} us of gaps")


def gemm_census(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    acts = Counter()
    total = 0.0
    for e in prof.events():
        if e.device_type.name == "CUDA":
            acts[e.name[:50]] += 1
            total += e.time_range.end - e.time_range.start
    return {k: v / reps for k, v in acts.items()}, round(total / reps, 1)


def part_c(out):
    rows = []
    for label, setup in (("default", lambda: None),
                         ("no-reduced-bf16", lambda: setattr(torch.backends.cuda.matmul,
                                                             "allow_bf16_reduced_precision_reduction", False)),
                         ("cublaslt", lambda: torch.backends.cuda.preferred_blas_library("cublaslt"))):
        setup()
        for n, k in ((1024, 1024), (3072, 1024), (4096, 1024), (1024, 4096), (32000, 1024)):
            grad = torch.randn(8192, n, device="cuda", dtype=torch.bfloat16)
            weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            x = torch.randn(8192, k, device="cuda", dtype=torch.bfloat16)
            for what, fn in (("grad_x", lambda g=grad, w=weight: g @ w), ("grad_w", lambda g=grad, x=x: g.t() @ x),
                             ("fwd", lambda x=x, w=weight: x @ w.t())):
                acts, us = gemm_census(fn)
                rows.append(dict(setting=label, n=n, k=k, what=what, us=us, acts=acts))
                print(f"C {label:16s} {what:6s} N={n:5d} K={k:4d} {us:7.1f} us  {acts}")
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
        torch.backends.cuda.preferred_blas_library("default")
    out["c"] = rows


if __name__ == "__main__":
    OUT = sys.argv[1]
    result = {}
    for part in (part_c, part_a, part_b):
        t0 = time.perf_counter()
        try:
            part(result)
        except Exception as error:  # noqa: BLE001
            print(f"{part.__name__} FAILED {error!r:.300}", flush=True)
        print(f"{part.__name__} took {time.perf_counter() - t0:.1f} s", flush=True)
        with open(f"{OUT}/s24_probe.json", "w") as f:
            json.dump(result, f, indent=1)
