"""The harness of model_bench.py: runs each case (wall time, peak memory, errors), builds the models, writes JSON.

Shared by the parts (bench_train.py, bench_prompt.py, bench_decode.py, bench_precision.py): the sizes (FULL, and
QUICK for `--quick`), the `Bench` that holds the run's result and writes `model_bench.json` after every case, our
model and the peers (transformers' BLOOM and MPT, random weights, bf16), and the device rates that the parts
compare with: the bf16 matmul rate (the MFU peak) and the device-to-device copy bandwidth (the HBM limit). The
package's names that the parts use are imported here, once. Not a script; it runs inside model_bench.py, which
prints the table, e.g. on the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/model_bench.py --parts decode
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import sys
import time
import traceback

import torch
import transformers
from transformers import BloomConfig, BloomForCausalLM, MptConfig, MptForCausalLM

from cuda_timing import median_s

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modeling_alibi import AlibiConfig, AlibiForCausalLM  # noqa: E402
from modeling_alibi.generation import decoding, graph_generate  # noqa: E402, F401  (for bench_decode)
from modeling_alibi.modeling_alibi import CACHE_NAME  # noqa: E402, F401  (for bench_prompt)

transformers.utils.logging.set_verbosity_error()
logging.getLogger("torch._inductor").setLevel(logging.ERROR)
# Training, chunked prefill, fp32 and bf16 all meet flex's one compiled function: stay far from Dynamo's default
# limit of 8 entries, past which it would silently fall back to unfused attention.
for _name, _value in (("cache_size_limit", 64), ("recompile_limit", 64), ("accumulated_cache_size_limit", 512),
                      ("accumulated_recompile_limit", 512)):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, _value)

GiB = 2**30

FULL = dict(
    vocab=32000, layers=16, d=1024, heads=8, ffn=4096,
    train_batch=16, train_len=512, train_warmup=2, train_reps=8, matmul_n=8192, copy_bytes=2 * GiB,
    prompt_full=(16384, 65536, 262144), prompt_window=(16384, 65536, 262144, 1048576), window=4096, chunk=2048,
    prompt_new=128, peer_prompt=(4096, 8192, 16384, 32768),
    decode_prompt=2048, decode_new=128, peer_warm_new=8, long_context=65536, long_steps=32, long_warmup=4,
    precision=dict(layers=4, d=512, heads=8, ffn=2048), precision_len=65536, precision_n=256,
)
QUICK = dict(
    vocab=1000, layers=2, d=64, heads=4, ffn=256,
    train_batch=4, train_len=128, train_warmup=1, train_reps=3, matmul_n=1024, copy_bytes=64 * 2**20,
    prompt_full=(256, 512, 2048), prompt_window=(256, 512, 1024, 2048), window=128, chunk=128,
    prompt_new=16, peer_prompt=(256, 512, 1024, 2048),
    decode_prompt=256, decode_new=32, peer_warm_new=4, long_context=2048, long_steps=8, long_warmup=2,
    precision=dict(layers=2, d=64, heads=4, ffn=256), precision_len=2048, precision_n=256,
)


class Bench:
    """One run: the options, the sizes `S`, the result (written to `path` by `save`) and the case runner."""

    def __init__(self, args: argparse.Namespace, start: float):
        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.S = dict(QUICK if args.quick else FULL)
        if args.chunk:
            self.S["chunk"] = args.chunk
        self.start = start  # the budget counts from here
        self.result: dict = dict(meta=self.meta(), timings_s={}, errors=[])
        os.makedirs(args.out, exist_ok=True)
        self.path = os.path.join(args.out, "model_bench.json")

    # --- bookkeeping ---------------------------------------------------------------------------------------

    def meta(self) -> dict:
        return dict(
            date=datetime.datetime.now().isoformat(timespec="seconds"),
            device=torch.cuda.get_device_name() if self.cuda else "cpu",
            torch=torch.__version__, transformers=transformers.__version__,
            quick=self.args.quick, parts=self.args.parts, argv=sys.argv[1:],
        )

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.start)

    def save(self) -> None:
        """Write the result so far (a cut-off run still leaves its results)."""
        self.result["meta"]["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        with open(self.path, "w") as f:
            json.dump(self.result, f, indent=1)

    def log(self, *items) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f}s]", *items, flush=True)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def clean(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def series(self, rows: list, label: str, fn, model, lengths) -> None:
        """Cases `fn(self, model, length)` of growing length, appended to `rows` (and saved) one by one, until
        the first that is not ok: a longer one would fail too (out of memory)."""
        for length in lengths:
            row = self.case(f"{label} {length}", fn, self, model, length)
            row.setdefault("length", length)
            rows.append(row)
            self.save()
            if row["status"] != "ok":
                break

    def case(self, name: str, fn, *args, **kwargs) -> dict:
        """Run one case: returns its dict with status ok / oom / error, and memory fields."""
        self.clean()
        row: dict = {}
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        profiler = None
        if not self.cuda:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            profiler.__enter__()
        t0 = time.perf_counter()
        try:
            row.update(fn(*args, **kwargs) or {})
            row["status"] = "ok"
        except torch.OutOfMemoryError:
            row["status"] = "oom"
        except Exception as ex:  # noqa: BLE001  (every failure is recorded; the run goes on)
            message = f"{type(ex).__name__}: {str(ex)[:300]}"
            row["status"] = "oom" if "out of memory" in str(ex).lower() else "error"
            row["error"] = message
            self.result["errors"].append(dict(case=name, error=message, trace=traceback.format_exc()[-2000:]))
        row["wall_s"] = round(time.perf_counter() - t0, 3)
        if self.cuda:
            row["peak_bytes"] = torch.cuda.max_memory_allocated()
            row["extra_bytes"] = row["peak_bytes"] - base
        elif profiler is not None:
            profiler.__exit__(None, None, None)
            row["extra_bytes"] = cpu_peak_bytes(profiler)
        self.clean()
        shown = ("tok_s", "prefill_s", "gen_tok_s", "per_token_ms", "error")
        self.log(name, row["status"], *(f"{k}={v}" for k, v in row.items() if k in shown))
        return row

    def timed(self, name: str, part) -> None:
        """Run `part(self)` (a whole part), record its time in timings_s and any failure in errors."""
        t0 = time.perf_counter()
        try:
            part(self)
        except Exception as ex:  # noqa: BLE001
            self.result["errors"].append(dict(case=name, error=f"{type(ex).__name__}: {str(ex)[:300]}",
                                              trace=traceback.format_exc()[-2000:]))
            self.log(name, "FAILED", type(ex).__name__, str(ex)[:200])
        self.result["timings_s"][name] = round(time.perf_counter() - t0, 1)
        self.clean()
        self.save()

    # --- models --------------------------------------------------------------------------------------------

    def ours(self, dtype=torch.bfloat16, sizes: dict | None = None, **overrides) -> AlibiForCausalLM:
        s = sizes or self.S
        config = AlibiConfig(vocab_size=self.S["vocab"], hidden_size=s["d"], num_hidden_layers=s["layers"],
                             num_attention_heads=s["heads"], intermediate_size=s["ffn"], hidden_dropout=0.0,
                             train_seq_len=512, **overrides)
        torch.manual_seed(0)
        with torch.device(self.dev):
            model = AlibiForCausalLM(config)
        return model.to(dtype).eval()

    def peers(self):
        """(name, make) for transformers' BLOOM and MPT at our sizes, eager (transformers refuses sdpa for them)."""
        s, V = self.S, self.S["vocab"]
        yield "bloom", lambda: BloomForCausalLM(BloomConfig(
            vocab_size=V, hidden_size=s["d"], n_layer=s["layers"], n_head=s["heads"], attn_implementation="eager"))
        # use_cache=True: MptConfig defaults to False (as MosaicML's checkpoints ship), and then generate() feeds the
        # whole sequence again at every step. BLOOM caches by default; both peers decode with their KV cache.
        yield "mpt", lambda: MptForCausalLM(MptConfig(
            vocab_size=V, d_model=s["d"], n_layers=s["layers"], n_heads=s["heads"], expansion_ratio=s["ffn"] // s["d"],
            max_seq_len=1 << 20, use_cache=True, attn_implementation="eager"))

    def build(self, make) -> torch.nn.Module:
        torch.manual_seed(0)
        with torch.device(self.dev):
            model = make()
        return model.to(torch.bfloat16).eval()

    def ids(self, length: int, batch: int = 1) -> torch.Tensor:
        return torch.randint(3, self.S["vocab"], (batch, length), device=self.dev)

    # --- device rates ----------------------------------------------------------------------------------------

    def rates(self) -> None:
        """bf16 matmul rate (the MFU peak) and device-to-device copy bandwidth (the HBM limit)."""
        meta = self.result["meta"]
        meta["matmul_tflops"] = self.matmul_tflops()
        meta["copy_gb_s"] = self.copy_gb_s()
        self.clean()
        self.log("rates", meta["matmul_tflops"], "TFLOP/s", meta["copy_gb_s"], "GB/s")

    def matmul_tflops(self) -> float:
        n = self.S["matmul_n"]
        a, b = (torch.randn(n, n, device=self.dev, dtype=torch.bfloat16) for _ in range(2))
        c = torch.empty_like(a)
        t = median_s(lambda: torch.matmul(a, b, out=c), reps=20 if self.cuda else 3, cuda=self.cuda)
        return round(2 * n**3 / t / 1e12, 1)

    def copy_gb_s(self) -> float:
        count = self.S["copy_bytes"] // 2
        src = torch.empty(count, device=self.dev, dtype=torch.bfloat16).normal_()
        dst = torch.empty_like(src)
        t = median_s(lambda: dst.copy_(src), reps=20 if self.cuda else 3, cuda=self.cuda)
        return round(2 * count * 2 / t / 1e9, 1)  # read + write


def cpu_peak_bytes(profiler: torch.profiler.profile) -> int | None:
    """Peak CPU bytes allocated during a profiled window, above its start, from the allocation events."""
    try:
        from torch._C._profiler import _EventType
    except ImportError:
        return None
    events, stack = [], list(profiler.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and str(node.extra_fields.device) == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
    if not events:
        return 0
    events.sort()
    base = events[0][2] - events[0][1]
    return max(total for _, _, total in events) - base


def size(n) -> str:
    """Bytes as GiB, or MiB below 1 GiB (quick runs): for the table."""
    if n is None:
        return "-"
    return f"{n / GiB:.2f}G" if n >= GiB else f"{n / 2**20:.1f}M"
