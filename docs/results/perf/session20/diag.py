"""Session 20, calls 1 to 4: why the packed projection with alibi_norm's node failed cudagraph trees' pool check,
and what each combination costs a step.

The record of what ran (`.ab/s20_diag.py` in the session, against the tree of each call): calls 1 and 2 ran it with
`combo(True)` forcing `pack_qkv=True` into `AlibiAttention.forward` (main then refused the pair); call 1 without
the census; calls 2, 3a, 3a2 and 3 with versions of `census` (call 2's crashed on a weakref proxy; calls 3a and 3a2
collected at both checks, 3a2 also listing garbage that held CUDA tensors, and found nothing, the collection before
the run having freed the cycle); call 3 with this census, at the check after a run only; call 4 (`time` mode, cut
by its timeout) on the fixed tree, where `combo` is a no-op since main packs by itself. Lint-only edits
afterwards: the last line of `time_variant` no longer deletes the names its closure reads, and one long line
carries a noqa.

  python3 .ab/s20_diag.py diag OUTDIR       the failing 2-layer case with allocator history and the pool check's
                                           context printed (which check, where each flagged block went, who freed it)
  python3 .ab/s20_diag.py time OUTDIR v1,v2 step ms of the bench model (16 x 512, reduce-overhead, fused AdamW)
"""
import json
import sys
import time
import traceback

import torch
import torch._inductor.cudagraph_trees as ct

sys.path.insert(0, "tests")
import modeling_alibi.modeling_alibi as modeling  # noqa: E402
from modeling_alibi import AlibiConfig, AlibiForCausalLM  # noqa: E402
from modeling_alibi.training.loop import training_loss  # noqa: E402

ORIG_ATTN = modeling.AlibiAttention.forward


def combo(on: bool) -> None:
    """on: every block packs q, k, v even where it runs the node (the combination main refuses)."""
    modeling.AlibiAttention.forward = ORIG_ATTN  # session 20: main packs in every block by itself


# ---------------------------------------------------------------------------------------------------------------
FLAGGED = []
CENSUS = True
ORIG_CHECK = ct.check_memory_pool


def census(device, pool_id, live):
    """Collect the garbage that exists before the check, saved instead of freed, and print what holds tensors."""
    import collections
    import gc
    import types
    gc.set_debug(gc.DEBUG_SAVEALL)
    n = gc.collect()
    garbage = list(gc.garbage)
    gc.garbage.clear()
    gc.set_debug(0)
    live_ptrs = {w.data_ptr() for w in live if w()}
    shown = 0
    for o in garbage:  # garbage that holds real CUDA tensors, reachable or not
        try:
            held = [r for r in gc.get_referents(o) if (type(r) is torch.Tensor and r.is_cuda)
                    or type(r) in (torch.UntypedStorage, torch.TypedStorage)]
            if not held or shown > 40:
                continue
            shown += 1
            desc = type(o).__name__
            if type(o) is types.FrameType:
                desc += f"<{o.f_code.co_filename.split('/')[-1]}:{o.f_code.co_name}:{o.f_lineno}>"
            elif type(o) is types.FunctionType:
                desc += f"<{o.__module__}.{o.__qualname__}>"
            elif type(o) is dict:
                desc += str(list(o)[:8])
            elif type(o) in (list, tuple):
                desc += f"(len {len(o)})"
            parents = []
            for p in gc.get_referrers(o)[:4]:
                pd = type(p).__name__
                if type(p) is types.FrameType:
                    pd += f"<{p.f_code.co_filename.split('/')[-1]}:{p.f_code.co_name}:{p.f_lineno}>"
                elif type(p) is types.FunctionType:
                    pd += f"<{p.__module__}.{p.__qualname__}>"
                elif type(p) is dict:
                    pd += str(list(p)[:6])
                parents.append(pd)
            print(f"   HOLDER {desc} -> {[(type(t).__name__, tuple(getattr(t, 'shape', ())), (t.untyped_storage() if type(t) is torch.Tensor else t).data_ptr() in live_ptrs) for t in held][:6]}"  # noqa: E501
                  f"  referrers {parents}", flush=True)
        except Exception as error:  # noqa: BLE001
            print("   (holder print failed)", type(error).__name__, flush=True)
    tensors = [o for o in garbage if type(o) in (torch.Tensor, torch.nn.Parameter)]
    caller = sys._getframe(2)
    print(f"GC before check ({caller.f_code.co_name}:{caller.f_lineno}): {n} objects, {len(tensors)} tensors",
          flush=True)
    print("   types", collections.Counter(type(o).__name__ for o in garbage).most_common(40), flush=True)
    for o in garbage:
        try:
            if type(o) is types.FrameType:
                print(f"   frame {o.f_code.co_filename.split('/')[-1]}:{o.f_code.co_name}:{o.f_lineno}", flush=True)
            elif issubclass(type(o), BaseException):
                print(f"   exception {type(o).__name__}: {str(o)[:160]}", flush=True)
            elif type(o) is types.FunctionType:
                print(f"   function {o.__module__}.{o.__qualname__}", flush=True)
        except Exception:  # noqa: BLE001
            pass
    if tensors:
        ids_in = {id(o) for o in garbage}
        print("   types", collections.Counter(type(o).__name__ for o in garbage).most_common(30), flush=True)
        for t in tensors[:12]:
            try:
                ptr = t.untyped_storage().data_ptr() if t.device.type == "cuda" else None
                print(f"   tensor {tuple(t.shape)} {t.dtype} ptr {ptr} tracked-live {ptr in live_ptrs}", flush=True)
                chain, obj, seen = [], t, {id(t)}
                for _ in range(10):
                    refs = [r for r in gc.get_referrers(obj) if id(r) in ids_in and id(r) not in seen]
                    if not refs:
                        break
                    r = refs[0]
                    seen.add(id(r))
                    desc = type(r).__name__
                    if type(r) is dict:
                        desc += str([k for k, v in r.items() if v is obj][:2])
                    elif type(r) is types.FrameType:
                        desc += f"<{r.f_code.co_filename.split('/')[-1]}:{r.f_code.co_name}:{r.f_lineno}>"
                    elif type(r) is types.FunctionType:
                        desc += f"<{r.__module__}.{r.__qualname__}>"
                    elif type(r) in (list, tuple):
                        desc += f"(len {len(r)})"
                    chain.append(desc)
                    obj = r
                print("      held by", " <- ".join(chain), flush=True)
            except Exception as error:  # noqa: BLE001
                print("   (tensor print failed)", type(error).__name__, flush=True)
        for o in garbage:
            try:
                if type(o) is types.FrameType:
                    print(f"   frame {o.f_code.co_filename.split('/')[-1]}:{o.f_code.co_name}:{o.f_lineno}", flush=True)
                elif issubclass(type(o), BaseException):
                    print(f"   exception {type(o).__name__}: {str(o)[:160]}", flush=True)
            except Exception:  # noqa: BLE001
                pass
    del garbage, tensors
    gc.collect()


def check(device, pool_id, live):
    if CENSUS and sys._getframe(1).f_lineno > 740:
        census(device, pool_id, live)
    try:
        ORIG_CHECK(device, pool_id, live)
    except RuntimeError as error:
        caller = sys._getframe(1)
        print(f"CHECK FAILED in {caller.f_code.co_name} line {caller.f_lineno} (pool {pool_id})", flush=True)
        import re
        ptrs = sorted({int(p) for p in re.findall(r"\d{8,}", str(error).split("{")[1])})
        FLAGGED.extend(ptrs)
        for w in live:
            if w.data_ptr() in ptrs:
                print("  live ref", w.data_ptr(), "use count", torch._C._storage_Use_Count(w.ref.cdata),
                      "expired", w.expired(), flush=True)
        snap = torch.cuda.memory._snapshot()
        for ptr in ptrs:
            print(f"PTR {ptr}", flush=True)
            for seg in snap["segments"]:
                if seg["address"] <= ptr < seg["address"] + seg["total_size"]:
                    addr = seg["address"]
                    for block in seg["blocks"]:
                        if addr <= ptr < addr + block["size"]:
                            print(f"  segment pool {seg.get('segment_pool_id')} stream {seg['stream']} "
                                  f"seg {seg['address']} size {seg['total_size']}; block at {addr} "
                                  f"(offset {ptr - addr}) size {block['size']} state {block['state']}", flush=True)
                        addr += block["size"]
            events = [e for tr in snap["device_traces"] for e in tr
                      if e.get("addr") is not None and e["addr"] <= ptr < e["addr"] + max(e.get("size", 1), 1)]
            for e in events[-8:]:
                frames = [f"{f['filename'].split('/')[-1]}:{f['line']}:{f['name']}" for f in e.get("frames", [])
                          if "torch/_" not in f["filename"] or "cudagraph" in f["filename"]][:14]
                print(f"  EVENT {e['action']} addr {e['addr']} size {e.get('size')} stream {e.get('stream')}",
                      flush=True)
                for f in frames:
                    print("      ", f, flush=True)
        raise


ct.check_memory_pool = check


def diag(out: str, cases: str) -> None:
    from conftest import assert_compiled_step_as_accurate_as_eager, tiny_model
    for spec in cases.split(";"):
        layers, on, dtype = spec.split(",")
        layers, on, dtype = int(layers), on == "combo", {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        print("=" * 40, "case", spec, flush=True)
        torch._dynamo.reset()
        combo(on)
        torch.manual_seed(0)
        base = tiny_model(8, "sdpa", hidden_size=512, intermediate_size=2048, vocab_size=32_000,
                          num_hidden_layers=layers).train()
        ids = torch.randint(3, 32_000, (4, 256), device="cuda")
        torch.cuda.memory._record_memory_history(enabled="all", context="all", stacks="python", max_entries=400_000)
        try:
            assert_compiled_step_as_accurate_as_eager(
                base, lambda model: torch.compile(training_loss(model), mode="reduce-overhead"), ids, dtype)
            print(f"CASE {spec}: ok", flush=True)
        except Exception as error:  # noqa: BLE001
            print(f"CASE {spec}: FAILED {str(error)[:200]}", flush=True)
            traceback.print_exc(limit=4)
        torch.cuda.memory._record_memory_history(enabled=None)


# ---------------------------------------------------------------------------------------------------------------
VARIANTS = {  # name: (parameter dtype, autocast, combination, donated buffers, packing allowed)
    "main": (torch.bfloat16, False, False, True, True),
    "combo": (torch.bfloat16, False, True, True, True),
    "combo-nodonate": (torch.bfloat16, False, True, False, True),
    "main-nodonate": (torch.bfloat16, False, False, False, True),
    "unpacked": (torch.bfloat16, False, False, True, False),
    "autocast-packed": (torch.float32, True, False, True, True),
    "autocast-unpacked": (torch.float32, True, False, True, False),
}


def time_variant(name: str) -> dict:
    dtype, autocast, on, donated, packed = VARIANTS[name]
    torch._dynamo.reset()
    torch._functorch.config.donated_buffer = donated
    modeling.PACKED_QKV_DEVICES = ("cuda",) if packed else ()
    combo(on)
    config = AlibiConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=16, num_attention_heads=8,
                         intermediate_size=4096, hidden_dropout=0.0, train_seq_len=512)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AlibiForCausalLM(config).to(dtype).train()
    compiled = torch.compile(training_loss(model), mode="reduce-overhead")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(3, 32000, (16, 512), device="cuda")

    def step():
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            loss = compiled(input_ids=x, labels=x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    first_loss = step().item()
    first = time.perf_counter() - t0
    for _ in range(4):
        step()
    rows = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        rows.append(round((time.perf_counter() - t0) * 100, 3))  # ms per step
    result = dict(variant=name, ms=rows, first_step_s=round(first, 1), first_loss=first_loss,
                  peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    print("TIME", json.dumps(result), flush=True)
    torch.cuda.empty_cache()  # the model and optimizer go with this frame
    torch.cuda.reset_peak_memory_stats()
    return result


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "diag":
        CENSUS = sys.argv[4] == "census"
        diag(out, sys.argv[3])
    else:
        results = []
        for name in sys.argv[3].split(","):
            try:
                results.append(time_variant(name))
            except Exception as error:  # noqa: BLE001
                print(f"TIME {name} FAILED {str(error)[:300]}", flush=True)
                traceback.print_exc(limit=3)
        with open(f"{out}/s20_time.json", "w") as f:
            json.dump(results, f, indent=1)
