"""Every execution plan cuDNN offers for the op's ALiBi graphs, timed, beside the same graphs without ALiBi.

    pip install 'alibi-lm[cudnn]'   # nvidia-cudnn-frontend
    python benchmarks/cudnn_plan_sweep.py [--cases 4096x4,16384x1] [--max-plans 32] [--out DIR]

Why: the op (modeling_alibi/alibi_cudnn.py) runs the plan cuDNN's heuristics rank first. Its ALiBi forward kernel
takes 300 us where the unbiased one takes 253 (4K x 4, cudnn_kernel_trace.json of the sixth session), so this asks
whether another plan of the same graph is faster. For each case, direction (fwd, bwd) and mask (ALiBi, causal
only), the graph is built exactly as the op builds it (`alibi_cudnn._define`), its plans are listed with heuristics
A and FALLBACK, and each plan that builds is timed with cudnn_bench.py's method (3 warm-up calls, then the mean of
back-to-back calls between two CUDA events). Each plan's outputs are compared with the first plan's (the one the op
runs), so a faster plan that computes something else shows. bf16, 8 heads, head dim 128, the op's (b, s, h, d)
memory.

Prints one table and writes cudnn_plan_sweep.json to --out (default $OUT or .), rewritten after every graph.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from modeling_alibi import alibi_cudnn  # noqa: E402

from cuda_timing import mean_ms  # noqa: E402

H, D = 8, 128
SCALE = D**-0.5


def bshd(B: int, L: int) -> torch.Tensor:
    """(b, h, L, d) view of (b, L, h, d) memory, the op's layout."""
    return torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)


def planned(cudnn, handle, backward: bool, shape: tuple, alibi: bool):
    """The op's graph for this direction and mask, with the plans of every heuristic mode the op may use ranked in
    one list (the op itself plans with one mode at a time) but no plan built."""
    graph, uids = alibi_cudnn._define(cudnn, handle, backward, shape, torch.bfloat16, SCALE, alibi=alibi)
    alibi_cudnn._plan(cudnn, graph, alibi_cudnn.HEURISTIC_MODES)
    return graph, uids


def sweep(cudnn, handle, backward: bool, alibi: bool, buffers: list, outputs: list, max_plans: int) -> list[dict]:
    """One row per plan: name, workspace, ms, and the largest difference from plan 0's outputs."""
    shape = tuple(buffers[0].shape)
    graph, uids = planned(cudnn, handle, backward, shape, alibi)
    count = graph.get_execution_plan_count()
    rows, reference = [], None
    for index in range(min(count, max_plans)):
        row = dict(index=index, of=count, name=graph.get_plan_name_at_index(index))
        try:
            t0 = time.perf_counter()
            graph.build_plan_at_index(index)
            row["build_ms"] = round(1e3 * (time.perf_counter() - t0), 1)
            workspace_bytes = graph.get_workspace_size_plan_at_index(index)
            workspace = torch.empty(max(workspace_bytes, 1), device="cuda", dtype=torch.uint8)

            def run(index=index, workspace=workspace):
                graph.execute_plan_at_index(buffers, workspace, index=index, handle=handle, tensor_uids=uids)

            for out in outputs:
                out.fill_(float("nan"))  # a plan that writes nothing must not inherit the last plan's answer
            run()
            result = [out.float().clone() for out in outputs]
            if reference is None:
                reference = result
            diffs = (float((a - b).abs().max()) for a, b in zip(result, reference, strict=True))
            row["max_abs_diff_vs_plan0"] = max(diffs)
            row["workspace_mb"] = round(workspace_bytes / 2**20, 1)
            row["ms"] = round(mean_ms(run, reps=10 if shape[2] >= 65536 else 20), 4)
        except Exception as error:  # noqa: BLE001 - a plan that does not build or run is a row, not the end
            row["error"] = f"{type(error).__name__}: {str(error)[:160]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def case_rows(cudnn, handle, B: int, L: int, max_plans: int) -> list[dict]:
    q, k, v, grad_out = (bshd(B, L) for _ in range(4))
    out, dq, dk, dv = (torch.empty_like(q) for _ in range(4))
    stats = torch.empty(B, H, L, 1, device="cuda", dtype=torch.float32)
    rows = []
    for alibi in (True, False):
        # The forward sweep leaves the last plan's out and stats behind (or NaN, if it failed); the backward gets
        # them fresh from the op's own plan, a consistent (out, stats) pair.
        for backward in (False, True):
            if backward:
                graph, uids = planned(cudnn, handle, False, (B, H, L, D), alibi)
                graph.build_plans()
                workspace = torch.empty(max(graph.get_workspace_size(), 1), device="cuda", dtype=torch.uint8)
                graph.execute([q, k, v, out, stats], workspace, handle=handle, tensor_uids=uids)
                buffers, outputs = [q, k, v, out, stats, grad_out, dq, dk, dv], [dq, dk, dv]
            else:
                buffers, outputs = [q, k, v, out, stats], [out]
            for row in sweep(cudnn, handle, backward, alibi, buffers, outputs, max_plans):
                rows.append(dict(L=L, B=B, pass_="bwd" if backward else "fwd", mask="alibi" if alibi else "causal",
                                 **row))
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per (case, pass): the op's plan (ALiBi plan 0), the fastest exact ALiBi plan, the fastest unbiased plan."""
    out = []
    for key in sorted({(r["L"], r["B"], r["pass_"]) for r in rows}):
        group = [r for r in rows if (r["L"], r["B"], r["pass_"]) == key and r.get("ms")]
        alibi = [r for r in group if r["mask"] == "alibi" and r["max_abs_diff_vs_plan0"] < 0.05]
        causal = [r for r in group if r["mask"] == "causal"]
        if not alibi or not causal:
            continue
        default = next((r for r in alibi if r["index"] == 0), alibi[0])
        best, unbiased = min(alibi, key=lambda r: r["ms"]), min(causal, key=lambda r: r["ms"])
        out.append(dict(L=key[0], B=key[1], pass_=key[2], op_plan_ms=default["ms"], best_alibi_ms=best["ms"],
                        best_alibi_plan=best["name"], best_causal_ms=unbiased["ms"],
                        op_ratio=round(unbiased["ms"] / default["ms"], 3),
                        best_ratio=round(unbiased["ms"] / best["ms"], 3)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="4096x4,16384x1", help="LENGTHxBATCH, comma-separated")
    parser.add_argument("--max-plans", type=int, default=32)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    cudnn = alibi_cudnn._frontend()
    if cudnn is None or not torch.cuda.is_available():
        sys.exit("cudnn_plan_sweep.py needs CUDA and nvidia-cudnn-frontend (pip install 'alibi-lm[cudnn]')")
    handle = alibi_cudnn._handle(cudnn, torch.device("cuda", torch.cuda.current_device()))
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cudnn_frontend=cudnn.__version__,
                cudnn_backend=cudnn.backend_version(), heads=H, head_dim=D, dtype="bf16")
    print(json.dumps(meta), flush=True)
    rows: list[dict] = []
    for case in args.cases.split(","):
        L, B = (int(x) for x in case.split("x"))
        torch.cuda.empty_cache()
        rows += case_rows(cudnn, handle, B, L, args.max_plans)
        with open(os.path.join(args.out, "cudnn_plan_sweep.json"), "w") as f:
            json.dump(dict(meta, rows=rows, summary=summary(rows)), f, indent=1)

    print(f"\n{'L':>6} {'B':>2} {'pass':4} {'mask':6} {'plan':>4} {'ms':>8} {'ws MB':>6} {'diff':>8}  name")
    for r in rows:
        print(f"{r['L']:6d} {r['B']:2d} {r['pass_']:4} {r['mask']:6} {r['index']:4d} {r.get('ms', '-')!s:>8} "
              f"{r.get('workspace_mb', '-')!s:>6} {r.get('max_abs_diff_vs_plan0', '-')!s:>8}  "
              f"{r['name'][:70]}{'  ' + r['error'][:60] if 'error' in r else ''}")
    print("\nPer case: the op's plan, the fastest ALiBi plan whose outputs match it (< 0.05), the fastest unbiased one;"
          " ratio = unbiased ms / ALiBi ms")
    for s in summary(rows):
        print(json.dumps(s))


if __name__ == "__main__":
    main()
