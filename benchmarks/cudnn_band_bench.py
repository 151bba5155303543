"""cuDNN's ALiBi with a left diagonal band (one window, the widest head's) against the model's per-head truncation.

    pip install 'alibi-lm[cudnn]'   # nvidia-cudnn-frontend
    python benchmarks/cudnn_band_bench.py [--cases 4096x4,16384x1,65536x1] [--threshold 20] [--out DIR]

Why: `alibi_truncation=T` drops, for head h, the keys at distance > T / m_h (config docstring). The model computes
that on flex with a per-head window block mask. cuDNN's fused ALiBi takes one band for all heads
(`diagonal_band_left_bound`), so the closest it can do is the widest head's window, which keeps more keys than
truncation for every other head: not the model's semantics, so the model does not route truncation to it. Issue #14
asks how the two compare. Rows, bf16, 8 heads, head dim 128, causal, cudnn_bench.py's timing (3 warm-up calls, then
the mean of back-to-back calls between two CUDA events), forward and forward+backward:
  sdpa_nobias     unbiased causal SDPA (default backend): the ceiling of anchors.md section 6;
  cudnn_full      this package's cuDNN op, full causal ALiBi (what untruncated training runs);
  cudnn_band      cuDNN ALiBi with the band `floor(max_h T / m_h) + 1` (keys at distance <= the widest window);
  flex_truncated  the model's flex backend with the per-head windows of `alibi_truncation=T`.
Accuracy, per case: the largest difference of cudnn_band and of cudnn_full from flex_truncated's output.

Prints one table and writes cudnn_band_bench.json to --out (default $OUT or .), rewritten after every row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from modeling_alibi import alibi_attention, alibi_cudnn, alibi_slopes  # noqa: E402
from modeling_alibi.alibi_attention import flex_attention_forward  # noqa: E402
from modeling_alibi.alibi_mask import AlibiAttentionMask  # noqa: E402

from cudnn_bench import SCALE, D, H, time_case  # noqa: E402

torch._dynamo.config.cache_size_limit = 64  # flex_attention compiles once per shape and mask


class _Band(torch.autograd.Function):
    """cuDNN ALiBi with a left band, forward and backward, on graphs built as the op builds its own."""

    graphs: dict[tuple, tuple[Any, tuple[int, ...], int]] = {}

    @staticmethod
    def run(backward: bool, band: int, buffers: tuple[torch.Tensor, ...]) -> None:
        cudnn = alibi_cudnn._frontend()
        handle = alibi_cudnn._handle(cudnn, buffers[0].device)
        key = (backward, band, tuple(buffers[0].shape))
        if key not in _Band.graphs:
            graph, uids = alibi_cudnn._define(cudnn, handle, backward, key[2], torch.bfloat16, SCALE, left_band=band)
            alibi_cudnn._finish(cudnn, graph)
            _Band.graphs[key] = graph, uids, graph.get_workspace_size()
        graph, uids, workspace_bytes = _Band.graphs[key]
        workspace = torch.empty(max(workspace_bytes, 1), device="cuda", dtype=torch.uint8)
        graph.execute(list(buffers), workspace, handle=handle, tensor_uids=uids)

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, band: int) -> torch.Tensor:
        b, h, s, d = q.shape
        out = alibi_cudnn._empty_bshd(b, h, s, d, q)  # (b, h, s, d) view of (b, s, h, d)
        stats = torch.empty(b, h, s, 1, device=q.device, dtype=torch.float32)
        _Band.run(False, band, (q, k, v, out, stats))
        ctx.save_for_backward(q, k, v, out, stats)
        ctx.band = band
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        q, k, v, out, stats = ctx.saved_tensors
        grad_out = alibi_cudnn._as_bshd(grad_out)
        dq, dk, dv = (torch.empty_like(q) for _ in range(3))
        _Band.run(True, ctx.band, (q, k, v, out, stats, grad_out, dq, dk, dv))
        return dq, dk, dv, None


def kernels(B: int, L: int, threshold: float) -> tuple[dict, int]:
    slopes = alibi_slopes(H).to("cuda")
    max_distance = threshold / slopes  # (h,): the config's T / m_h
    band = math.floor(float(max_distance.max())) + 1  # distance < band, i.e. <= the widest head's window
    positions = torch.arange(L, device="cuda")[None].expand(B, L)  # (b, L)
    mask = AlibiAttentionMask(positions, positions, None, slopes, offset=0, max_distance=max_distance)

    def flex_truncated(q, k, v):
        alibi_attention.TRITON_INFERENCE = False  # the forward row must time flex too, not the Triton kernel
        try:
            return flex_attention_forward(None, q, k, v, mask, scaling=SCALE)[0].transpose(1, 2)  # (b, h, L, d)
        finally:
            alibi_attention.TRITON_INFERENCE = True

    return {
        "sdpa_nobias": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "cudnn_full": lambda q, k, v: alibi_cudnn.alibi_cudnn_attention(q, k, v, SCALE),
        "cudnn_band": lambda q, k, v: _Band.apply(q, k, v, band),
        "flex_truncated": flex_truncated,
    }, band


def accuracy(fns: dict, B: int, L: int) -> dict:
    """Largest |difference| of the cuDNN outputs from the model's truncated flex output, on one random input."""
    q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    with torch.no_grad():
        reference = fns["flex_truncated"](q, k, v).float()
        return {f"{name}_vs_flex_truncated_max_abs": float((fns[name](q, k, v).float() - reference).abs().max())
                for name in ("cudnn_band", "cudnn_full")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="4096x4,16384x1,65536x1", help="LENGTHxBATCH, comma-separated")
    parser.add_argument("--threshold", type=float, default=20.0, help="alibi_truncation T")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    cudnn = alibi_cudnn._frontend()
    if cudnn is None or not torch.cuda.is_available():
        sys.exit("cudnn_band_bench.py needs CUDA and nvidia-cudnn-frontend (pip install 'alibi-lm[cudnn]')")
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cudnn_frontend=cudnn.__version__,
                cudnn_backend=cudnn.backend_version(), heads=H, head_dim=D, dtype="bf16", threshold=args.threshold)
    print(json.dumps(meta), flush=True)
    rows, checks = [], {}
    for case in args.cases.split(","):
        L, B = (int(x) for x in case.split("x"))
        fns, band = kernels(B, L, args.threshold)
        try:
            checks[case] = dict(band=band, **accuracy(fns, B, L))
        except Exception as error:  # noqa: BLE001 - report and go on to the timings
            checks[case] = dict(band=band, error=f"{type(error).__name__}: {str(error)[:160]}")
        print(json.dumps({"case": case, **checks[case]}), flush=True)
        for backward in (False, True):
            for name, fn in fns.items():
                rows.append(time_case(name, fn, B, L, backward))
                with open(os.path.join(args.out, "cudnn_band_bench.json"), "w") as f:
                    json.dump(dict(meta, accuracy=checks, rows=rows), f, indent=1)

    ms = {(r["case"], r["pass_"], r["L"]): r["ms"] for r in rows}
    print(f"\nT = {args.threshold}; ratio = unbiased SDPA ms / row ms (> 1: faster than unbiased attention)")
    print(f"{'L':>6} {'pass':8} {'sdpa':>8} {'full':>8} {'band':>8} {'flex':>8} "
          f"{'full x':>7} {'band x':>7} {'flex x':>7}")
    for case in args.cases.split(","):
        L = int(case.split("x")[0])
        for pass_ in ("fwd", "fwd+bwd"):
            sdpa, full, band_ms, flex = (ms.get((c, pass_, L)) for c in fns)
            ratios = (f"{sdpa / x:.2f}" if sdpa and x else "-" for x in (full, band_ms, flex))
            print(f"{L:6d} {pass_:8} {sdpa!s:>8} {full!s:>8} {band_ms!s:>8} {flex!s:>8} "
                  + " ".join(f"{r:>7}" for r in ratios))
    print("Accuracy (max |out - flex_truncated|):", json.dumps(checks))


if __name__ == "__main__":
    main()
