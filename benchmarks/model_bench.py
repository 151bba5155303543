"""Whole-model benchmark of alibi-lm against transformers' own ALiBi models (MPT, BLOOM), all in ONE process.

Every ratio is taken against peers measured in the same run, on the same GPU, with the method of
shared/research/anchor-bench/hf_peer_bench.py (random weights, pure bf16 weights, WikiText-103 block shape:
16 layers, d 1024, 8 heads, ffn 4096, plain 32,000 vocabulary, ~234M parameters), so they compare with the
anchors of shared/research/anchors.md section 5.

Parts (`--parts`, default all; each case catches OOM and errors, records them and goes on):

  train      fwd+bwd+AdamW step at L=512, 16 sequences: tokens/s and MFU. Ours on the default backend (flex
             on CUDA; `torch.compile(model)` in the `train_compiled` extra); MPT and BLOOM
             (eager: transformers refuses sdpa for them). All use fused AdamW; the row also gives tokens/s with
             the default (foreach) AdamW of the anchor method. FLOPs per step = 6 * params * tokens + attention
             12 * layers * d * L * tokens / 2 (causal). Peak = a 8192^3 bf16 matmul timed in this run.
  prompt     ours: chunked prefill (no grad, `AlibiForCausalLM.prefill`, chunk `--chunk`) into a full
             DynamicCache at 16K, 64K, 256K tokens, and with `attention_window=4096` at 16K, 64K, 256K, 1M; then
             greedy `generate` of 128 tokens from the filled cache. Peak memory (torch.cuda.max_memory_allocated)
             and time per case; a series stops at its first OOM. Peers: the longest single no-cache forward among
             4K..32K, as in hf_peer_bench.py.
  decode     batch-1 greedy decode of 128 tokens after a 2,048-token prompt (time of the whole `generate` call,
             prompt included, as in the anchors): ours with the dynamic cache, ours with
             `cache_implementation="static"` (generate compiles the step on CUDA), ours with
             `modeling_alibi.generation.graph_generate` (static cache, compiled step replayed as one CUDA graph per
             token), BLOOM, MPT; tokens/s and the ratios to the peers (target >= 20x). Then the per-token decode
             time at 65,536 tokens of context (dynamic cache and graph_generate here, generate-style static in the
             `long_static` extra; the fastest counts) against the HBM limit (weight bytes + KV-cache bytes read
             per token) / (device-to-device copy bandwidth measured here).
  precision  a smaller model (4 layers, d 512, 8 heads) in bf16 against the same weights in fp32 at 65,536
             tokens: max / mean |log-prob difference| over the first 256 and the last 256 positions (there should
             be no growth with position). Rows for the default backend and for sdpa (bias cast to bf16).

Memory is `torch.cuda.max_memory_allocated` on CUDA; `peak_bytes` is the absolute peak of a case and
`extra_bytes` the peak above what was allocated when it started (the weights). On CPU only `extra_bytes`
exists: the peak of CPU bytes allocated during the case, from the profiler's allocation events.

Extras (also names for `--parts`; run after the parts, and only while `--budget` seconds, default 480, still
have room for their estimated cost, else recorded as skipped):

  long_static     per-token decode at 65,536 tokens of context with a StaticCache and the step compiled as
                  generate() does it (`torch.compile(model, mode="reduce-overhead")`, CUDA graphs).
  train_compiled  training rows for `torch.compile(model)` and `torch.compile(model, mode="reduce-overhead")`
                  (CUDA graphs for forward and backward); CUDA only.

The default run (all parts, then the extras that fit) is sized for < 9 minutes on one H100. It prints one
progress line per case, then one compact table, and writes `$OUT/model_bench.json` (`--out`) after every case,
so a cut-off run still leaves its results. If the extras were skipped, a second call runs just them.

    python benchmarks/model_bench.py                                  # everything that fits, one GPU
    python benchmarks/model_bench.py --parts long_static,train_compiled
    python benchmarks/model_bench.py --parts decode,precision         # any subset
    python benchmarks/model_bench.py --device cpu --quick             # tiny sizes, CPU smoke run (~25 s)

On the device machine (torch and transformers from the image; nothing to install):
    HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 timeout 590 python3 benchmarks/model_bench.py 2>&1 | grep -v -i warn | tail -n 90
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import logging
import os
import statistics
import sys
import time
import traceback
import warnings

T0 = time.perf_counter()  # the budget counts from here, imports included

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import BloomConfig, BloomForCausalLM, MptConfig, MptForCausalLM, StaticCache  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modeling_alibi import AlibiConfig, AlibiForCausalLM  # noqa: E402
from modeling_alibi.generation import graph_generate  # noqa: E402
from modeling_alibi.modeling_alibi import CACHE_NAME  # noqa: E402

transformers.utils.logging.set_verbosity_error()
logging.getLogger("torch._inductor").setLevel(logging.ERROR)
# Training, chunked prefill, fp32 and bf16 all meet flex's one compiled function: stay far from Dynamo's default
# limit of 8 entries, past which it would silently fall back to unfused attention.
for _name, _value in (("cache_size_limit", 64), ("recompile_limit", 64), ("accumulated_cache_size_limit", 512),
                      ("accumulated_recompile_limit", 512)):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, _value)

PARTS = ("train", "prompt", "decode", "precision")
# Optional extras, run after the parts only while the time budget (--budget) has room for their cost.
EXTRAS = ("long_static", "train_compiled")
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
# Rough cost in seconds on one H100 of the optional extras (mostly compilation); each runs only when the budget
# has that much left.
EXTRA_COST = {"long_static": 110, "train_compiled": 220}


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.S = dict(QUICK if args.quick else FULL)
        if args.chunk:
            self.S["chunk"] = args.chunk
        self.start = T0
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
        self.log(name, row["status"], *(f"{k}={v}" for k, v in row.items()
                                        if k in ("tok_s", "prefill_s", "gen_tok_s", "per_token_ms", "error")))
        return row

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
        s, V = self.S, self.S["vocab"]
        yield "bloom", lambda: BloomForCausalLM(BloomConfig(
            vocab_size=V, hidden_size=s["d"], n_layer=s["layers"], n_head=s["heads"], attn_implementation="eager"))
        yield "mpt", lambda: MptForCausalLM(MptConfig(
            vocab_size=V, d_model=s["d"], n_layers=s["layers"], n_heads=s["heads"], expansion_ratio=s["ffn"] // s["d"],
            max_seq_len=1 << 20, attn_implementation="eager"))

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
        n = self.S["matmul_n"]
        a, b = (torch.randn(n, n, device=self.dev, dtype=torch.bfloat16) for _ in range(2))
        c = torch.empty_like(a)
        t = self.median_s(lambda: torch.matmul(a, b, out=c), reps=20 if self.cuda else 3)
        self.result["meta"]["matmul_tflops"] = round(2 * n**3 / t / 1e12, 1)
        del a, b, c
        count = self.S["copy_bytes"] // 2
        src = torch.empty(count, device=self.dev, dtype=torch.bfloat16).normal_()
        dst = torch.empty_like(src)
        t = self.median_s(lambda: dst.copy_(src), reps=20 if self.cuda else 3)
        self.result["meta"]["copy_gb_s"] = round(2 * count * 2 / t / 1e9, 1)  # read + write
        del src, dst
        self.clean()
        self.log("rates", self.result["meta"]["matmul_tflops"], "TFLOP/s", self.result["meta"]["copy_gb_s"], "GB/s")

    def median_s(self, fn, reps: int) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    # --- 1. training -------------------------------------------------------------------------------------------

    def train_rate(self, model: torch.nn.Module, step_model=None) -> dict:
        s = self.S
        B, L = s["train_batch"], s["train_len"]
        model.train()
        x = self.ids(L, B)
        run = step_model if step_model is not None else model
        params = sum(p.numel() for p in model.parameters())
        out = dict(params=params)
        for label, fused in (("tok_s", self.cuda), ("tok_s_default_adamw", None)):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

            def step():
                loss = run(input_ids=x, labels=x).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            self.sync()
            t0 = time.perf_counter()
            step()
            self.sync()
            if label == "tok_s":
                out["first_step_s"] = round(time.perf_counter() - t0, 2)  # includes compilation
            for _ in range(s["train_warmup"] - 1):
                step()
            self.sync()
            t0 = time.perf_counter()
            for _ in range(s["train_reps"]):
                step()
            self.sync()
            out[label] = round(B * L * s["train_reps"] / (time.perf_counter() - t0))
            del opt
        flops_per_token = 6 * params + 12 * s["layers"] * s["d"] * L / 2
        out["tflops"] = round(flops_per_token * out["tok_s"] / 1e12, 1)
        peak = self.result["meta"].get("matmul_tflops")
        out["mfu"] = round(out["tflops"] / peak, 3) if peak else None
        return out

    def train_rows(self) -> list:
        return self.result.setdefault("train", dict(batch=self.S["train_batch"], length=self.S["train_len"],
                                                    optimizer="fused AdamW (CUDA), all models", rows=[]))["rows"]

    def part_train(self) -> None:
        rows = self.train_rows()
        model = self.ours()
        rows.append(dict(model="alibi", backend=model.config._attn_implementation,
                         **self.case("train alibi", self.train_rate, model)))
        del model
        self.save()
        for name, make in self.peers():
            model = self.build(make)
            rows.append(dict(model=name, backend="eager", **self.case(f"train {name}", self.train_rate, model)))
            del model
            self.save()

    def extra_train_compiled(self) -> None:
        rows = self.train_rows()
        # Default mode, as `alibi-lm train --torch_compile` runs it; then with CUDA graphs for forward and backward.
        for position, (label, mode) in enumerate((("", "default"), (" reduce-overhead", "reduce-overhead"))):
            model = self.ours()
            compiled = torch.compile(model, mode=mode)
            rows.insert(min(1 + position, len(rows)), dict(
                model=f"alibi torch.compile{label}", backend=model.config._attn_implementation,
                **self.case(f"train alibi compiled{label}", self.train_rate, model, compiled)))
            del model, compiled
            self.save()

    # --- 2. longest prompt -------------------------------------------------------------------------------------

    def prompt_case(self, model: AlibiForCausalLM, length: int) -> dict:
        s = self.S
        ids = self.ids(length + 1)
        self.sync()
        t0 = time.perf_counter()
        _, cache = model.prefill(ids[:, :-1], chunk_size=s["chunk"])
        self.sync()
        out = dict(length=length, prefill_s=round(time.perf_counter() - t0, 3))
        out["prefill_tok_s"] = round(length / out["prefill_s"])
        out["kv_bytes"] = kv_bytes(cache)
        t0 = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), **{CACHE_NAME: cache}, do_sample=False,
                       max_new_tokens=s["prompt_new"], min_new_tokens=s["prompt_new"], pad_token_id=1)
        self.sync()
        out["generate_s"] = round(time.perf_counter() - t0, 3)
        out["gen_tok_s"] = round(s["prompt_new"] / out["generate_s"], 1)
        return out

    def peer_prompt_case(self, model: torch.nn.Module, length: int) -> dict:
        ids = self.ids(length)
        self.sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        self.sync()
        return dict(length=length, forward_s=round(time.perf_counter() - t0, 3))

    def part_prompt(self) -> None:
        s = self.S
        part = self.result.setdefault("prompt", dict(chunk=s["chunk"], window=s["window"], new_tokens=s["prompt_new"],
                                                     ours_full=[], ours_window=[], peers=[]))
        series = (("ours_full", None, s["prompt_full"]), ("ours_window", s["window"], s["prompt_window"]))
        for key, window, lengths in series:
            model = self.ours(attention_window=window)
            part["backend"] = model.config._attn_implementation
            for length in lengths:
                row = self.case(f"prompt {key} {length}", self.prompt_case, model, length)
                row.setdefault("length", length)
                part[key].append(row)
                self.save()
                if row["status"] != "ok":
                    break
            del model
        for name, make in self.peers():
            model = self.build(make)
            best = None
            for length in s["peer_prompt"]:
                row = self.case(f"prompt {name} {length}", self.peer_prompt_case, model, length)
                row.update(model=name, length=length)
                part["peers"].append(row)
                if row["status"] != "ok":
                    break
                best = row
            longest = best and dict(length=best["length"], forward_s=best["forward_s"], peak_bytes=best.get("peak_bytes"))
            part.setdefault("peer_longest", {})[name] = longest
            del model
            self.save()

    # --- 3. decode -----------------------------------------------------------------------------------------

    def generate_rate(self, model, warm_new: int, **kwargs) -> dict:
        s = self.S
        prompt = self.ids(s["decode_prompt"])
        common = dict(attention_mask=torch.ones_like(prompt), do_sample=False, pad_token_id=1, **kwargs)
        self.sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=warm_new, min_new_tokens=warm_new, **common)
            self.sync()
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=s["decode_new"], min_new_tokens=s["decode_new"], **common)
            self.sync()
        dt = time.perf_counter() - t0
        assert out.shape[1] == s["decode_prompt"] + s["decode_new"], out.shape
        return dict(tok_s=round(s["decode_new"] / dt, 1), generate_s=round(dt, 3), first_call_s=round(first, 2),
                    compiled=hasattr(model, "_compiled_call"))

    def long_decode(self, model: AlibiForCausalLM, static: bool) -> dict:
        s = self.S
        length, steps, warm = s["long_context"], s["long_steps"], s["long_warmup"]
        ids = self.ids(length)
        total = length + warm + steps + 8
        cache = StaticCache(model.config, max_cache_len=total) if static else None
        self.sync()
        t0 = time.perf_counter()
        logits, cache = model.prefill(ids, chunk_size=s["chunk"], cache=cache)
        self.sync()
        out = dict(context=length, prefill_s=round(time.perf_counter() - t0, 2))
        if static:
            mask = torch.zeros(1, total, dtype=torch.long, device=self.dev)  # padded to the cache length: one shape
            mask[:, :length] = 1
            # What generate() does for a static cache on CUDA (transformers' CompileConfig defaults).
            step = torch.compile(model, mode="reduce-overhead") if self.cuda else model
        else:
            mask = torch.ones(1, total, dtype=torch.long, device=self.dev)
            step = model
        token, seen, times = logits.argmax(-1, keepdim=True), length, []
        with torch.no_grad():
            for i in range(warm + steps):
                if static:
                    mask[:, seen] = 1
                seen += 1
                self.sync()
                t0 = time.perf_counter()
                logits = step(token, attention_mask=mask if static else mask[:, :seen], cache=cache,
                              use_cache=True, logits_to_keep=1).logits
                token = logits[:, -1].argmax(-1, keepdim=True)
                self.sync()
                times.append(time.perf_counter() - t0)
        out["first_step_s"] = round(times[0], 2)
        out["per_token_ms"] = round(1e3 * statistics.median(times[warm:]), 3)
        out["compiled"] = static and self.cuda
        return out

    def graph_rate(self, model: AlibiForCausalLM) -> dict:
        """`graph_generate` (static cache, compiled step, one CUDA graph per token): the whole call, as above."""
        s = self.S
        prompt = self.ids(s["decode_prompt"])
        self.sync()
        t0 = time.perf_counter()
        graph_generate(model, prompt, s["decode_new"])  # compiles the step
        self.sync()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = graph_generate(model, prompt, s["decode_new"])
        self.sync()
        dt = time.perf_counter() - t0
        assert out.shape[1] == s["decode_prompt"] + s["decode_new"], out.shape
        return dict(tok_s=round(s["decode_new"] / dt, 1), generate_s=round(dt, 3), first_call_s=round(first, 2),
                    compiled=self.cuda)

    def long_graph(self, model: AlibiForCausalLM) -> dict:
        """Per-token time of `graph_generate` at `long_context` tokens of context: the difference of two calls that
        differ only in new tokens (same cache size, so one compiled step), which cancels prefill and capture."""
        s = self.S
        length, few, many = s["long_context"], 4, 4 + 2 * s["long_steps"]
        ids = self.ids(length)
        run = lambda new: graph_generate(model, ids, new, max_cache_len=length + many)  # noqa: E731
        self.sync()
        t0 = time.perf_counter()
        run(few)  # compiles
        self.sync()
        first = time.perf_counter() - t0
        times = {}
        for new in (few, many, few, many):
            t0 = time.perf_counter()
            run(new)
            self.sync()
            times.setdefault(new, []).append(time.perf_counter() - t0)
        per_token = (min(times[many]) - min(times[few])) / (many - few)
        return dict(context=length, first_call_s=round(first, 2), call_s=round(min(times[few]), 2),
                    per_token_ms=round(1e3 * per_token, 3), compiled=self.cuda)

    def decode_part(self) -> dict:
        s = self.S
        return self.result.setdefault("decode", dict(prompt=s["decode_prompt"], new_tokens=s["decode_new"], rows=[],
                                                     long=[]))

    def part_decode(self) -> None:
        s = self.S
        part = self.decode_part()
        rows = part["rows"]
        model = self.ours()
        rows.append(dict(model="alibi dynamic", **self.case("decode alibi dynamic", self.generate_rate, model,
                                                             s["peer_warm_new"])))
        self.save()
        # Warm-up with the same length as the timed call: the static cache keeps its shape, one compiled graph.
        rows.append(dict(model="alibi static", **self.case("decode alibi static", self.generate_rate, model,
                                                            s["decode_new"], cache_implementation="static")))
        self.save()
        rows.append(dict(model="alibi graph", **self.case("decode alibi graph", self.graph_rate, model)))
        self.save()
        del model
        for name, make in self.peers():
            model = self.build(make)
            rows.append(dict(model=name, **self.case(f"decode {name}", self.generate_rate, model, s["peer_warm_new"])))
            del model
            self.save()
        self.decode_ratios()
        model = self.ours()
        part["long"].append(dict(cache="dynamic", **self.case("decode long dynamic", self.long_decode, model, False)))
        part["long"].append(dict(cache="graph", **self.case("decode long graph", self.long_graph, model)))
        self.hbm_limit(model)
        del model
        self.save()

    def extra_long_static(self) -> None:
        model = self.ours()
        self.decode_part()["long"].append(dict(cache="static", **self.case("decode long static", self.long_decode,
                                                                               model, True)))
        self.hbm_limit(model)
        del model
        self.save()

    def decode_ratios(self) -> None:
        part = self.result["decode"]
        rate = {r["model"]: r.get("tok_s") for r in part["rows"] if r.get("status") == "ok"}
        ours = {k: v for k, v in rate.items() if k.startswith("alibi")}
        part["ratios"] = {f"{o} / {p}": round(ours[o] / rate[p], 1) for o in ours for p in ("bloom", "mpt") if p in rate}
        if ours:
            best = max(ours, key=ours.get)
            part["best"] = dict(model=best, tok_s=ours[best],
                                x_bloom=part["ratios"].get(f"{best} / bloom"), x_mpt=part["ratios"].get(f"{best} / mpt"))

    def hbm_limit(self, model: AlibiForCausalLM) -> None:
        s, part = self.S, self.result["decode"]
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        kv_bytes = 2 * s["layers"] * s["long_context"] * s["d"] * 2
        bandwidth = self.result["meta"].get("copy_gb_s")
        limit = dict(weight_bytes=weight_bytes, kv_bytes=kv_bytes, copy_gb_s=bandwidth)
        if bandwidth:
            limit["limit_ms"] = round(1e3 * (weight_bytes + kv_bytes) / (bandwidth * 1e9), 3)
            ok = [r for r in part.get("long", []) if r.get("status") == "ok"]
            if ok:
                best = min(ok, key=lambda r: r["per_token_ms"])
                limit.update(best_cache=best["cache"], best_ms=best["per_token_ms"],
                             fraction_of_limit=round(limit["limit_ms"] / best["per_token_ms"], 3))
        part["hbm"] = limit

    # --- 4. precision --------------------------------------------------------------------------------------

    def part_precision(self) -> None:
        s = self.S
        sizes, length, n = s["precision"], s["precision_len"], s["precision_n"]
        part = self.result.setdefault("precision", dict(length=length, positions=n, sizes=sizes, rows=[]))
        reference = self.ours(torch.float32, sizes)
        ids = self.ids(length)
        keep = torch.cat([torch.arange(n), torch.arange(length - n, length)]).to(self.dev)
        part["reference_backend"] = reference.config._attn_implementation
        lp32 = self.case("precision fp32", lambda: dict(lp=self.log_probs(reference, ids, keep)))
        lp32_value = lp32.pop("lp", None)
        part["reference"] = lp32
        if lp32_value is None:
            return
        model = copy.deepcopy(reference).to(torch.bfloat16)
        del reference
        default = model.config._attn_implementation
        backends = [default] + (["sdpa"] if default != "sdpa" else [])
        for backend in backends:
            model.config._attn_implementation = backend

            def compare():
                diff = (self.log_probs(model, ids, keep) - lp32_value).abs()
                first, last = diff[:n], diff[n:]
                out = dict(first_max=float(first.max()), first_mean=float(first.mean()),
                           last_max=float(last.max()), last_mean=float(last.mean()))
                out["growth_max"] = round(out["last_max"] / out["first_max"], 2)
                out["growth_mean"] = round(out["last_mean"] / out["first_mean"], 2)
                return out

            part["rows"].append(dict(dtype="bf16", backend=backend, **self.case(f"precision bf16 {backend}", compare)))
            self.save()
        del model

    @staticmethod
    def log_probs(model, ids, keep) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits[0]  # (2n, vocab)
        return torch.log_softmax(logits.float(), dim=-1)

    # --- driver --------------------------------------------------------------------------------------------

    def run(self) -> None:
        parts = self.args.parts
        if set(parts) & {"train", "decode", "long_static", "train_compiled"}:
            self.case("rates", self.rates)
        for name in PARTS:
            if name in parts:
                self.timed(name, getattr(self, f"part_{name}"))
        for name in EXTRAS:
            if name in parts:
                self.extra(name, getattr(self, f"extra_{name}"))
        self.result["meta"]["total_s"] = round(time.perf_counter() - self.start, 1)
        self.save()

    def timed(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as ex:  # noqa: BLE001
            self.result["errors"].append(dict(case=name, error=f"{type(ex).__name__}: {str(ex)[:300]}",
                                              trace=traceback.format_exc()[-2000:]))
            self.log(name, "FAILED", type(ex).__name__, str(ex)[:200])
        self.result["timings_s"][name] = round(time.perf_counter() - t0, 1)
        self.clean()
        self.save()

    def extra(self, name: str, fn) -> None:
        if name == "train_compiled" and not self.cuda:
            self.result["timings_s"][name] = "skipped: CUDA only (inductor's CPU build takes minutes)"
            return
        need = EXTRA_COST[name] if self.cuda and not self.args.quick else 0
        if self.left() < need:
            self.result["timings_s"][name] = f"skipped: {self.left():.0f} s of budget left, needs ~{need}"
            self.log(name, "skipped (budget)")
            return
        self.timed(name, fn)


def kv_bytes(cache) -> int | None:
    """Bytes the cache holds now (None if its layout is not the one known here)."""
    try:
        return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    except (AttributeError, TypeError):
        return None


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


# --- report ----------------------------------------------------------------------------------------------------


def size(n) -> str:
    """Bytes as GiB, or MiB below 1 GiB (quick runs)."""
    if n is None:
        return "-"
    return f"{n / GiB:.2f}G" if n >= GiB else f"{n / 2**20:.1f}M"


def report(result: dict) -> str:
    m, lines = result["meta"], []
    lines.append(f"== model_bench | {m['device']} | torch {m['torch']} | transformers {m['transformers']} | "
                 f"bf16 matmul {m.get('matmul_tflops', '-')} TFLOP/s | copy {m.get('copy_gb_s', '-')} GB/s")
    if "train" in result:
        t = result["train"]
        lines.append(f"[train] L={t['length']} x {t['batch']} seqs, bf16 weights, {t['optimizer']}")
        lines.append(f"  {'model':22s} {'backend':15s} {'params':>8s} {'tok/s':>9s} {'(adamw)':>9s} {'TFLOP/s':>8s} "
                     f"{'MFU':>6s} {'1st step':>8s} {'x mpt':>6s} {'x bloom':>7s}")
        rate = {r["model"]: r.get("tok_s") for r in t["rows"] if r.get("status") == "ok"}
        for r in t["rows"]:
            if r.get("status") != "ok":
                lines.append(f"  {r['model']:22s} {r['backend']:15s} {r['status'].upper()} {r.get('error', '')[:80]}")
                continue
            ratio = lambda p: f"{r['tok_s'] / rate[p]:.2f}" if rate.get(p) else "-"  # noqa: E731
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
            lines.append(f"  {r['model']:22s} {r['backend']:15s} {r['params'] / 1e6:7.1f}M {r['tok_s']:9d} "
                         f"{r['tok_s_default_adamw']:9d} {r['tflops']:8.1f} {mfu:>6s} {r['first_step_s']:8.1f} "
                         f"{ratio('mpt'):>6s} {ratio('bloom'):>7s}")
    if "prompt" in result:
        p = result["prompt"]
        lines.append(f"[prompt] ours ({p.get('backend')}): prefill in chunks of {p['chunk']} + generate "
                     f"{p['new_tokens']}; window={p['window']}")
        lines.append(f"  {'series':11s} {'tokens':>8s} {'status':6s} {'prefill s':>9s} {'tok/s':>9s} {'gen tok/s':>9s} "
                     f"{'peak':>8s} {'extra':>9s} {'KV':>7s}")
        for key in ("ours_full", "ours_window"):
            for r in p[key]:
                lines.append(f"  {key[5:]:11s} {r['length']:8d} {r['status']:6s} {r.get('prefill_s', '-')!s:>9s} "
                             f"{r.get('prefill_tok_s', '-')!s:>9s} {r.get('gen_tok_s', '-')!s:>9s} "
                             f"{size(r.get('peak_bytes')):>8s} {size(r.get('extra_bytes')):>9s} {size(r.get('kv_bytes')):>7s}")
        for r in p["peers"]:
            lines.append(f"  {r['model']:11s} {r['length']:8d} {r['status']:6s} {r.get('forward_s', '-')!s:>9s} "
                         f"{'(1 forward, no cache)':>29s} {size(r.get('peak_bytes')):>8s} {size(r.get('extra_bytes')):>9s}")
    if "decode" in result:
        d = result["decode"]
        lines.append(f"[decode] batch 1, {d['prompt']}-token prompt, {d['new_tokens']} new (whole generate call)")
        for r in d["rows"]:
            ok = r.get("status") == "ok"
            extra = f"first call {r['first_call_s']} s, compiled={r['compiled']}" if ok else r.get("error", "")[:80]
            lines.append(f"  {r['model']:15s} {r['status']:6s} {r.get('tok_s', '-')!s:>9s} tok/s   {extra}")
        if d.get("ratios"):
            lines.append("  ratios: " + ", ".join(f"{k} {v}x" for k, v in d["ratios"].items()))
        for r in d.get("long", []):
            lines.append(f"  context {r.get('context', '-')} {r['cache']:7s} {r['status']:6s} "
                         f"{r.get('per_token_ms', '-')} ms/token (prefill {r.get('prefill_s', '-')} s, "
                         f"first step {r.get('first_step_s', '-')} s) {r.get('error', '')[:80]}")
        h = d.get("hbm")
        if h and h.get("limit_ms") is not None:
            lines.append(f"  HBM limit: ({size(h['weight_bytes'])} weights + {size(h['kv_bytes'])} KV) / "
                         f"{h['copy_gb_s']} GB/s = {h['limit_ms']} ms/token; best {h.get('best_cache')} "
                         f"{h.get('best_ms')} ms = {h.get('fraction_of_limit')} of the limit")
    if "precision" in result:
        q = result["precision"]
        lines.append(f"[precision] bf16 vs fp32 ({q.get('reference_backend')}) log-probs, {q['sizes']}, "
                     f"L={q['length']}, first/last {q['positions']} positions; reference {q['reference']['status']}")
        for r in q["rows"]:
            if r.get("status") != "ok":
                lines.append(f"  {r['backend']:15s} {r['status']} {r.get('error', '')[:80]}")
                continue
            lines.append(f"  {r['backend']:15s} first max {r['first_max']:.2e} mean {r['first_mean']:.2e} | last max "
                         f"{r['last_max']:.2e} mean {r['last_mean']:.2e} | growth x{r['growth_max']} / x{r['growth_mean']}")
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
    bench = Bench(args)
    bench.log("start", bench.result["meta"]["device"], "torch", torch.__version__, "transformers", transformers.__version__)
    bench.run()
    print(report(bench.result), flush=True)
    print(f"wrote {bench.path}", flush=True)


if __name__ == "__main__":
    main()
