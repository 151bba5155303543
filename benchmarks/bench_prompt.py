"""model_bench.py's `prompt` part: time and peak memory of long prompts, ours up to 1M tokens against MPT, BLOOM.

Ours: chunked prefill (no grad, `AlibiForCausalLM.prefill`, chunk `--chunk`) into a full DynamicCache at 16K,
64K, 256K tokens, and with `attention_window=4096` at 16K, 64K, 256K, 1M; then greedy `generate` of 128 tokens
from the filled cache. Peak memory (torch.cuda.max_memory_allocated) and time per case; a series stops at its
first OOM. Peers: the longest single no-cache forward among 4K..32K, as in hf_peer_bench.py. Its rows are the
`[prompt]` section of model_bench's table. On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/model_bench.py --parts prompt
"""

from __future__ import annotations

import time

import torch

from harness import CACHE_NAME, AlibiForCausalLM, Bench, size


def run(bench: Bench) -> None:
    """The part: our two series (full cache, windowed cache), then the peers."""
    s = bench.S
    part = bench.result.setdefault("prompt", dict(chunk=s["chunk"], window=s["window"], new_tokens=s["prompt_new"],
                                                  ours_full=[], ours_window=[], peers=[]))
    series = (("ours_full", None, s["prompt_full"]), ("ours_window", s["window"], s["prompt_window"]))
    for key, window, lengths in series:
        model = bench.ours(attention_window=window)
        part["backend"] = model.config._attn_implementation
        bench.series(part[key], f"prompt {key}", prompt_case, model, lengths)
        del model
    for name, make in bench.peers():
        model = bench.build(make)
        best = None
        for length in s["peer_prompt"]:
            row = bench.case(f"prompt {name} {length}", peer_prompt_case, bench, model, length)
            row.update(model=name, length=length)
            part["peers"].append(row)
            if row["status"] != "ok":
                break
            best = row
        longest = best and dict(length=best["length"], forward_s=best["forward_s"],
                                peak_bytes=best.get("peak_bytes"))
        part.setdefault("peer_longest", {})[name] = longest
        del model
        bench.save()


def prompt_case(bench: Bench, model: AlibiForCausalLM, length: int) -> dict:
    """One case of ours: chunked prefill of `length` tokens, then `generate` from the filled cache."""
    s = bench.S
    ids = bench.ids(length + 1)
    bench.sync()
    t0 = time.perf_counter()
    _, cache = model.prefill(ids[:, :-1], chunk_size=s["chunk"])
    bench.sync()
    out = dict(length=length, prefill_s=round(time.perf_counter() - t0, 3))
    out["prefill_tok_s"] = round(length / out["prefill_s"])
    out["kv_bytes"] = kv_bytes(cache)
    t0 = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), **{CACHE_NAME: cache}, do_sample=False,
                   max_new_tokens=s["prompt_new"], min_new_tokens=s["prompt_new"], pad_token_id=1)
    bench.sync()
    out["generate_s"] = round(time.perf_counter() - t0, 3)
    out["gen_tok_s"] = round(s["prompt_new"] / out["generate_s"], 1)
    return out


def peer_prompt_case(bench: Bench, model: torch.nn.Module, length: int) -> dict:
    """One case of a peer: a single no-cache forward of `length` tokens."""
    ids = bench.ids(length)
    bench.sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    bench.sync()
    return dict(length=length, forward_s=round(time.perf_counter() - t0, 3))


def kv_bytes(cache) -> int | None:
    """Bytes the cache holds now (None if its layout is not the one known here)."""
    try:
        return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    except (AttributeError, TypeError):
        return None


def report(part: dict) -> list[str]:
    """The `[prompt]` section of the table."""
    lines = [f"[prompt] ours ({part.get('backend')}): prefill in chunks of {part['chunk']} + generate "
             f"{part['new_tokens']}; window={part['window']}",
             f"  {'series':11s} {'tokens':>8s} {'status':6s} {'prefill s':>9s} {'tok/s':>9s} {'gen tok/s':>9s} "
             f"{'peak':>8s} {'extra':>9s} {'KV':>7s}"]
    for key in ("ours_full", "ours_window"):
        for r in part[key]:
            lines.append(f"  {key[5:]:11s} {r['length']:8d} {r['status']:6s} {r.get('prefill_s', '-')!s:>9s} "
                         f"{r.get('prefill_tok_s', '-')!s:>9s} {r.get('gen_tok_s', '-')!s:>9s} "
                         f"{size(r.get('peak_bytes')):>8s} {size(r.get('extra_bytes')):>9s} "
                         f"{size(r.get('kv_bytes')):>7s}")
    for r in part["peers"]:
        lines.append(f"  {r['model']:11s} {r['length']:8d} {r['status']:6s} {r.get('forward_s', '-')!s:>9s} "
                     f"{'(1 forward, no cache)':>29s} {size(r.get('peak_bytes')):>8s} "
                     f"{size(r.get('extra_bytes')):>9s}")
    return lines
