"""model_bench.py's `serve` extra: batched generation throughput against BLOOM and MPT, and the longest prompt
decoded with a full (unwindowed) cache.

Batched: 32 prompts of 2,048 tokens, 256 new tokens each, greedy, the whole `generate` call timed (prompt
included); tokens/s = 32 x 256 / seconds. Ours with a plain `model.generate(ids, max_new_tokens=256)`, which on
CUDA runs the graph decoder (a second call is timed; the first one compiles), the peers with their own `generate`
and KV cache (one call each: they compile nothing).
Longest prompt: `graph_generate` (a static cache of prompt + new slots, chunked prefill, one CUDA graph per token)
at 256K, 512K and 1M tokens, until the first failure: prefill + decode time, KV bytes and peak memory. On the GPU
machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/model_bench.py --parts serve
"""

from __future__ import annotations

import time

import torch

from bench_decode import repeated_calls
from harness import AlibiForCausalLM, Bench, graph_generate, size

BATCH, PROMPT, NEW = 32, 2048, 256
QUICK_BATCH, QUICK_PROMPT, QUICK_NEW = 4, 128, 16
LONGEST = (262144, 524288, 1048576)
QUICK_LONGEST = (1024, 2048)
LONG_NEW = 32


def run(bench: Bench) -> None:
    """The extra: the batched rows (ours, then the peers), then the longest-prompt series."""
    quick = bench.args.quick
    shape = (QUICK_BATCH, QUICK_PROMPT, QUICK_NEW) if quick else (BATCH, PROMPT, NEW)
    part = bench.result.setdefault("serve", dict(batch=shape[0], prompt=shape[1], new_tokens=shape[2], rows=[],
                                                 longest=[]))
    model = bench.ours()
    part["rows"].append(dict(model="alibi generate()", **bench.case("serve alibi", batched_rate, bench, model, shape,
                                                                    calls=2)))
    bench.save()
    bench.series(part["longest"], "serve longest", longest_case, model, QUICK_LONGEST if quick else LONGEST)
    del model
    for name, make in bench.peers():
        model = bench.build(make)
        # One call: the peers compile nothing.
        part["rows"].append(dict(model=name, **bench.case(f"serve {name}", batched_rate, bench, model, shape, calls=1)))
        del model
        bench.save()
    rate = {r["model"]: r.get("tok_s") for r in part["rows"] if r.get("status") == "ok"}
    ours = rate.get("alibi generate()")
    part["ratios"] = {peer: round(ours / rate[peer], 1) for peer in ("bloom", "mpt") if ours and rate.get(peer)}


def batched_rate(bench: Bench, model: torch.nn.Module, shape: tuple[int, int, int], calls: int) -> dict:
    """Generated tokens/s of the last of `calls` whole batched greedy `generate` calls; the first call (which
    compiles ours) is also reported."""
    batch, length, new = shape
    ids = bench.ids(length, batch)
    with torch.no_grad():
        # No end token: every row generates `new` tokens, with no extra argument that would change our path.
        out, times = repeated_calls(bench, lambda: model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new, pad_token_id=1,
            eos_token_id=None), calls)
    generated = out.shape[1] - length
    return dict(tok_s=round(batch * generated / times[-1], 1), generate_s=round(times[-1], 2),
                first_call_s=round(times[0], 2), new_tokens=generated, calls=calls)


def longest_case(bench: Bench, model: AlibiForCausalLM, length: int) -> dict:
    """`graph_generate` of LONG_NEW tokens after a `length`-token prompt into a full static cache."""
    ids = bench.ids(length)
    bench.sync()
    t0 = time.perf_counter()
    out = graph_generate(model, ids, LONG_NEW, prefill_chunk_size=bench.S["chunk"])
    bench.sync()
    seconds = time.perf_counter() - t0
    kv = 2 * bench.S["layers"] * (length + LONG_NEW) * bench.S["d"] * 2  # keys and values, bf16
    from modeling_alibi.alibi_decoding import release_decoders

    release_decoders()  # the next length needs the memory
    return dict(length=length, new_tokens=out.shape[1] - length, call_s=round(seconds, 1), kv_bytes=kv)


def report(part: dict) -> list[str]:
    """The `[serve]` section of the table."""
    lines = [f"[serve] batch {part['batch']} x {part['prompt']}-token prompts, {part['new_tokens']} new each "
             f"(whole generate call)"]
    for r in part["rows"]:
        extra = f"first call {r.get('first_call_s')} s" if r.get("status") == "ok" else r.get("error", "")[:80]
        lines.append(f"  {r['model']:16s} {r['status']:6s} {r.get('tok_s', '-')!s:>9s} tok/s   {extra}")
    if part.get("ratios"):
        lines.append("  ours / peer: " + ", ".join(f"{k} {v}x" for k, v in part["ratios"].items()))
    for r in part["longest"]:
        lines.append(f"  full cache {r['length']:>8d} tokens {r['status']:6s} prefill+{LONG_NEW} new "
                     f"{r.get('call_s', '-')} s, KV {size(r.get('kv_bytes'))}, peak {size(r.get('peak_bytes'))} "
                     f"{r.get('error', '')[:80]}")
    return lines
