"""Where the host time of alibi_cudnn_attention goes, at a shape where the GPU time is negligible (1 x 128 tokens).

    python benchmarks/cudnn_host_profile.py [--reps 300]

Prints microseconds per call for the custom ops called directly, for the frontend's graph.execute alone, for
forward+backward through autograd (whose backward runs on autograd's device thread), for the backward op on a
second Python thread, for the same forward graph built without ALiBi (the frontend's own cost of ALiBi), and
unbiased SDPA for scale; then cProfile's top entries for the two ops, the eager forward and graph.execute (main
thread).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import threading

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from modeling_alibi import alibi_cudnn  # noqa: E402

from cuda_timing import host_us  # noqa: E402

SCALE = 128**-0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300)
    args = parser.parse_args()
    q, k, v, do = (torch.randn(1, 128, 8, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(4))
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    out, stats = alibi_cudnn._forward_op(q, k, v, SCALE)
    alibi_cudnn._backward_op(do, q, k, v, out, stats, SCALE)
    cudnn = alibi_cudnn._frontend()
    handle = alibi_cudnn._handle(cudnn, q.device)
    graphs = {backward: entry for (backward, *_), entry in alibi_cudnn._GRAPHS.items()}
    dq, dk, dv = (torch.empty_like(q) for _ in range(3))

    def execute(backward: bool, ordered: bool = True):
        graph, uids, workspace_bytes = graphs[backward]
        buffers = [q, k, v, out, stats, do, dq, dk, dv] if backward else [q, k, v, out, stats]
        workspace = torch.empty(max(workspace_bytes, 1), device="cuda", dtype=torch.uint8)
        if ordered:
            graph.execute(buffers, workspace, handle=handle, tensor_uids=uids)
        else:  # the {uid: buffer} form the probes used
            graph.execute(dict(zip(uids, buffers, strict=True)), workspace, handle=handle)

    causal, causal_uids = alibi_cudnn._define(cudnn, handle, False, tuple(q.shape), q.dtype, SCALE, alibi=False)
    alibi_cudnn._finish(cudnn, causal)
    causal_workspace = torch.empty(max(causal.get_workspace_size(), 1), device="cuda", dtype=torch.uint8)

    def on_thread(fn):
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("us", host_us(fn, args.reps)))
        thread.start()
        thread.join()
        return result["us"]

    cases = {
        "forward op": lambda: alibi_cudnn._forward_op(q, k, v, SCALE),
        "eager forward (autograd.Function)": lambda: alibi_cudnn.alibi_cudnn_attention(qg, kg, vg, SCALE),
        "_forward (no autograd)": lambda: alibi_cudnn._forward(q, k, v, SCALE),
        "backward op": lambda: alibi_cudnn._backward_op(do, q, k, v, out, stats, SCALE),
        "graph.execute, forward": lambda: execute(False),
        "graph.execute, forward, no ALiBi": lambda: causal.execute(
            [q, k, v, out, stats], causal_workspace, handle=handle, tensor_uids=causal_uids),
        "graph.execute, backward": lambda: execute(True),
        "graph.execute, backward, dict form": lambda: execute(True, ordered=False),
        "fwd+bwd through autograd": lambda: torch.autograd.grad(
            alibi_cudnn.alibi_cudnn_attention(qg, kg, vg, SCALE), (qg, kg, vg), do),
        "sdpa fwd": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "sdpa fwd+bwd through autograd": lambda: torch.autograd.grad(
            F.scaled_dot_product_attention(qg, kg, vg, is_causal=True), (qg, kg, vg), do),
    }
    for name, fn in cases.items():
        print(f"{name:34s} {host_us(fn, args.reps):8.1f} us/call", flush=True)
    print(f"{'backward op on a second thread':34s} {on_thread(cases['backward op']):8.1f} us/call", flush=True)
    for name in ("forward op", "backward op", "eager forward (autograd.Function)", "graph.execute, forward"):
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.reps):
            cases[name]()
        profile.disable()
        print(f"\n--- cProfile, {name}, {args.reps} calls, by own time")
        pstats.Stats(profile).strip_dirs().sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
