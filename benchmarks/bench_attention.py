"""model_bench.py's `attention` part: issue #14's attention measure, in the same run as the model rows.

Causal ALiBi on cuDNN's fused SDPA (the kernel the model trains and prefills with on CUDA) against unbiased causal
SDPA, forward and forward+backward, bf16, 8 heads of 128, at 4,096 x 4, 16,384 x 1 and 65,536 x 1 tokens. Each case
is timed as cudnn_bench.py times it (the method of shared/research/anchor-bench/cudnn_alibi_probe.py, the script
behind anchors.md section 6), with its functions. The ratio is SDPA's time over ours (the issue's target: >= 0.90
for fwd+bwd). On the CPU, or without nvidia-cudnn-frontend, the part records why it did not run. On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/model_bench.py --parts attention,train,decode
"""

from __future__ import annotations

import torch

import cudnn_bench
from harness import Bench

CASES = ((4096, 4), (16384, 1), (65536, 1))  # (tokens per row, rows), cudnn_bench.py's shapes


def run(bench: Bench) -> None:
    part = bench.result.setdefault("attention", dict(heads=cudnn_bench.H, head_dim=cudnn_bench.D, rows=[]))
    probe = torch.empty(1, cudnn_bench.H, 8, cudnn_bench.D, device=bench.dev, dtype=torch.bfloat16)
    if not bench.cuda or not cudnn_bench.is_supported(probe, probe):  # CUDA sm80+ and the frontend importable
        part["skipped"] = "needs CUDA and nvidia-cudnn-frontend (pip install 'alibi-lm[cudnn]')"
        bench.log("attention", "skipped:", part["skipped"])
        return
    for length, batch in CASES:
        kernels = cudnn_bench.kernels(batch, length)
        for backward in (False, True):
            row = dict(length=length, batch=batch, pass_="fwd+bwd" if backward else "fwd")
            for name in ("cudnn_alibi", "sdpa_nobias"):
                timed = cudnn_bench.time_case(name, kernels[name], batch, length, backward)
                row[f"{name}_ms"] = timed["ms"]
                if "error" in timed:
                    bench.result["errors"].append(dict(case=f"attention {name} {length}x{batch}",
                                                       error=timed["error"]))
            if row["cudnn_alibi_ms"] and row["sdpa_nobias_ms"]:
                row["sdpa_over_ours"] = round(row["sdpa_nobias_ms"] / row["cudnn_alibi_ms"], 3)
            part["rows"].append(row)
            bench.log("attention", row)
        bench.save()


def report(part: dict) -> list[str]:
    lines = [f"[attention] causal, bf16, {part['heads']} heads x {part['head_dim']}: cuDNN ALiBi against unbiased "
             "SDPA (ratio = SDPA time / ours)"]
    if "skipped" in part:
        return lines + [f"  skipped: {part['skipped']}"]
    for r in part["rows"]:
        lines.append(f"  {r['length']:>6} x {r['batch']} {r['pass_']:<8} ours {r['cudnn_alibi_ms']} ms  "
                     f"sdpa {r['sdpa_nobias_ms']} ms  ratio {r.get('sdpa_over_ours', '-')}")
    return lines
