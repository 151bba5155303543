"""The batch-1 decode step's linear layers (alibi_triton_gemv.py) against inductor's and cuBLAS's kernels, and the
bytes they must read.

For model_bench's model (hidden 1,024, fc1 4,096, vocabulary 32,000, bf16), one token's layers: q, k, v stacked
with the LayerNorm before them; the output projection and fc2, each with the residual add after it; fc1 with the
LayerNorm before it and the ReLU after; the head with the final LayerNorm. For each:
  * `norm_linear` / `linear_add` for each setting of the kernels' weights per program, warps and programmatic
    dependent launch (--tiles, --warps, --pdl; with PDL each call of a graph overlaps the one before it);
  * the same ops compiled as graph_generate compiles its step (alibi_decoding's inductor backend and options,
    linear layers as reductions): the compiled step's kernels for them;
  * cuBLAS: `F.linear` alone, without the LayerNorm or the add;
  * the floor: the weights' bytes at the device-to-device copy bandwidth measured here.
Calls run in CUDA graphs of COPIES calls over COPIES copies of the weights (more bytes than L2 holds, as the step's
16 layers are), timed with CUDA events over 50 replays: microseconds per call. Each row also gives its largest
difference from the same computation in float64 (over the largest value).

Prints a table and writes gemv_bench.json to --out (default $OUT or .). On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/gemv_bench.py [--tiles 4096,8192,16384,32768] [--warps 2,4,8] [--pdl 0,1] \\
        [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modeling_alibi import alibi_decoding as decoding  # noqa: E402
from modeling_alibi import alibi_triton_gemv as gemv  # noqa: E402

from cuda_timing import copy_gb_s, mean_ms  # noqa: E402  (beside this file)

COPIES = 16  # weight copies per timed graph: 16 x 8 MB > an H200's 60 MB of L2
# (name, N, K, kind): kind "norm" is norm_linear, "norm+relu" with the ReLU, "add" is linear_add; "head" has no bias.
LAYERS = (("qkv", 3072, 1024, "norm"), ("o_proj", 1024, 1024, "add"), ("fc1", 4096, 1024, "norm+relu"),
          ("fc2", 1024, 4096, "add"), ("head", 32000, 1024, "norm"))


def _inputs(n: int, k: int, head: bool) -> list[dict]:
    """COPIES sets of bf16 inputs (the weights differ per copy; the head's are a third as many: 65 MB each)."""
    copies = []
    for _ in range(COPIES if not head else 4):
        norm = torch.nn.LayerNorm(k, device="cuda", dtype=torch.bfloat16)
        torch.nn.init.normal_(norm.weight, 1.0, 0.1)
        torch.nn.init.normal_(norm.bias, 0.0, 0.1)
        copies.append(dict(x=torch.randn(1, k, device="cuda", dtype=torch.bfloat16), norm=norm,
                           weight=(torch.randn(n, k, device="cuda") / k**0.5).bfloat16(),
                           bias=None if head else torch.randn(n, device="cuda", dtype=torch.bfloat16),
                           residual=torch.randn(1, n, device="cuda", dtype=torch.bfloat16)))
    return copies


def _plain(kind: str):
    """The separate ops for one layer: (x, norm, weight, bias, residual) -> out."""
    def run(x, norm, weight, bias, residual):
        if kind == "add":
            return residual + F.linear(x, weight, bias)
        out = F.linear(F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps), weight, bias)
        return torch.relu(out) if kind == "norm+relu" else out
    return run


def _kernel(kind: str):
    def run(x, norm, weight, bias, residual):
        if kind == "add":
            return gemv.linear_add(x, weight, bias, residual)
        return gemv.norm_linear(x, norm, weight, bias, relu=kind == "norm+relu")
    return run


def _graph_us(fn, copies: list[dict]) -> float:
    """Microseconds per call: a CUDA graph of one call per copy (one warm-up pass first: compiles, autotunes),
    replayed 50 times back to back between CUDA events after 3 warm-up replays."""
    graph = decoding._captured(lambda: [fn(**c) for c in copies], warm_ups=1)[0]
    return 1e3 * mean_ms(graph.replay, 50) / len(copies)


def _error(fn, c: dict, kind: str) -> float:
    out = fn(**c).double()
    as_double = {k: (copy.deepcopy(v).double() if isinstance(v, torch.Tensor | torch.nn.Module) else v)
                 for k, v in c.items()}  # copies: Module.double() converts in place
    exact = _plain(kind)(**as_double)
    return ((out - exact).abs().max() / exact.abs().max()).item()


def layer_rows(name: str, n: int, k: int, kind: str, tiles: list[int], warps: list[int], pdls: list[bool],
               gb_s: float) -> list[dict]:
    copies = _inputs(n, k, name == "head")
    floor_us = n * k * 2 / gb_s / 1e3
    rows = []

    def row(case, fn, **setting):
        us = _graph_us(fn, copies)
        rows.append(dict(layer=name, n=n, k=k, case=case, us=round(us, 2), floor_us=round(floor_us, 2),
                         tb_s=round(n * k * 2 / us / 1e6, 2), error=f"{_error(fn, copies[0], kind):.1e}", **setting))
        print(f"  {name:8s} {case:34s} {us:7.2f} us  floor {floor_us:5.2f}  {rows[-1]['tb_s']:5.2f} TB/s  "
              f"error {rows[-1]['error']}", flush=True)

    with torch.no_grad():
        row("cuBLAS F.linear alone", lambda x, norm, weight, bias, residual: F.linear(x, weight, bias))
        backend = decoding._inductor(decoding.COMPILE_OPTIONS, True)
        row("compiled step's kernels (inductor)", torch.compile(_plain(kind), backend=backend, dynamic=False))
        saved = gemv.TILE_ELEMENTS, gemv.NUM_WARPS, gemv.LAUNCH_PDL
        try:
            for pdl in pdls:
                for tile in tiles:
                    for warp in warps:
                        gemv.TILE_ELEMENTS, gemv.NUM_WARPS, gemv.LAUNCH_PDL = tile, warp, pdl
                        row(f"kernel{' PDL' if pdl else ''}, tile {tile}, {warp} warps", _kernel(kind), tile=tile,
                            warps=warp, pdl=pdl)
        finally:
            gemv.TILE_ELEMENTS, gemv.NUM_WARPS, gemv.LAUNCH_PDL = saved
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="4096,8192,16384,32768", help="weights per program (TILE_ELEMENTS)")
    parser.add_argument("--warps", default="2,4,8", help="warps per program (NUM_WARPS)")
    parser.add_argument("--pdl", default="0,1", help="programmatic dependent launch off (0) and on (1)")
    parser.add_argument("--layers", default=",".join(name for name, *_ in LAYERS))
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gemv_bench.py needs a CUDA GPU.")
    torch._dynamo.config.cache_size_limit = 64
    gb_s = copy_gb_s()
    tiles, warps = ([int(v) for v in text.split(",")] for text in (args.tiles, args.warps))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, copy {gb_s:.0f} GB/s; us per call")
    rows = []
    for name, n, k, kind in LAYERS:
        if name in args.layers.split(","):
            rows += layer_rows(name, n, k, kind, tiles, warps, [bool(int(v)) for v in args.pdl.split(",")], gb_s)
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, copy_gb_s=round(gb_s), rows=rows)
    with open(os.path.join(args.out, "gemv_bench.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
