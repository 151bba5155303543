"""FlexAttention's compilations and call times when every call brings new score_mod/mask_mod closures and lengths.

Does flex recompile then? Two patterns, each called over a sequence of lengths (repeats included), bf16, 8 heads,
head dim 128:
  per_call_closure : torch.compile(flex_attention) called with closures made per call (transformers' pattern)
  compiled_wrapper : a compiled function that takes tensors and defines the closures inside the trace
Counts Dynamo compilations and times each call (after the first of its length). Prints a table and writes
$OUT/flex_compile_probe.json (OUT defaults to .). On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/flex_compile_probe.py
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch._dynamo
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

H, D, DEVICE = 8, 128, "cuda"
LENGTHS = [1024, 2048, 1024, 3000, 4096, 777, 8192, 4096, 5000, 6000, 7000, 16384, 1024]
SLOPES = 2.0 ** -torch.arange(1, H + 1, device=DEVICE, dtype=torch.float32)

compiled_flex = torch.compile(flex_attention, dynamic=True)


def per_call_closure(q, k, v, positions, block_mask):
    def score_mod(score, b, h, q_idx, kv_idx):
        return score - SLOPES[h] * (positions[b, q_idx] - positions[b, kv_idx]).to(torch.float32)

    return compiled_flex(q, k, v, score_mod=score_mod, block_mask=block_mask)


@torch.compile(dynamic=True)
def compiled_wrapper(q, k, v, slopes, positions, block_mask):
    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (positions[b, q_idx] - positions[b, kv_idx]).to(torch.float32)

    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)


def causal_block_mask(positions: torch.Tensor, L: int):
    def mask_mod(b, h, q_idx, kv_idx):
        return positions[b, kv_idx] <= positions[b, q_idx]

    start = time.perf_counter()
    mask = create_block_mask(mask_mod, positions.shape[0], None, L, L, device=DEVICE)
    torch.cuda.synchronize()
    return mask, (time.perf_counter() - start) * 1e3


def probe(name: str, fn) -> list[dict]:
    torch._dynamo.reset()
    rows, seen = [], set()
    for L in LENGTHS:
        positions = torch.arange(L, device=DEVICE)[None]
        q, k, v = (torch.randn(1, H, L, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
        block_mask, mask_ms = causal_block_mask(positions, L)
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        torch.cuda.synchronize()
        start = time.perf_counter()
        if name == "compiled_wrapper":
            fn(q, k, v, SLOPES, positions, block_mask)
        else:
            fn(q, k, v, positions, block_mask)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1e3
        row = dict(pattern=name, L=L, first_of_length=L not in seen, ms=round(ms, 2), block_mask_ms=round(mask_ms, 2),
                   new_graphs=torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)
        seen.add(L)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    rows = probe("per_call_closure", per_call_closure) + probe("compiled_wrapper", compiled_wrapper)
    with open(os.path.join(os.environ.get("OUT", "."), "flex_compile_probe.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n{'pattern':18s} {'L':>6s} {'first':>6s} {'ms':>9s} {'mask ms':>8s} {'graphs':>6s}")
    for r in rows:
        print(f"{r['pattern']:18s} {r['L']:6d} {str(r['first_of_length']):>6s} {r['ms']:9.2f} "
              f"{r['block_mask_ms']:8.2f} {r['new_graphs']:6d}")


if __name__ == "__main__":
    main()
