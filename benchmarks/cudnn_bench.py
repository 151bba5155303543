"""cuDNN's fused ALiBi SDPA (modeling_alibi/alibi_cudnn.py) against unbiased SDPA and the model's ALiBi kernels.

    pip install 'alibi-lm[cudnn]'   # nvidia-cudnn-frontend
    python benchmarks/cudnn_bench.py [--cases 4096x4,16384x1,65536x1] [--out DIR]

bf16, 8 heads, head dim 128, causal. Each case is timed forward only and forward+backward (torch.autograd.grad,
so no .grad accumulation) with the method of shared/research/anchor-bench/cudnn_alibi_probe.py, the script behind
anchors.md section 6: 3 warm-up calls, then the mean of back-to-back calls between two CUDA events. Rows:
  cudnn_alibi   this op (alibi_cudnn_attention); the first call's graph build is reported separately;
  sdpa_nobias   F.scaled_dot_product_attention(is_causal=True), default backend: the unbiased ceiling;
  model_flex    the model's flex backend (flex_attention_forward, FlexAttention with the ALiBi score_mod), with
                TRITON_INFERENCE off so the forward-only row runs flex too;
  model_triton  forward only: what flex_attention_forward runs for inference (the Triton ALiBi kernel).
Also printed: the first call's wall time per shape (cuDNN builds its graphs there), and the host cost per call of
cudnn_alibi and sdpa_nobias at 128 tokens, where the GPU waits on the host.
The mask is built as benchmarks/attention_bench.py builds it, once per case with offset 0, so the block mask is
cached as in the model (built once per forward, shared by the layers).

Prints one table and writes cudnn_bench.json to --out (default $OUT or .), rewritten after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from modeling_alibi import alibi_attention, alibi_slopes  # noqa: E402
from modeling_alibi.alibi_attention import flex_attention_forward  # noqa: E402
from modeling_alibi.alibi_cudnn import alibi_cudnn_attention, is_supported  # noqa: E402
from modeling_alibi.alibi_mask import AlibiAttentionMask  # noqa: E402

from cuda_timing import host_us, mean_ms  # noqa: E402

H, D = 8, 128
SCALE = D**-0.5
DEVICE = "cuda"
# flex_attention's Dynamo cache holds every shape compiled in one process.
torch._dynamo.config.cache_size_limit = 64


def kernels(B: int, L: int) -> dict[str, Callable | None]:
    positions = torch.arange(L, device=DEVICE)[None].expand(B, L)  # (b, L): the model's position-lookup form
    mask = AlibiAttentionMask(positions, positions, None, alibi_slopes(H).to(DEVICE), offset=0)

    def model_flex(q, k, v):
        alibi_attention.TRITON_INFERENCE = False
        try:
            return flex_attention_forward(None, q, k, v, mask, scaling=SCALE)[0].transpose(1, 2)  # (b, h, q, d)
        finally:
            alibi_attention.TRITON_INFERENCE = True

    def model_triton(q, k, v):
        return flex_attention_forward(None, q, k, v, mask, scaling=SCALE)[0].transpose(1, 2)

    return {
        "cudnn_alibi": lambda q, k, v: alibi_cudnn_attention(q, k, v, SCALE),
        "sdpa_nobias": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "model_flex": model_flex,
        "model_triton": model_triton,
    }


def first_call_ms(B: int, L: int) -> dict[str, float]:
    """Wall time of the first forward and backward at this shape: cuDNN builds its two graphs there."""
    q, k, v = (torch.randn(B, L, H, D, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
               for _ in range(3))
    assert is_supported(q, k)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = alibi_cudnn_attention(q, k, v, SCALE)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return {"first_fwd_ms": round(1e3 * (t1 - t0), 1), "first_bwd_ms": round(1e3 * (t2 - t1), 1)}


def host_cost_us(fn: Callable, backward: bool, reps: int = 200) -> float:
    """Microseconds per call at a tiny shape (batch 1, 128 tokens), where the GPU waits on the host: the host cost."""
    q, k, v = (torch.randn(1, 128, H, D, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2).requires_grad_(backward)
               for _ in range(3))
    grad = torch.randn_like(q)

    def step():
        out = fn(q, k, v)
        if backward:
            torch.autograd.grad(out, (q, k, v), grad)

    return round(host_us(step, reps), 1)


def time_case(name: str, fn: Callable, B: int, L: int, backward: bool) -> dict:
    torch.cuda.empty_cache()
    q, k, v = (torch.randn(B, L, H, D, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2).requires_grad_(backward)
               for _ in range(3))  # (b, h, L, d) views of (b, L, h, d), as the model's projections
    grad = torch.randn_like(q)

    def step():
        out = fn(q, k, v)
        if backward:
            torch.autograd.grad(out, (q, k, v), grad)

    row = dict(case=name, pass_="fwd+bwd" if backward else "fwd", B=B, L=L)
    try:
        ms = mean_ms(step, reps=10 if L >= 65536 else 20)
        flops = 4 * B * H * L * L * D / 2 * (3.5 if backward else 1.0)  # causal: half the scores
        row.update(ms=round(ms, 3), tflops=round(flops / ms / 1e9))
    except Exception as error:  # report and go on: one failing kernel must not hide the others
        row.update(ms=None, tflops=None, error=f"{type(error).__name__}: {str(error)[:160]}")
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="4096x4,16384x1,65536x1", help="LENGTHxBATCH, comma-separated")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    cases = [tuple(int(x) for x in case.split("x")) for case in args.cases.split(",")]
    import cudnn  # noqa: F401  (fails loudly here rather than as a row error)

    meta = dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, torch_cudnn=torch.backends.cudnn.version(),
        cudnn_frontend=cudnn.__version__, cudnn_backend=cudnn.backend_version(), heads=H, head_dim=D, dtype="bf16",
    )
    print(json.dumps(meta), flush=True)
    host = {f"{name} {'fwd+bwd' if backward else 'fwd'}": host_cost_us(fn, backward)
            for backward in (False, True) for name, fn in list(kernels(1, 128).items())[:2]}
    print(json.dumps({"host_us_per_call": host}), flush=True)
    rows, builds = [], {}
    for L, B in cases:
        builds[f"{L}x{B}"] = first_call_ms(B, L)
        print(json.dumps({"L": L, "B": B, **builds[f"{L}x{B}"]}), flush=True)
        for backward in (False, True):
            for name, fn in kernels(B, L).items():
                if backward and name == "model_triton":
                    continue  # the model trains on flex; the Triton kernel serves inference forwards
                rows.append(time_case(name, fn, B, L, backward))
                with open(os.path.join(args.out, "cudnn_bench.json"), "w") as f:
                    json.dump(dict(meta, host_us_per_call=host, first_call=builds, rows=rows), f, indent=1)

    ms = {(r["case"], r["pass_"], r["L"]): r["ms"] for r in rows}
    print(f"\n{'L':>6} {'B':>2} {'pass':8} {'cudnn ms':>9} {'TF/s':>5} {'sdpa ms':>8} {'flex ms':>8} {'triton ms':>9}"
          f" {'sdpa/cudnn':>10} {'flex/cudnn':>10}")
    for L, B in cases:
        for pass_ in ("fwd", "fwd+bwd"):
            ours, sdpa, flex = (ms.get((c, pass_, L)) for c in ("cudnn_alibi", "sdpa_nobias", "model_flex"))
            triton = ms.get(("model_triton", pass_, L))
            tf = next((r["tflops"] for r in rows if (r["case"], r["pass_"], r["L"]) == ("cudnn_alibi", pass_, L)), None)

            def ratio(a, b):
                return f"{a / b:.2f}x" if a and b else "-"

            print(f"{L:6d} {B:2d} {pass_:8} {ours!s:>9} {tf!s:>5} {sdpa!s:>8} {flex!s:>8} {triton or '-'!s:>9}"
                  f" {ratio(sdpa, ours):>10} {ratio(flex, ours):>10}")
    print("sdpa/cudnn: unbiased causal SDPA time over cuDNN ALiBi time (anchors.md section 6's ratio); "
          "flex/cudnn: cuDNN's speed-up over the model's flex backend.")
    print("First calls (graph builds):", json.dumps(builds))
    print("Host cost per call, microseconds (batch 1, 128 tokens):", json.dumps(host))


if __name__ == "__main__":
    main()
