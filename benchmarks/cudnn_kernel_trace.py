"""Which GPU kernels one forward+backward of alibi_cudnn_attention launches, and for how long, against the
frontend's graphs executed directly (the anchor probe's method) and unbiased SDPA, at one shape.

    python benchmarks/cudnn_kernel_trace.py [--shape 4096x4] [--out DIR]

bf16, 8 heads, head dim 128, inputs as (b, h, s, d) views of (b, s, h, d) memory (the model's layout). Each
variant runs 3 warm-up steps, then 10 steps under torch.profiler. Prints one table per variant (kernel name,
calls, total GPU microseconds per step) and the GPU and wall time per step, and writes cudnn_kernel_trace.json.
A kernel in the op's table that the direct graphs do not launch is time the op adds on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modeling_alibi import alibi_cudnn  # noqa: E402

H, D, STEPS = 8, 128, 10
SCALE = D**-0.5


def variants(b: int, s: int) -> dict:
    q, k, v = (torch.randn(b, s, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
               for _ in range(3))  # (b, h, s, d) views of (b, s, h, d)
    grad = torch.randn_like(q)
    out, stats = alibi_cudnn._forward_op(q.detach(), k.detach(), v.detach(), SCALE)
    dq, dk, dv = (alibi_cudnn._empty_bshd(b, H, s, D, q) for _ in range(3))

    def op():
        torch.autograd.grad(alibi_cudnn.alibi_cudnn_attention(q, k, v, SCALE), (q, k, v), grad)

    def direct():  # the two graphs on preallocated buffers: no allocation, no autograd, no custom-op dispatch
        alibi_cudnn._run(False, SCALE, (q.detach(), k.detach(), v.detach(), out, stats))
        alibi_cudnn._run(True, SCALE, (q.detach(), k.detach(), v.detach(), out, stats, grad, dq, dk, dv))

    def sdpa():
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), grad)

    return {"op (autograd)": op, "graphs direct": direct, "sdpa unbiased": sdpa}


def trace(fn) -> dict:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            fn()
        torch.cuda.synchronize()
    wall_us = 1e6 * (time.perf_counter() - start) / STEPS
    kernels: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name][0] += 1
            kernels[event.name][1] += event.device_time
    rows = sorted(([name[:90], calls / STEPS, round(us / STEPS, 1)] for name, (calls, us) in kernels.items()),
                  key=lambda row: -row[2])
    return dict(gpu_us=round(sum(row[2] for row in rows), 1), wall_us=round(wall_us, 1), kernels=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x4", help="LENGTHxBATCH")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    s, b = (int(x) for x in args.shape.split("x"))
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, shape=args.shape, variants={})
    for name, fn in variants(b, s).items():
        row = result["variants"][name] = trace(fn)
        print(f"\n{name}: GPU {row['gpu_us']} us per step (profiled), wall {row['wall_us']} us")
        for kernel, calls, us in row["kernels"]:
            print(f"  {us:9.1f} us  x{calls:<4g} {kernel}")
    with open(os.path.join(args.out, "cudnn_kernel_trace.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
