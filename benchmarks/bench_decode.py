"""model_bench.py's `decode` part: batch-1 decode tokens/s, ours against MPT, BLOOM, and per-token time at 64K context.

Greedy decode of 128 tokens after a 2,048-token prompt (time of the whole `generate` call, prompt included, as in
the anchors). Ours four ways: a plain `generate(ids, max_new_tokens=128)` (what a user gets by default: on CUDA the
graph decoder below, its compile time reported apart); transformers' loop with the dynamic cache;
`cache_implementation="static"` (generate compiles the step on CUDA); `modeling_alibi.generation.graph_generate`
(static cache, compiled step replayed as one CUDA graph per token). Then BLOOM and MPT; tokens/s and the ratios to
the peers (targets: plain >= 10x, fastest >= 20x). Then the per-token decode time at 65,536 tokens of context
(dynamic cache and graph_generate here, generate-style static in the `long_static` extra; the fastest counts)
against the HBM limit (weight bytes + KV-cache bytes read per token) / (device-to-device copy bandwidth measured in
the same run, harness.py). Its rows are the `[decode]` section of model_bench's table. On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/model_bench.py --parts decode
    HF_HUB_OFFLINE=1 python3 benchmarks/model_bench.py --parts long_static
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import StaticCache

from harness import AlibiForCausalLM, Bench, decoding, graph_generate, size


def run(bench: Bench) -> None:
    """The part: whole generate calls (ours three ways, then the peers), then per-token time at long context."""
    s = bench.S
    part = decode_part(bench)
    rows = part["rows"]
    model = bench.ours()
    rows.append(dict(model="alibi generate()", **bench.case("decode alibi generate()", plain_rate, bench, model)))
    bench.save()
    rows.append(dict(model="alibi dynamic", **bench.case("decode alibi dynamic", generate_rate, bench, model,
                                                          s["peer_warm_new"], cache_implementation="dynamic")))
    bench.save()
    # Warm-up with the same length as the timed call: the static cache keeps its shape, one compiled graph.
    rows.append(dict(model="alibi static", **bench.case("decode alibi static", generate_rate, bench, model,
                                                         s["decode_new"], cache_implementation="static")))
    bench.save()
    rows.append(dict(model="alibi graph", **bench.case("decode alibi graph", graph_rate, bench, model)))
    bench.save()
    del model
    for name, make in bench.peers():
        model = bench.build(make)
        rows.append(dict(model=name, **bench.case(f"decode {name}", generate_rate, bench, model,
                                                  s["peer_warm_new"])))
        del model
        bench.save()
    decode_ratios(part)
    model = bench.ours()
    part["long"].append(dict(cache="dynamic", **bench.case("decode long dynamic", long_decode, bench, model, False)))
    part["long"].append(dict(cache="graph", **bench.case("decode long graph", long_graph, bench, model)))
    hbm_limit(bench, model)
    del model
    bench.save()


def extra_long_static(bench: Bench) -> None:
    """The `long_static` extra: per-token time at long context with generate()'s compiled static-cache step."""
    model = bench.ours()
    decode_part(bench)["long"].append(dict(cache="static", **bench.case("decode long static", long_decode, bench,
                                                                        model, True)))
    hbm_limit(bench, model)
    del model
    bench.save()


def decode_part(bench: Bench) -> dict:
    s = bench.S
    return bench.result.setdefault("decode", dict(prompt=s["decode_prompt"], new_tokens=s["decode_new"], rows=[],
                                                  long=[]))


def generate_rate(bench: Bench, model, warm_new: int, **kwargs) -> dict:
    """One case: tokens/s of a whole greedy `generate` call (after a warm-up call of `warm_new` tokens)."""
    s = bench.S
    prompt = bench.ids(s["decode_prompt"])
    common = dict(attention_mask=torch.ones_like(prompt), do_sample=False, pad_token_id=1, **kwargs)
    bench.sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=warm_new, min_new_tokens=warm_new, **common)
        bench.sync()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=s["decode_new"], min_new_tokens=s["decode_new"], **common)
        bench.sync()
    dt = time.perf_counter() - t0
    assert out.shape[1] == s["decode_prompt"] + s["decode_new"], out.shape
    return dict(tok_s=round(s["decode_new"] / dt, 1), generate_s=round(dt, 3), first_call_s=round(first, 2),
                compiled=hasattr(model, "_compiled_call"))


def plain_rate(bench: Bench, model: AlibiForCausalLM) -> dict:
    """`model.generate(ids, max_new_tokens=n)` and nothing else, as a user writes it: on CUDA generate() sends it
    to graph_generate. See `repeated_calls` for which calls are timed."""
    s = bench.S
    prompt = bench.ids(s["decode_prompt"])
    with torch.no_grad():
        out, times = repeated_calls(bench, lambda: model.generate(prompt, max_new_tokens=s["decode_new"]))
    new = out.shape[1] - s["decode_prompt"]  # fewer than decode_new only if the end token came first
    return dict(new_tokens=new, compiled=bench.cuda, **call_times(times, new))


def graph_rate(bench: Bench, model: AlibiForCausalLM) -> dict:
    """`graph_generate` (static cache, compiled step, one CUDA graph per token): the whole call, as above."""
    s = bench.S
    prompt = bench.ids(s["decode_prompt"])
    out, times = repeated_calls(bench, lambda: graph_generate(model, prompt, s["decode_new"]))
    assert out.shape[1] == s["decode_prompt"] + s["decode_new"], out.shape
    return dict(compiled=bench.cuda, **call_times(times, s["decode_new"]))


def repeated_calls(bench: Bench, call, calls: int = 5) -> tuple[torch.Tensor, list[float]]:
    """The last output and the wall seconds of each of `calls` calls with one prompt. On CUDA the first compiles
    the step and captures it, the second captures the prompt (a shape's second call does), and the rest replay
    both: the rate is the median of those."""
    times = []
    for _ in range(calls):
        bench.sync()
        t0 = time.perf_counter()
        out = call()
        bench.sync()
        times.append(time.perf_counter() - t0)
    return out, times


def call_times(times: list[float], new_tokens: int) -> dict:
    """`repeated_calls`' times as a row: the rate and seconds of the median replayed call, and the first two."""
    median = statistics.median(times[2:])
    return dict(tok_s=round(new_tokens / median, 1), generate_s=round(median, 3), first_call_s=round(times[0], 2),
                second_call_s=round(times[1], 3))


def long_decode(bench: Bench, model: AlibiForCausalLM, static: bool) -> dict:
    """One case: median per-token time of single decode steps after a `long_context` prefill."""
    s = bench.S
    length, steps, warm = s["long_context"], s["long_steps"], s["long_warmup"]
    ids = bench.ids(length)
    total = length + warm + steps + 8
    cache = StaticCache(model.config, max_cache_len=total) if static else None
    bench.sync()
    t0 = time.perf_counter()
    logits, cache = model.prefill(ids, chunk_size=s["chunk"], cache=cache)
    bench.sync()
    out = dict(context=length, prefill_s=round(time.perf_counter() - t0, 2))
    if static:
        mask = torch.zeros(1, total, dtype=torch.long, device=bench.dev)  # padded to the cache length: one shape
        mask[:, :length] = 1
        # What generate() does for a static cache on CUDA (transformers' CompileConfig defaults).
        step = torch.compile(model, mode="reduce-overhead") if bench.cuda else model
    else:
        mask = torch.ones(1, total, dtype=torch.long, device=bench.dev)
        step = model
    token, seen, times = logits.argmax(-1, keepdim=True), length, []
    with torch.no_grad():
        for _ in range(warm + steps):
            if static:
                mask[:, seen] = 1
            seen += 1
            bench.sync()
            t0 = time.perf_counter()
            logits = step(token, attention_mask=mask if static else mask[:, :seen], cache=cache,
                          use_cache=True, logits_to_keep=1).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            bench.sync()
            times.append(time.perf_counter() - t0)
    out["first_step_s"] = round(times[0], 2)
    out["per_token_ms"] = round(1e3 * statistics.median(times[warm:]), 3)
    out["compiled"] = static and bench.cuda
    return out


def long_graph(bench: Bench, model: AlibiForCausalLM) -> dict:
    """Per-token time of `graph_generate` at `long_context` tokens of context: CUDA-event time of replays of the
    kept decoder's captured step, one token each, after a call that compiled and captured it (spare cache slots
    hold the replayed tokens). On the CPU, where there is no graph, the difference of two calls that differ only in
    new tokens. (That difference was the CUDA measure too until the prefill, 0.65 s at 65,536 tokens, came to vary
    between calls by more than the 64 steps take.)"""
    s = bench.S
    length, steps = s["long_context"], 2 * s["long_steps"]
    ids = bench.ids(length)
    run = lambda new: graph_generate(model, ids, new, max_cache_len=length + 4 + steps)  # noqa: E731
    bench.sync()
    t0 = time.perf_counter()
    run(4)  # compiles and captures
    bench.sync()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(4)
    bench.sync()
    out = dict(context=length, first_call_s=round(first, 2), call_s=round(time.perf_counter() - t0, 2),
               compiled=bench.cuda)
    if not bench.cuda:
        t0 = time.perf_counter()
        run(4 + steps)
        out["per_token_ms"] = round(1e3 * (time.perf_counter() - t0 - out["call_s"]) / steps, 3)
        return out
    graph = next(iter(decoding._DECODERS.values())).graph  # the decoder the calls kept: 4 + steps free slots
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    end.synchronize()
    out.update(per_token_ms=round(start.elapsed_time(end) / steps, 3), method=f"{steps} graph replays")
    return out


def decode_ratios(part: dict) -> None:
    """Tokens/s of each of our rows over each peer's, and our best row."""
    rate = {r["model"]: r.get("tok_s") for r in part["rows"] if r.get("status") == "ok"}
    ours = {k: v for k, v in rate.items() if k.startswith("alibi")}
    part["ratios"] = {f"{o} / {p}": round(ours[o] / rate[p], 1)
                      for o in ours for p in ("bloom", "mpt") if p in rate}
    if ours:
        best = max(ours, key=ours.get)
        part["best"] = dict(model=best, tok_s=ours[best], x_bloom=part["ratios"].get(f"{best} / bloom"),
                            x_mpt=part["ratios"].get(f"{best} / mpt"))


def hbm_limit(bench: Bench, model: AlibiForCausalLM) -> None:
    """The per-token floor: (weight bytes + KV bytes at long_context) / copy bandwidth, and the best long row."""
    s, part = bench.S, bench.result["decode"]
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes = 2 * s["layers"] * s["long_context"] * s["d"] * 2
    bandwidth = bench.result["meta"].get("copy_gb_s")
    limit = dict(weight_bytes=weight_bytes, kv_bytes=kv_bytes, copy_gb_s=bandwidth)
    if bandwidth:
        limit["limit_ms"] = round(1e3 * (weight_bytes + kv_bytes) / (bandwidth * 1e9), 3)
        ok = [r for r in part.get("long", []) if r.get("status") == "ok"]
        if ok:
            best = min(ok, key=lambda r: r["per_token_ms"])
            limit.update(best_cache=best["cache"], best_ms=best["per_token_ms"],
                         fraction_of_limit=round(limit["limit_ms"] / best["per_token_ms"], 3))
    part["hbm"] = limit


def report(part: dict) -> list[str]:
    """The `[decode]` section of the table."""
    lines = [f"[decode] batch 1, {part['prompt']}-token prompt, {part['new_tokens']} new (whole generate call)"]
    for r in part["rows"]:
        ok = r.get("status") == "ok"
        extra = f"first call {r['first_call_s']} s, compiled={r['compiled']}" if ok else r.get("error", "")[:80]
        lines.append(f"  {r['model']:16s} {r['status']:6s} {r.get('tok_s', '-')!s:>9s} tok/s   {extra}")
    if part.get("ratios"):
        lines.append("  ratios: " + ", ".join(f"{k} {v}x" for k, v in part["ratios"].items()))
    for r in part.get("long", []):
        lines.append(f"  context {r.get('context', '-')} {r['cache']:7s} {r['status']:6s} "
                     f"{r.get('per_token_ms', '-')} ms/token (prefill {r.get('prefill_s', '-')} s, "
                     f"first step {r.get('first_step_s', '-')} s) {r.get('error', '')[:80]}")
    h = part.get("hbm")
    if h and h.get("limit_ms") is not None:
        lines.append(f"  HBM limit: ({size(h['weight_bytes'])} weights + {size(h['kv_bytes'])} KV) / "
                     f"{h['copy_gb_s']} GB/s = {h['limit_ms']} ms/token; best {h.get('best_cache')} "
                     f"{h.get('best_ms')} ms = {h.get('fraction_of_limit')} of the limit")
    return lines
