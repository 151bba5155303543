"""The Triton ALiBi flash-attention kernel vs unbiased SDPA flash (the ceiling) and FlexAttention ALiBi, one GPU.

Method of /work/shared/research/anchor-bench/attn_bench.py: bf16, 8 heads, head_dim 128, batch * L = 16384
tokens, causal FLOPs (4 * B * h * L^2 * d / 2, times 3.5 for forward + backward), median of CUDA-event timings
after warmup. Before timing, each L compares our output and gradients with flex's (max abs difference, shown in
the table). Autotuning and torch.compile happen in that check, outside the timings. `--configs` (or
ALIBI_BENCH_CONFIGS=1) prints the autotune config each kernel picked per L. Writes $OUT/triton_alibi_bench.json
(OUT defaults to /tmp) and prints one table. About 3 minutes on an H100, most of it flex and Triton
compilation. On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/triton_alibi_bench.py [--lengths 1024 4096] [--configs] [--no-flex]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_timing import median_ms  # noqa: E402

HEADS, HEAD_DIM, TOKENS = 8, 128, 16384
LENGTHS = (1024, 4096, 16384, 65536)
SCALE = 1 / math.sqrt(HEAD_DIM)


def causal_tflops(batch: int, length: int, ms: float, backward: bool) -> float:
    flops = 4 * batch * HEADS * length * length * HEAD_DIM / 2 * (3.5 if backward else 1.0)
    return flops / ms / 1e9


def make_kernels(length: int, slopes: torch.Tensor, with_flex: bool) -> dict:
    """name -> fn(q, k, v) for one length (flex's block mask is built once per length, as training would)."""
    from modeling_alibi.alibi_triton import alibi_flash_attention

    kernels = {
        "sdpa_flash_nobias": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "triton_alibi": lambda q, k, v: alibi_flash_attention(q, k, v, slopes, SCALE),
    }
    if with_flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        compiled = torch.compile(flex_attention, dynamic=False)
        block_mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, length, length, device="cuda")

        def score_mod(score, b, h, qi, ki):
            return score - slopes[h] * (qi - ki)

        kernels["flex_alibi"] = lambda q, k, v: compiled(q, k, v, score_mod=score_mod, block_mask=block_mask)
    return kernels


def inputs(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    shape = (batch, HEADS, length, HEAD_DIM)
    q, k, v, grad_out = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator) for _ in range(4))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), grad_out


def forward_backward(fn, q, k, v, grad_out) -> list[torch.Tensor]:
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v)
    out.backward(grad_out)
    return [out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()]


def max_diffs(kernels: dict, batch: int, length: int) -> dict[str, float] | None:
    """Max |ours - flex| for the output and for the three gradients (also runs autotuning and compilation)."""
    q, k, v, grad_out = inputs(batch, length)
    ours = forward_backward(kernels["triton_alibi"], q, k, v, grad_out)
    if "flex_alibi" not in kernels:
        return None
    theirs = forward_backward(kernels["flex_alibi"], q, k, v, grad_out)
    names = ("out", "dq", "dk", "dv")
    return {name: (a.float() - b.float()).abs().max().item() for name, a, b in zip(names, ours, theirs, strict=True)}


def run_case(name: str, fn, batch: int, length: int, backward: bool) -> dict:
    torch.cuda.empty_cache()
    q, k, v, grad_out = inputs(batch, length)

    def step():
        out = fn(q, k, v)
        if backward:
            out.backward(grad_out)

    row = dict(case=name, B=batch, L=length, bwd=backward)
    try:
        ms = median_ms(step, reps=10 if length >= 16384 else 20)
        row.update(ms=round(ms, 3), tflops=round(causal_tflops(batch, length, ms, backward), 1))
    except torch.OutOfMemoryError:
        row.update(ms=None, tflops=None, error="OOM")
    return row


def print_configs(length: int) -> None:
    from modeling_alibi.alibi_triton import autotune_report

    for kernel, picks in autotune_report().items():
        for key, config in picks.items():
            if key.startswith(f"({length}, {length},"):
                print(f"  L={length} {kernel}: {config}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--configs", action="store_true", default=os.environ.get("ALIBI_BENCH_CONFIGS") == "1",
                        help="print the autotune config each Triton kernel picked per L")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (saves its compile time)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("triton_alibi_bench: no CUDA device, nothing to measure.")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("triton_alibi_bench: triton is not installed, nothing to measure.")
        return 0

    started = time.time()
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    slopes = torch.tensor([2 ** (-8 * (i + 1) / HEADS) for i in range(HEADS)], device="cuda")
    rows = []
    for length in args.lengths:
        batch = max(1, TOKENS // length)
        kernels = make_kernels(length, slopes, with_flex=not args.no_flex)
        diffs = max_diffs(kernels, batch, length)
        print(f"L={length}: max |triton - flex| {diffs} ({time.time() - started:.0f}s)", flush=True)
        if args.configs:
            print_configs(length)
        for backward in (False, True):
            results = {name: run_case(name, fn, batch, length, backward) for name, fn in kernels.items()}
            ceiling = results["sdpa_flash_nobias"].get("ms")
            for row in results.values():
                row["x_sdpa"] = round(ceiling / row["ms"], 3) if ceiling and row.get("ms") else None
                if row["case"] == "triton_alibi" and diffs is not None:
                    row["maxdiff_vs_flex"] = diffs["out"] if not backward else max(diffs.values())
                rows.append(row)
                print(json.dumps(row), flush=True)

    out_dir = os.environ.get("OUT", "/tmp")
    from modeling_alibi.alibi_triton import autotune_report

    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=sys.modules["triton"].__version__, rows=rows, autotune=autotune_report())
    with open(os.path.join(out_dir, "triton_alibi_bench.json"), "w") as f:
        json.dump(report, f, indent=1)

    print(f"\n{'case':18s} {'mode':8s} {'L':>6s} {'ms':>9s} {'TFLOP/s':>8s} {'x_sdpa':>7s} {'maxdiff':>9s}")
    for r in rows:
        mode = "fwd+bwd" if r["bwd"] else "fwd"
        diff = r.get("maxdiff_vs_flex")
        print(f"{r['case']:18s} {mode:8s} {r['L']:6d} {r.get('ms')!s:>9s} {r.get('tflops')!s:>8s} "
              f"{r.get('x_sdpa')!s:>7s} {'' if diff is None else f'{diff:.2e}':>9s}")
    print(f"total {time.time() - started:.0f}s; wrote {os.path.join(out_dir, 'triton_alibi_bench.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
