"""Session 23: the twenty-second session's s22_time.py (step ms of the bench model, 16 x 512, fused AdamW, bf16
parameters, variants interleaved, each variant's kernel census over 5 steps) with one more variant, "lt": mode
reduce-overhead with torch.backends.cuda.preferred_blas_library("cublaslt") set before compiling ("cublas" for the
others). Call 1 ran it from .ab/:

    python3 s23_time.py OUTDIR ro,lt,ro,lt
"""
import faulthandler
import json
import sys
import time
import traceback

import torch

sys.path.insert(0, "benchmarks")
from modeling_alibi import AlibiConfig, AlibiForCausalLM  # noqa: E402
from modeling_alibi.training.loop import training_loss  # noqa: E402

VARIANTS = {
    "ro": dict(mode="reduce-overhead"),
    "nomix": dict(options={"triton.cudagraphs": True, "triton.mix_order_reduction": False}),
    "combo": dict(options={"triton.cudagraphs": True, "combo_kernels": True}),
    "lt": dict(mode="reduce-overhead"),  # with torch.backends.cuda.preferred_blas_library("cublaslt")
}


def census(step, reps=5, top=50):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    busy = sum(e.self_device_time_total for e in events) / 1e3 / reps
    launches = sum(e.count for e in events) / reps
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    kernels = [dict(name=e.key[:100], ms=round(e.self_device_time_total / 1e3 / reps, 3), calls=e.count // reps)
               for e in events[:top]]
    return round(busy, 3), launches, kernels


def time_variant(name: str, profile: bool) -> dict:
    torch._dynamo.reset()
    torch.backends.cuda.preferred_blas_library("cublaslt" if name == "lt" else "cublas")
    config = AlibiConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=16, num_attention_heads=8,
                         intermediate_size=4096, hidden_dropout=0.0, train_seq_len=512)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AlibiForCausalLM(config).to(torch.bfloat16).train()
    compiled = torch.compile(training_loss(model), **VARIANTS[name])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(3, 32000, (16, 512), device="cuda")

    def step():
        loss = compiled(input_ids=x, labels=x)  # noqa: F821 (deleted after use below)
        loss.backward()
        opt.step()  # noqa: F821
        opt.zero_grad(set_to_none=True)  # noqa: F821
        return loss

    print(f"{name}: built at {time.perf_counter() - T0:.1f} s", flush=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    first_loss = step().item()
    first = time.perf_counter() - t0
    print(f"{name}: first step {first:.1f} s", flush=True)
    losses = [first_loss] + [step().item() for _ in range(4)]
    rows = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        rows.append(round((time.perf_counter() - t0) * 100, 3))  # ms per step
    result = dict(variant=name, ms=rows, first_step_s=round(first, 1), losses=[round(v, 5) for v in losses],
                  peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    if profile:
        result["gpu_ms"], result["launches"], result["kernels"] = census(step)
    print("TIME", json.dumps({k: v for k, v in result.items() if k != "kernels"}), flush=True)
    for k in result.get("kernels", []):
        print(f"   {k['ms']:8.3f} ms x{k['calls']:<4} {k['name']}")
    del model, compiled, opt
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


T0 = time.perf_counter()

if __name__ == "__main__":
    faulthandler.dump_traceback_later(120, repeat=True)
    out, names = sys.argv[1], sys.argv[2].split(",")
    results, seen = [], set()
    for name in names:
        try:
            results.append(time_variant(name, profile=name not in seen))
            seen.add(name)
        except Exception as error:  # noqa: BLE001
            print(f"TIME {name} FAILED {str(error)[:300]}", flush=True)
            traceback.print_exc(limit=5)
        with open(f"{out}/s23_time.json", "w") as f:
            json.dump(results, f, indent=1)
