"""ALiBi attention kernels against unbiased SDPA flash on one GPU: time, TFLOP/s, extra memory, accuracy.

Method and sizes follow shared/research/anchor-bench/attn_bench.py so ratios are comparable: bf16, 8 heads,
head dim 128, B * L = 16,384 tokens, CUDA-event medians after warm-up, causal FLOPs (x3.5 for fwd+bwd).

Prints a table and writes attention_bench.json to --out (default $OUT or .). On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/attention_bench.py [--lengths 1024,4096,16384] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from cuda_timing import median_ms  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modeling_alibi.alibi_attention import flex_attention_forward  # noqa: E402
from modeling_alibi.alibi_mask import AlibiAttentionMask, alibi_slopes  # noqa: E402

H, D = 8, 128
DEVICE = "cuda"
# Every variant below is its own score_mod code object and all share flex_attention's Dynamo cache; the default
# limit of 8 entries would silently drop later variants to the unfused fallback (seen: 20 ms at L=4096).
torch._dynamo.config.cache_size_limit = 64
torch._dynamo.config.accumulated_cache_size_limit = 512
SLOPES = alibi_slopes(H).to(DEVICE)
FLEX_DYNAMIC = torch.compile(flex_attention, dynamic=True)
FLEX_STATIC = torch.compile(flex_attention, dynamic=False)
# Candidate tile shapes for the Hopper flex kernel (forward keys; the backward picks its own unless given).
TUNED = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2}


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def alibi_score(score, b, h, q_idx, kv_idx):
    return score - SLOPES[h] * (q_idx - kv_idx).to(torch.float32)


def make_cases(L: int, truncation: float) -> dict:
    block_mask = create_block_mask(causal, None, None, L, L, device=DEVICE)
    positions = torch.arange(L, device=DEVICE)[None]  # (1, L): the model's position-lookup form

    def lookup_score(score, b, h, q_idx, kv_idx):
        return score - SLOPES[h] * (positions[0, q_idx] - positions[0, kv_idx]).to(torch.float32)

    windows = (truncation / SLOPES).ceil().long()  # (h,): keys further than T / m_h carry < e^-T weight

    def windowed(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= windows[h])

    window_mask = create_block_mask(windowed, None, H, L, L, device=DEVICE, _compile=True)

    def sdpa_alibi(q, k, v):
        i = torch.arange(L, device=DEVICE)
        bias = -SLOPES[:, None, None] * (i[:, None] - i[None, :]).float()  # (h, q, k) fp32
        bias = bias.masked_fill(i[None, :] > i[:, None], torch.finfo(torch.float32).min).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])

    def model_flex(q, k, v):
        """What AlibiForCausalLM's flex backend runs (block mask cached across calls, as in training)."""
        mask = AlibiAttentionMask(positions.expand(q.shape[0], L), positions.expand(q.shape[0], L), None, SLOPES)
        return flex_attention_forward(None, q, k, v, mask, scaling=D**-0.5)[0].transpose(1, 2)  # (b, h, q, d)

    return {
        "model_flex": model_flex,
        "flash_nobias": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "flex_alibi_dynamic": lambda q, k, v: FLEX_DYNAMIC(q, k, v, score_mod=alibi_score, block_mask=block_mask),
        "flex_alibi_lookup": lambda q, k, v: FLEX_DYNAMIC(q, k, v, score_mod=lookup_score, block_mask=block_mask),
        "flex_alibi_static": lambda q, k, v: FLEX_STATIC(q, k, v, score_mod=alibi_score, block_mask=block_mask),
        "flex_alibi_tuned": lambda q, k, v: FLEX_STATIC(
            q, k, v, score_mod=alibi_score, block_mask=block_mask, kernel_options=TUNED),
        f"flex_alibi_trunc{truncation:g}": lambda q, k, v: FLEX_STATIC(
            q, k, v, score_mod=alibi_score, block_mask=window_mask),
        "sdpa_alibi_mask": sdpa_alibi if L <= 16384 else None,
    }


def run_case(name: str, fn, L: int, backward: bool) -> dict:
    B = max(1, 16384 // L)
    torch.cuda.empty_cache()
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE, dtype=torch.bfloat16, requires_grad=backward) for _ in range(3))
    grad = torch.randn_like(q)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.max_memory_allocated()

    def step():
        out = fn(q, k, v)
        if backward:
            out.backward(grad)

    row = dict(case=name, B=B, L=L, backward=backward)
    try:
        ms = median_ms(step, reps=10 if L >= 16384 else 20)
        flops = 4 * B * H * L * L * D / 2 * (3.5 if backward else 1.0)
        row.update(ms=round(ms, 3), tflops=round(flops / ms / 1e9, 1),
                   extra_mib=round((torch.cuda.max_memory_allocated() - base) / 2**20))
    except torch.OutOfMemoryError:
        row.update(ms=None, tflops=None, extra_mib="OOM")
    except Exception as error:  # report and go on: one failing variant must not hide the others
        row.update(ms=None, tflops=None, extra_mib=f"ERR {type(error).__name__}: {str(error)[:100]}")
    print(json.dumps(row), flush=True)
    return row


def accuracy(L: int = 1024, truncation: float = 20.0) -> list[dict]:
    """Relative error of each bf16 kernel against a float64 reference on the same random inputs."""
    q, k, v = (torch.randn(2, H, L, D, device=DEVICE) for _ in range(3))
    i = torch.arange(L, device=DEVICE)
    distance = (i[:, None] - i[None, :]).double()
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(D) - SLOPES.double()[:, None, None] * distance
    reference = scores.masked_fill(distance < 0, float("-inf")).softmax(-1) @ v.double()
    rows = []
    for name, fn in make_cases(L, truncation).items():
        if fn is None or name == "flash_nobias":
            continue
        out = fn(q.bfloat16(), k.bfloat16(), v.bfloat16()).double()
        rows.append(dict(check=name, L=L, rel_err=float((out - reference).norm() / reference.norm())))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--truncation", type=float, default=20.0)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    checks = accuracy(truncation=args.truncation)
    rows = []
    for backward in (False, True):
        for L in lengths:
            for name, fn in make_cases(L, args.truncation).items():
                if fn is not None:
                    rows.append(run_case(name, fn, L, backward))
    ceiling = {(r["L"], r["backward"]): r["ms"] for r in rows if r["case"] == "flash_nobias"}
    for r in rows:
        base = ceiling.get((r["L"], r["backward"]))
        r["vs_flash"] = round(base / r["ms"], 3) if base and r["ms"] else None
    with open(os.path.join(args.out, "attention_bench.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, accuracy=checks, rows=rows), f,
                  indent=1)
    print(f"\n{'case':24s} {'pass':8s} {'L':>6s} {'ms':>8s} {'TFLOP/s':>8s} {'x flash':>8s} {'extra MiB':>10s}")
    for r in rows:
        print(f"{r['case']:24s} {'fwd+bwd' if r['backward'] else 'fwd':8s} {r['L']:6d} {r['ms']!s:>8} "
              f"{r['tflops']!s:>8} {r['vs_flash']!s:>8} {r['extra_mib']!s:>10}")


if __name__ == "__main__":
    main()
