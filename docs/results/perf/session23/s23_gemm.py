"""Session 23: the GEMMs of the bench model's compiled training step (16 x 512, bf16 parameters, fused AdamW).

1. census: every extern GEMM inductor calls (extern_kernels.*mm*, wrapped) and aten::_addmm_activation (the ReLU
   epilogue op), with shapes and strides; each one's GPU time in the step (profiler, mode default, grouped by shape).
2. isolation: each distinct signature alone (CUDA events, 50 reps): as called; an addmm without its bias; with
   torch's cuBLASLt preference; TFLOP/s against the bf16 rate.

    python3 s23_gemm.py OUTDIR

Lint markers (noqa) added after call 1; no statement changed.
"""
import json
import sys
import time
from collections import defaultdict

import torch
from torch._inductor.select_algorithm import extern_kernels

sys.path.insert(0, "benchmarks")
from modeling_alibi import AlibiConfig, AlibiForCausalLM  # noqa: E402
from modeling_alibi.training.loop import training_loss  # noqa: E402

SIGS = defaultdict(int)
ORIG = {}


def sig_of(t):
    return (tuple(t.shape), tuple(t.stride()), str(t.dtype)) if isinstance(t, torch.Tensor) else repr(t)


def wrap(name, fn):
    def wrapped(*args, **kwargs):
        key = (name, tuple(sig_of(a) for a in args),
               tuple(sorted((k, sig_of(v)) for k, v in kwargs.items() if k != "out")),
               sig_of(kwargs["out"]) if "out" in kwargs else None)
        SIGS[key] += 1
        return fn(*args, **kwargs)
    return wrapped


def flops(name, args):
    if name in ("addmm", "bias_addmm"):
        a, b = args[1], args[2]
    else:
        a, b = args[0], args[1]
    return 2 * a[0][0] * a[0][1] * b[0][1]


def main(out):
    for name in list(vars(extern_kernels)):
        if "mm" in name:
            ORIG[name] = getattr(extern_kernels, name)
            setattr(extern_kernels, name, wrap(name, ORIG[name]))
    config = AlibiConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=16, num_attention_heads=8,
                         intermediate_size=4096, hidden_dropout=0.0, train_seq_len=512)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AlibiForCausalLM(config).to(torch.bfloat16).train()
    compiled = torch.compile(training_loss(model))  # mode default: extern calls visible to the profiler
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(3, 32000, (16, 512), device="cuda")

    def step():
        loss = compiled(input_ids=x, labels=x)  # noqa: F821
        loss.backward()
        opt.step()  # noqa: F821
        opt.zero_grad(set_to_none=True)  # noqa: F821

    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    print(f"first step {time.perf_counter() - t0:.1f} s", flush=True)
    SIGS.clear()
    step()
    torch.cuda.synchronize()
    sigs = dict(SIGS)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    rows = []
    total_gpu = 0.0
    for e in prof.key_averages(group_by_input_shape=True):
        if e.device_type.name == "CUDA":
            total_gpu += e.self_device_time_total
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in ("aten::mm", "aten::addmm", "aten::_addmm_activation", "aten::bmm") and e.device_time_total > 0:
            rows.append(dict(op=e.key, shapes=str(e.input_shapes)[:160], calls=e.count // 3,
                             us=round(e.device_time_total / e.count, 2), ms_step=round(e.device_time_total / 3e3, 3)))
    rows.sort(key=lambda r: -r["ms_step"])
    gemm_ms = sum(r["ms_step"] for r in rows)
    print(f"\nGPU busy {total_gpu / 3e3:.2f} ms a step; GEMMs {gemm_ms:.2f} ms")
    for r in rows:
        print(f"{r['ms_step']:7.3f} ms  x{r['calls']:<3} {r['us']:8.2f} us  {r['op']:24s} {r['shapes']}")
    result = dict(census=rows, gpu_ms=total_gpu / 3e3, gemm_ms=gemm_ms)
    del model, compiled, opt
    torch.cuda.empty_cache()

    def bench(fn, reps=50):
        for _ in range(5):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / reps  # us

    def make(s):
        if not isinstance(s, tuple):
            return eval(s)  # noqa: S307 (our own repr of ints/floats)
        shape, stride, dtype = s
        t = torch.empty_strided(shape, stride, dtype=getattr(torch, dtype.split(".")[1]), device="cuda")
        return t.normal_()

    iso = []
    print("\nisolation: signature, calls a step, us as called, us no-bias mm, us cublaslt, TFLOP/s as called")
    for (name, args, kwargs, outsig), n in sorted(sigs.items(), key=lambda kv: -flops(kv[0][0], kv[0][1])):
        fn = ORIG[name]
        a = [make(s) for s in args]
        kw = {k: make(v) for k, v in kwargs}
        if outsig is not None:
            kw["out"] = make(outsig)
        f = flops(name, args)
        us = bench(lambda: fn(*a, **kw))  # noqa: B023
        nobias = None
        if name in ("addmm", "bias_addmm"):
            nobias = bench(lambda: torch.mm(a[1], a[2]))  # noqa: B023
        torch.backends.cuda.preferred_blas_library("cublaslt")
        lt = bench(lambda: fn(*a, **kw))  # noqa: B023
        torch.backends.cuda.preferred_blas_library("cublas")
        row = dict(name=name, args=[list(map(list, s[:2])) if isinstance(s, tuple) else s for s in args], calls=n,
                   us=round(us, 2), us_nobias=nobias and round(nobias, 2), us_cublaslt=round(lt, 2),
                   tflops=round(f / us / 1e6, 1))
        iso.append(row)
        print(json.dumps(row), flush=True)
    # fc1 with the ReLU epilogue, as alibi_linear_relu calls it
    h = torch.randn(8192, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    us = bench(lambda: torch._addmm_activation(b, h, w.t()))
    us_mm = bench(lambda: torch.mm(h, w.t()))
    us_addmm = bench(lambda: torch.addmm(b, h, w.t()))
    print(f"fc1 relu epilogue {us:.2f} us, mm {us_mm:.2f}, addmm {us_addmm:.2f} ({2*8192*1024*4096/us/1e6:.0f} TFLOP/s)")  # noqa: E501
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    us_big = bench(lambda: torch.mm(big, big), reps=20)
    print(f"8192^3 mm {us_big:.1f} us: {2*8192**3/us_big/1e6:.0f} TFLOP/s")
    result.update(isolation=iso, fc1_relu_us=us, fc1_mm_us=us_mm, fc1_addmm_us=us_addmm,
                  square_tflops=2 * 8192**3 / us_big / 1e6)
    with open(f"{out}/s23_gemm.json", "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
