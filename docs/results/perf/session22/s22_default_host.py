"""Session 22: why mode "default" trains slower than no compile (run N: 152,770 against 240,615 tokens/s). The bench
model (16 x 512, fused AdamW, bf16 parameters) compiled with torch.compile(training_loss(model)) in mode default:
ms per step (3 rows of 10), GPU busy ms per step (profiler), and where the host's time goes in one step (cProfile,
top 30 by total time), and the same for the uncompiled model. Lint markers (noqa) added afterwards; no statement
changed."""
import cProfile
import json
import pstats
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from modeling_alibi import AlibiConfig, AlibiForCausalLM  # noqa: E402
from modeling_alibi.training.loop import training_loss  # noqa: E402


def run(name):
    config = AlibiConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=16, num_attention_heads=8,
                         intermediate_size=4096, hidden_dropout=0.0, train_seq_len=512)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AlibiForCausalLM(config).to(torch.bfloat16).train()
    loss_fn = training_loss(model)
    if name == "default":
        loss_fn = torch.compile(loss_fn)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(3, 32000, (16, 512), device="cuda")

    def step():
        loss = loss_fn(input_ids=x, labels=x)  # noqa: F821 (deleted after use below)
        loss.backward()
        opt.step()  # noqa: F821
        opt.zero_grad(set_to_none=True)  # noqa: F821

    t0 = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    print(f"{name}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        rows.append(round((time.perf_counter() - t0) * 100, 3))
    # Host time of one step with the GPU idle at its start: how long until the host has queued all of it.
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    host_ms = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    busy = sum(e.self_device_time_total for e in events) / 1e3 / 3
    launches = sum(e.count for e in events) / 3
    print("TIME", json.dumps(dict(variant=name, ms=rows, host_ms_one_step=round(host_ms, 2), gpu_ms=round(busy, 3),
                                  launches=launches)), flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    del model, opt, loss_fn


if __name__ == "__main__":
    for name in sys.argv[1].split(","):
        run(name)
