"""Session 24: the training step's GEMMs that cuBLAS runs after a memset (q, k, v's and fc1's forward, fc2's input
gradient, the head's forward and weight gradient), as one call or split along M (row blocks of the output,
written in place through out=), or as a batched GEMM. Each variant is timed as 20 back-to-back calls inside one
CUDA graph (as the training step replays them), and counted under the profiler (memsets and kernels per call).

    python3 s24_gemm_alt.py OUTDIR
"""
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

BF16 = dict(device="cuda", dtype=torch.bfloat16)


def graph_us(fn, calls=20, reps=20):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return round(sorted(times)[reps // 2], 2)


def activities(fn, reps=5):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    return dict(memsets=sum("Memset" in n for n in names) / reps, kernels=sum("Memset" not in n for n in names) / reps,
                names=sorted({n[:60] for n in names}))


def cases():
    torch.manual_seed(0)
    x, g = torch.randn(8192, 1024, **BF16), torch.randn(8192, 1024, **BF16)
    w_qkv, b_qkv = torch.randn(3072, 1024, **BF16) / 32, torch.randn(3072, **BF16)
    w1, b1 = torch.randn(4096, 1024, **BF16) / 32, torch.randn(4096, **BF16)
    w2 = torch.randn(1024, 4096, **BF16) / 64
    emb = torch.randn(32000, 1024, **BF16) / 32
    g_logits = torch.randn(8192, 32000, **BF16) / 100
    # (name, output shape, full(out), rows(out, lo, hi): the same for output rows lo:hi)
    yield ("qkv forward (addmm)", (8192, 3072), lambda out: torch.addmm(b_qkv, x, w_qkv.t(), out=out),
           lambda out, lo, hi: torch.addmm(b_qkv, x[lo:hi], w_qkv.t(), out=out[lo:hi]))
    yield ("fc1 forward (_addmm_activation)", (8192, 4096),
           lambda out: torch._addmm_activation(b1, x, w1.t(), out=out),
           lambda out, lo, hi: torch._addmm_activation(b1, x[lo:hi], w1.t(), out=out[lo:hi]))
    yield ("fc2 input gradient (mm)", (8192, 4096), lambda out: torch.mm(g, w2, out=out),
           lambda out, lo, hi: torch.mm(g[lo:hi], w2, out=out[lo:hi]))
    yield ("head forward (mm)", (8192, 32000), lambda out: torch.mm(x, emb.t(), out=out),
           lambda out, lo, hi: torch.mm(x[lo:hi], emb.t(), out=out[lo:hi]))
    yield ("head weight gradient (mm)", (32000, 1024), lambda out: torch.mm(g_logits.t(), x, out=out),
           lambda out, lo, hi: torch.mm(g_logits.t()[lo:hi], x, out=out[lo:hi]))


def main(out_dir):
    rows = []
    for name, shape, full, part in cases():
        out = torch.empty(*shape, **BF16)
        ref = out.clone()
        full(ref)
        m = shape[0]
        variants = {"one call": lambda full=full, out=out: full(out)}
        for pieces in (2, 4):
            step = m // pieces
            variants[f"{pieces} row blocks"] = (lambda step=step, pieces=pieces, part=part, out=out:
                                                [part(out, i * step, (i + 1) * step) for i in range(pieces)])
        for label, fn in variants.items():
            fn()
            same = torch.equal(out, ref)
            row = dict(gemm=name, variant=label, us=graph_us(fn), equal_to_one_call=same, **activities(fn))
            rows.append(row)
            print(f"{name:34s} {label:13s} {row['us']:8.2f} us  memsets {row['memsets']:.0f} kernels "
                  f"{row['kernels']:.0f} equal {same}  {row['names']}", flush=True)
    with open(f"{out_dir}/s24_gemm_alt.json", "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
