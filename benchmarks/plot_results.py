"""Plots for docs/benchmarks.md from the JSON the GPU benchmarks write: kernel TFLOP/s and prompt memory.

It measures nothing itself and needs no GPU; it prints the files it wrote (no table: the tables are the
benchmarks' own). After triton_alibi_bench.py and model_bench.py:

    python benchmarks/plot_results.py --results docs/results/perf --out docs/results/perf

Reads `triton_alibi_bench.json` (attention kernels) and `model_bench.json` (whole models) from --results and
writes two figures:
  attention_throughput.png   TFLOP/s against sequence length, forward and forward+backward, per kernel, with
                             unbiased SDPA flash (the ceiling) from the same run.
  prompt_memory.png          peak GPU memory against prompt length: ours with a full and with a windowed cache
                             (chunked prefill + 128 generated tokens), and BLOOM and MPT (one forward) until they
                             run out of memory.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

GiB = 2**30
KERNEL_LABELS = {"sdpa_flash_nobias": "SDPA flash, no bias (ceiling)", "triton_alibi": "ALiBi, our Triton kernel",
                 "flex_alibi": "ALiBi, FlexAttention score_mod"}


def attention_figure(bench: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, backward in zip(axes, (False, True), strict=True):
        for case, label in KERNEL_LABELS.items():
            rows = sorted((r for r in bench["rows"] if r["case"] == case and r["bwd"] == backward),
                          key=lambda r: r["L"])
            if rows:
                ax.plot([r["L"] for r in rows], [r["tflops"] for r in rows], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (B x L = 16,384 tokens)")
        ax.set_title("forward + backward" if backward else "forward")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("TFLOP/s (causal FLOPs)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Attention kernels, bf16, 8 heads, head dim 128 ({bench['device']}, torch {bench['torch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def memory_figure(bench: dict, path: str) -> None:
    prompt = bench["prompt"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [("ours, full cache", prompt["ours_full"]), (f"ours, window {prompt['window']}", prompt["ours_window"])]
    for name in ("bloom", "mpt"):
        peer_rows = [r for r in prompt["peers"] if r["model"] == name]
        series.append((f"{name.upper()} (transformers, one forward)", peer_rows))
    for label, rows in series:
        ok = [r for r in rows if r.get("status") == "ok" and r.get("peak_bytes")]
        line = ax.plot([r["length"] for r in ok], [r["peak_bytes"] / GiB for r in ok], marker="o", label=label)
        failed = [r for r in rows if r.get("status") == "oom"]
        if failed:
            ax.scatter([r["length"] for r in failed], [r["peak_bytes"] / GiB for r in failed], marker="x", s=80,
                       color=line[0].get_color(), label=f"{label.split(' (')[0]}: out of memory")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("peak GPU memory (GiB)")
    meta = bench["meta"]
    ax.set_title(f"Prompt memory, 234M-parameter models, bf16 ({meta['device']})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="docs/results/perf")
    parser.add_argument("--out", default="docs/results/perf")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.results, "triton_alibi_bench.json")) as f:
        attention_figure(json.load(f), os.path.join(args.out, "attention_throughput.png"))
    with open(os.path.join(args.results, "model_bench.json")) as f:
        memory_figure(json.load(f), os.path.join(args.out, "prompt_memory.png"))
    print(f"wrote {args.out}/attention_throughput.png and prompt_memory.png")


if __name__ == "__main__":
    main()
