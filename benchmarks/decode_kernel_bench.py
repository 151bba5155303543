"""The Triton decode kernel (alibi_triton_decode.py) against the bytes it must read, at batch 1.

For one decode step (q = 1, 8 heads, d 128, bf16) over a static cache of `context` keys plus empty slots, it
times, with the anchors' CUDA-event method (benchmarks/cuda_timing.py) around replays of a CUDA graph that holds
REPEAT calls (so no Python launch time is counted, as in `graph_generate`):
  * the kernel for each launch setting in the grid (programs per SM, keys per tile, pipeline stages, warps),
    with the largest error against the fallback;
  * for the fastest setting, each launch's GPU time (split pass, merge pass, index codes) from the profiler;
  * with --baseline FILE (an earlier alibi_triton_decode.py, e.g. `git show REV:modeling_alibi/...`), that
    version at its own defaults, timed and profiled the same way;
  * the model's matmul fallback (`eager_attention_forward`: two batched GEMVs around an fp32 softmax);
  * the floor: the cache's key and value bytes over the device-to-device copy bandwidth measured here.
It prints one table and writes decode_kernel_bench.json to --out (default $OUT or .). On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/decode_kernel_bench.py [--contexts 2048,65536] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import modeling_alibi.alibi_triton_decode as decode  # noqa: E402
from modeling_alibi.alibi_attention import eager_attention_forward  # noqa: E402
from modeling_alibi.alibi_mask import AlibiAttentionMask, alibi_slopes  # noqa: E402

from cuda_timing import copy_gb_s, median_ms  # noqa: E402

GRID = dict(programs_per_sm=(2, 4, 8), block_n=(32, 64, 128), num_stages=(2, 3, 4), num_warps=(4, 8))
SETTINGS = ("PROGRAMS_PER_SM", "BLOCK_N", "NUM_STAGES", "NUM_WARPS")  # GRID's names in the module
REPEAT = 20
SHOWN = 12  # fastest settings printed per context
HEADS, HEAD_DIM, EMPTY_SLOTS = 8, 128, 136


def graphed_ms(fn) -> float:
    """Milliseconds per call of `fn`, from a CUDA graph of REPEAT calls (compiled and warmed up outside it)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPEAT):
            fn()
    return median_ms(graph.replay, 20) / REPEAT


def case(context: int) -> dict:
    slots = context + EMPTY_SLOTS
    q = torch.randn(1, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, HEADS, slots, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = torch.zeros(1, slots, dtype=torch.long, device="cuda")
    mask[:, : context + 1] = 1
    positions = mask.cumsum(-1) - 1
    attention_mask = AlibiAttentionMask(
        query_positions=positions[:, context : context + 1], key_positions=positions, key_padding=mask == 0,
        slopes=alibi_slopes(HEADS).cuda(),
    )
    return dict(q=q, k=k, v=v, mask=attention_mask, slots=slots)


def context_rows(context: int, bandwidth: float, baseline=None) -> list[dict]:
    """The rows of one context: the matmul fallback, the kernel at each grid setting, the baseline, the floor."""
    rows = []
    c = case(context)
    m = c["mask"]
    floor_ms = 2 * c["k"].numel() * 2 / bandwidth / 1e6

    def kernel(module=decode):
        return module.alibi_decode_attention(c["q"], c["k"], c["v"], m.slopes, HEAD_DIM**-0.5, m.query_positions,
                                             m.key_positions, key_padding=m.key_padding)

    reference = eager_attention_forward(None, c["q"], c["k"], c["v"], m, HEAD_DIM**-0.5)[0].transpose(1, 2)
    fallback_ms = graphed_ms(lambda: eager_attention_forward(None, c["q"], c["k"], c["v"], m, HEAD_DIM**-0.5))
    rows.append(dict(context=context, path="matmul fallback", ms=round(fallback_ms, 4),
                     floor_ratio=round(floor_ms / fallback_ms, 3)))
    defaults = [getattr(decode, name) for name in SETTINGS]
    for setting in itertools.product(*GRID.values()):
        for name, value in zip(SETTINGS, setting, strict=True):
            setattr(decode, name, value)
        row = dict(context=context, path="triton", **dict(zip(GRID, setting, strict=True)))
        try:
            row["max_error"] = (kernel().float() - reference.float()).abs().max().item()
            row["ms"] = round(graphed_ms(kernel), 4)
            row["floor_ratio"] = round(floor_ms / row["ms"], 3)
        except Exception as error:  # e.g. Triton's OutOfResources: the tiles do not fit in shared memory
            row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        rows.append(row)
    best = min((r for r in rows if r["path"] == "triton" and "ms" in r), key=lambda r: r["ms"])
    for name, key in zip(SETTINGS, GRID, strict=True):
        setattr(decode, name, best[key])
    best["launches_us"] = launch_times(kernel)
    for name, value in zip(SETTINGS, defaults, strict=True):
        setattr(decode, name, value)
    if baseline is not None:
        ms = graphed_ms(lambda: kernel(baseline))
        rows.append(dict(context=context, path=f"baseline {baseline.__file__}", ms=round(ms, 4),
                         floor_ratio=round(floor_ms / ms, 3),
                         max_error=(kernel(baseline).float() - reference.float()).abs().max().item(),
                         launches_us=launch_times(lambda: kernel(baseline))))
    rows.append(dict(context=context, path="floor (K+V bytes / copy bandwidth)", ms=round(floor_ms, 4)))
    return rows


def launch_times(fn) -> dict[str, float]:
    """GPU microseconds per call of each kernel `fn` launches, from the profiler over 20 calls."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
    return {e.key[:60]: round(e.device_time_total / 20, 2) for e in profile.key_averages() if e.device_time_total > 0}


def load_baseline(path: str):
    """An earlier version of the kernel module, imported as a sibling of the current one (its relative imports
    then resolve in the package); its custom op gets its own name, derived from the module name."""
    spec = importlib.util.spec_from_file_location("modeling_alibi._decode_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shown(rows: list[dict]) -> list[dict]:
    """The table's rows: per context the fallback, the SHOWN fastest settings, the module's defaults, the failed
    settings and the floor (the JSON keeps every row)."""
    defaults = {key: getattr(decode, name) for name, key in zip(SETTINGS, GRID, strict=True)}
    table = []
    for context in dict.fromkeys(r["context"] for r in rows):
        mine = [r for r in rows if r["context"] == context]
        timed = sorted((r for r in mine if r["path"] == "triton" and "ms" in r), key=lambda r: r["ms"])
        default = [r for r in timed if all(r[k] == v for k, v in defaults.items())]
        table += [r for r in mine if r["path"] == "matmul fallback"] + timed[:SHOWN]
        table += [r for r in default if r not in timed[:SHOWN]] + [r for r in mine if "error" in r]
        table += [r for r in mine if r["path"].startswith(("baseline", "floor"))]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="2048,65536")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--baseline", help="an earlier alibi_triton_decode.py to time beside this one")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_kernel_bench.py needs a CUDA GPU.")
    bandwidth = copy_gb_s()
    rows = []
    baseline = load_baseline(args.baseline) if args.baseline else None
    for context in (int(c) for c in args.contexts.split(",")):
        rows += context_rows(context, bandwidth, baseline)
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | copy {bandwidth:.0f} GB/s")
    print(f"{'context':>8} {'path':<36} {'ms':>8} {'floor/time':>10} {'max err':>9}")
    for r in shown(rows):
        if "error" in r:
            print(f"{r['context']:>8} triton {r}")
            continue
        setting = (f"triton {r['programs_per_sm']}/SM n{r['block_n']} s{r['num_stages']} w{r['num_warps']}"
                   if r["path"] == "triton" else r["path"])
        print(f"{r['context']:>8} {setting:<36} {r['ms']:>8.4f} {r.get('floor_ratio', 1.0):>10.3f} "
              f"{r.get('max_error', float('nan')):>9.2e}")
        if "launches_us" in r:
            print(f"{'':>8}   fastest; GPU us per launch: {r['launches_us']}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "decode_kernel_bench.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, copy_gb_s=round(bandwidth),
                       rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
