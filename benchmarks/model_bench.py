"""Whole-model benchmark of alibi-lm against transformers' own ALiBi models (MPT, BLOOM), all in ONE process.

Every ratio is taken against peers measured in the same run, on the same GPU, with the method of
shared/research/anchor-bench/hf_peer_bench.py (random weights, pure bf16 weights, WikiText-103 block shape:
16 layers, d 1024, 8 heads, ffn 4096, plain 32,000 vocabulary, ~234M parameters), so they compare with the
anchors of shared/research/anchors.md section 5.

Parts (`--parts`, default all; each case catches OOM and errors, records them and goes on). Each lives in its
own module, whose docstring gives the method:

  attention  bench_attention.py: cuDNN's fused ALiBi against unbiased SDPA, fwd and fwd+bwd, at 4K x 4, 16K and
             64K tokens (cudnn_bench.py's method); CUDA with nvidia-cudnn-frontend only, else recorded as skipped.
  train      bench_train.py: fwd+bwd+AdamW step at L=512, 16 sequences: tokens/s and MFU; ours, MPT, BLOOM.
  prompt     bench_prompt.py: chunked prefill into a full cache at 16K..256K tokens and a windowed one up to 1M,
             then `generate` of 128 tokens: time and peak memory; peers: their longest no-cache forward.
  decode     bench_decode.py: batch-1 greedy decode of 128 tokens after a 2,048-token prompt (plain generate(),
             dynamic cache, static cache, `graph_generate`, BLOOM, MPT) and per-token time at 65,536 tokens of
             context against the HBM limit.
  precision  bench_precision.py: bf16 against fp32 log-probs at 65,536 tokens, first and last 256 positions.

The shared harness (harness.py) runs each case, builds the models and measures the device rates: the bf16
matmul rate (the MFU peak, an 8192^3 matmul) and the device-to-device copy bandwidth (the HBM limit).
Memory is `torch.cuda.max_memory_allocated` on CUDA; `peak_bytes` is the absolute peak of a case and
`extra_bytes` the peak above what was allocated when it started (the weights). On CPU only `extra_bytes`
exists: the peak of CPU bytes allocated during the case, from the profiler's allocation events.

Extras (also names for `--parts`; run after the parts, and only while `--budget` seconds, default 480, still
have room for their estimated cost, else recorded as skipped):

  long_static     per-token decode at 65,536 tokens of context with a StaticCache and the step compiled as
                  generate() does it (`torch.compile(model, mode="reduce-overhead")`, CUDA graphs).
  train_compiled  training rows for `torch.compile(model)` and `torch.compile(model, mode="reduce-overhead")`
                  (CUDA graphs for forward and backward); CUDA only.
  serve           bench_serve.py: batch 32 x 2,048-token prompts, 256 new tokens each, ours (plain generate())
                  against BLOOM and MPT; and the longest prompt decoded with a full cache (256K, 512K, 1M).

The default run (all parts, then the extras that fit) is sized for < 9 minutes on one H100. It prints one
progress line per case, then one compact table, and writes `$OUT/model_bench.json` (`--out`) after every case,
so a cut-off run still leaves its results. If the extras were skipped, a second call runs just them.

    python benchmarks/model_bench.py                                  # everything that fits, one GPU
    python benchmarks/model_bench.py --parts long_static,train_compiled
    python benchmarks/model_bench.py --parts decode,precision         # any subset
    python benchmarks/model_bench.py --device cpu --quick             # tiny sizes, CPU smoke run (~25 s)

On the device machine (torch and transformers from the image; nothing to install):
    HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 timeout 590 python3 benchmarks/model_bench.py 2>&1 \\
        | grep -v -i warn | tail -n 90
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

T0 = time.perf_counter()  # the budget counts from here, imports included

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the parts and the harness, beside this file
import bench_attention  # noqa: E402
import bench_decode  # noqa: E402
import bench_precision  # noqa: E402
import bench_prompt  # noqa: E402
import bench_serve  # noqa: E402
import bench_train  # noqa: E402
from harness import Bench  # noqa: E402

PARTS = ("attention", "train", "prompt", "decode", "precision")
# Optional extras, run after the parts only while the time budget (--budget) has room for their cost.
EXTRAS = ("long_static", "train_compiled", "serve")
# Each part's and extra's function of the Bench, and each part's section of the table.
RUN = {"attention": bench_attention.run, "train": bench_train.run, "prompt": bench_prompt.run,
       "decode": bench_decode.run, "precision": bench_precision.run, "long_static": bench_decode.extra_long_static,
       "train_compiled": bench_train.extra_compiled, "serve": bench_serve.run}
REPORT = {"attention": bench_attention.report, "train": bench_train.report, "prompt": bench_prompt.report,
          "decode": bench_decode.report, "precision": bench_precision.report, "serve": bench_serve.report}
# Rough cost in seconds on one H100 of the optional extras (mostly compilation); each runs only when the budget
# has that much left.
EXTRA_COST = {"long_static": 110, "train_compiled": 220, "serve": 240}


def run(bench: Bench) -> None:
    """The device rates (if a part needs them), the parts asked for, then the extras that fit the budget."""
    parts = bench.args.parts
    if set(parts) & {"train", "decode", "long_static", "train_compiled"}:
        bench.case("rates", bench.rates)
    for name in PARTS:
        if name in parts:
            bench.timed(name, RUN[name])
    for name in EXTRAS:
        if name in parts:
            extra(bench, name)
    bench.result["meta"]["total_s"] = round(time.perf_counter() - bench.start, 1)
    bench.save()


def extra(bench: Bench, name: str) -> None:
    if name == "train_compiled" and not bench.cuda:
        bench.result["timings_s"][name] = "skipped: CUDA only (inductor's CPU build takes minutes)"
        return
    need = EXTRA_COST[name] if bench.cuda and not bench.args.quick else 0
    if bench.left() < need:
        bench.result["timings_s"][name] = f"skipped: {bench.left():.0f} s of budget left, needs ~{need}"
        bench.log(name, "skipped (budget)")
        return
    bench.timed(name, RUN[name])


def report(result: dict) -> str:
    """The table: a header with the device rates, one section per part run, the times and the errors."""
    m = result["meta"]
    lines = [f"== model_bench | {m['device']} | torch {m['torch']} | transformers {m['transformers']} | "
             f"bf16 matmul {m.get('matmul_tflops', '-')} TFLOP/s | copy {m.get('copy_gb_s', '-')} GB/s"]
    for name in REPORT:
        if name in result:
            lines += REPORT[name](result[name])
    lines.append("[time s] " + ", ".join(f"{k} {v}" for k, v in result["timings_s"].items())
                 + f"; total {m.get('total_s')}")
    if result["errors"]:
        lines.append(f"[errors] {len(result['errors'])}: " + "; ".join(f"{e['case']}: {e['error'][:100]}"
                                                                     for e in result["errors"][:6]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS + EXTRAS),
                        help=f"comma-separated subset of {','.join(PARTS + EXTRAS)} (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model and lengths (smoke run)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for model_bench.json")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds from start; the extras run only if their estimated cost fits in what is left")
    parser.add_argument("--chunk", type=int, default=0, help="prefill chunk size (default 2048; 128 with --quick)")
    args = parser.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - set(PARTS + EXTRAS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS + EXTRAS}")
    bench = Bench(args, start=T0)
    bench.log("start", bench.result["meta"]["device"], "torch", torch.__version__,
              "transformers", transformers.__version__)
    run(bench)
    print(report(bench.result), flush=True)
    print(f"wrote {bench.path}", flush=True)


if __name__ == "__main__":
    main()
