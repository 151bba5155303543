"""Does alibi_cudnn_attention make the host wait for the GPU on every call, and what would a step cost without it?

modeling_alibi/alibi_cudnn.py runs causal ALiBi attention on cuDNN's fused SDPA (use_alibi_mask).

    HF_HUB_OFFLINE=1 python3 benchmarks/cudnn_sync_probe.py [--out DIR] [--sections host,score_mod,graph]

The hypothesis: with use_alibi_mask, cudnn-frontend copies the ALiBi slopes from a host std::vector (pageable
memory) into the workspace with cudaMemcpyAsync on every execute (graph_interface.h `run_auxiliary_kernels`,
attn_score_modifiers.h `alibi_mask`). A pageable host-to-device copy may wait until the stream reaches it, so the
host cannot queue work ahead and the GPU idles between calls (4K tokens x 4: 1.183 ms per fwd+bwd step against
1.085 ms of kernels). bf16, 8 heads, head dim 128, inputs as (b, h, s, d) views of (b, s, h, d) memory. Sections,
each independent (a failure prints its traceback, is recorded, and the next section runs):

  host       Host blocking at 4096 x 4: queue ~20 ms of GPU work (torch.cuda._sleep, calibrated), then time on the
             host (perf_counter) one call of: alibi_cudnn_attention forward; the op's backward graph run directly;
             the frontend's causal graph without ALiBi and the score_mod ALiBi graph (section score_mod's, slopes
             on the device); unbiased torch SDPA; a 64-byte HtoD copy_ from pageable and from pinned memory
             (non_blocking=True). Each also timed with the GPU idle. A call whose host time is ~20 ms waited.
  graph      fwd+bwd (torch.autograd.grad with a fixed output gradient) of the op and of unbiased causal SDPA,
             eager (median_ms per call; mean_ms back to back) and captured in a torch.cuda.CUDAGraph (warm-up on
             a side stream first) and replayed, at 4096x4, 16384x1, 65536x1. sdpa/ours ratios, eager and graphed.
             A capture that fails is recorded with its error.
  score_mod  ALiBi forward through graph.sdpa(score_mod=...): a subgraph adding (col - row) * slope[h], the
             frontend's own alibi_mask subgraph, with the slopes a (1, h, 1, 1) fp32 DEVICE tensor in the variant
             pack (no host copy). Tried with use_causal_mask=True (nvidia-cudnn-frontend 1.32's Python validation
             refuses score_mod beside any diagonal band; the refusal is recorded) and with the causal mask inside
             the score_mod (row >= col, else -inf; no causal tile skipping). Checked against the use_alibi_mask
             graph and an fp32 torch reference at 2 x 1024 tokens, then timed (forward only; the frontend refuses
             score_mod with causal masking in the backward) beside the use_alibi_mask and plain causal graphs and
             unbiased SDPA at the three shapes.

Prints one progress line (JSON) per measurement and one table at the end; writes cudnn_sync_probe.json to --out
(default $OUT or .), rewritten after every section. Under 3 minutes on an H200.

Measured on an H200 on 2026-11-30 (docs/benchmarks.md, seventh session): no call waited (the op's forward returned
in 0.25 ms with 20 ms of GPU work queued), so the hypothesis is wrong; graphed fwd+bwd was 0.939x of SDPA at 4K x 4
and 0.971x at 16K; capture at 64K x 1 failed in the backward (cudaErrorStreamCaptureImplicit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from modeling_alibi import alibi_cudnn  # noqa: E402
from modeling_alibi.alibi_mask import alibi_slopes  # noqa: E402

from cuda_timing import mean_ms, median_ms  # noqa: E402

H, D = 8, 128
SCALE = D**-0.5
DTYPE = torch.bfloat16
SLEEP_MS = 20.0  # GPU work queued ahead of each host-timed call
HOST_CASE = (4096, 4)  # (length, batch) of section host
CHECK_CASE = (1024, 2)  # (length, batch) of section score_mod's accuracy check
# graph runs last: a capture that fails mid-way leaves the CUDA generator unusable for the rest of the process
# ("Offset increment outside graph capture"), which on the H200 cost the score_mod section its run.
SECTIONS = ("host", "score_mod", "graph")
TABLE: list[tuple[str, str, str, str]] = []  # (section, shape, case, result): the table printed at the end


def log(**row: Any) -> None:
    print(json.dumps(row, default=str), flush=True)


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:1500]


def shape_name(length: int, batch: int) -> str:
    return f"{length}x{batch}"


def bshd(batch: int, length: int, requires_grad: bool = False) -> torch.Tensor:
    """(b, h, s, d) view of (b, s, h, d) memory, the model's layout."""
    x = torch.randn(batch, length, H, D, device="cuda", dtype=DTYPE).transpose(1, 2)
    return x.requires_grad_(requires_grad)


def attempt(what: str, fn: Callable[[], Any]) -> Any:
    """fn(), or {'error': text} after printing the traceback: one failure must not hide the other measurements."""
    try:
        return fn()
    except Exception as error:  # noqa: BLE001
        print(f"--- {what} failed:", file=sys.stderr)
        traceback.print_exc()
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001  (a sticky CUDA error: later sections will report it too)
            traceback.print_exc()
        return {"error": error_text(error)}


def failed(value: Any) -> bool:
    return isinstance(value, dict) and "error" in value


def sci(x: Any) -> str:
    return f"{x:.2e}" if isinstance(x, float) else "-"


def ratio(a: Any, b: Any) -> str:
    return f"{a / b:.3f}" if isinstance(a, float) and isinstance(b, float) and b else "-"


# ----------------------------------------------------------------------------------------------------------
# cuDNN forward graphs built here (sections host and score_mod), beside the op's own
# ----------------------------------------------------------------------------------------------------------

# the forward graphs ForwardProbe builds, by kind
KINDS = {
    "causal": "use_causal_mask=True, no ALiBi (the unbiased cuDNN ceiling)",
    "alibi_mask": "use_causal_mask=True, use_alibi_mask=True (what the op builds)",
    "score_mod+causal": "use_causal_mask=True, score_mod adds (col - row) * slope (device slopes)",
    "score_mod_full": "score_mod adds (col - row) * slope and masks col > row with -inf; no use_causal_mask",
}
_PROBES: dict[tuple[str, int, int], Any] = {}  # (kind, batch, length) -> ForwardProbe or {'error': ...}


def alibi_score_mod(graph: Any, score: Any, slopes: Any, neg_inf: Any = None) -> Any:
    """score + (col - row) * slopes[h]: the frontend's alibi_mask subgraph (attn_score_modifiers.h), node for node.
    With `neg_inf`, also the causal mask (row >= col kept, else neg_inf), as the frontend's own causal_mask test
    (test/python/test_flexible_sdpa.py) writes it."""
    dt = alibi_cudnn._frontend().data_type
    row = graph.gen_index(input=score, axis=2, compute_data_type=dt.INT32, name="probe_row_idx")
    row.set_data_type(dt.INT32)
    col = graph.gen_index(input=score, axis=3, compute_data_type=dt.INT32, name="probe_col_idx")
    col.set_data_type(dt.INT32)
    relative = graph.sub(a=col, b=row, compute_data_type=dt.INT32, name="probe_sub_col_row")
    relative.set_data_type(dt.INT32)
    bias = graph.mul(a=relative, b=slopes, name="probe_mul_slope")  # float: the graph's compute type, as cuDNN's
    out = graph.add(a=score, b=bias, name="probe_add_alibi")
    if neg_inf is not None:
        keep = graph.cmp_ge(input=row, comparison=col, compute_data_type=dt.BOOLEAN, name="probe_row_ge_col")
        keep.set_data_type(dt.BOOLEAN)
        out = graph.binary_select(input0=out, input1=neg_inf, mask=keep, name="probe_causal_select")
    return out


class ForwardProbe:
    """One forward graph (q, k, v -> out, stats) at one shape, executed on caller buffers in the dict form."""

    def __init__(self, kind: str, batch: int, length: int, bind_neg_inf: bool = False) -> None:
        cudnn = alibi_cudnn._frontend()
        if cudnn is None:
            raise RuntimeError("nvidia-cudnn-frontend (module cudnn) is not importable")
        device = torch.device("cuda", torch.cuda.current_device())
        handle = alibi_cudnn._handle(cudnn, device)
        start = time.perf_counter()
        graph = alibi_cudnn._new_graph(cudnn, handle, DTYPE)
        b, h, s, d = batch, H, length, D
        layout = dict(dim=[b, h, s, d], stride=list(alibi_cudnn._bshd_strides(b, h, s, d)))
        q, k, v = (graph.tensor(name=name, **layout) for name in ("q", "k", "v"))
        self.bound: dict[Any, torch.Tensor] = {}  # graph tensor -> buffer, beside q, k, v, out, stats
        self.neg_inf_form: str | None = None
        mask: dict[str, Any] = {}
        if kind == "causal":
            mask = dict(use_causal_mask=True)
        elif kind == "alibi_mask":
            mask = dict(use_causal_mask=True, use_alibi_mask=True)
        elif kind.startswith("score_mod"):
            slopes = graph.tensor(name="alibi_slopes", dim=[1, h, 1, 1], stride=[h, 1, 1, 1],
                                  data_type=cudnn.data_type.FLOAT)
            self.bound[slopes] = alibi_slopes(h).view(1, h, 1, 1).to(device)  # fp32 on the device: no host copy
            if kind == "score_mod+causal":
                mask = dict(use_causal_mask=True, score_mod=partial(alibi_score_mod, slopes=slopes))
            else:
                neg_inf = self.negative_infinity(cudnn, graph, bind_neg_inf)
                mask = dict(score_mod=partial(alibi_score_mod, slopes=slopes, neg_inf=neg_inf))
        else:
            raise ValueError(kind)
        out, stats = graph.sdpa(name="probe_sdpa", q=q, k=k, v=v, generate_stats=True, attn_scale=SCALE, **mask)
        out.set_output(True).set_dim(layout["dim"]).set_stride(layout["stride"])
        stats.set_output(True).set_dim([b, h, s, 1]).set_stride([h * s, s, 1, 1])
        stats.set_data_type(cudnn.data_type.FLOAT)
        alibi_cudnn._finish(cudnn, graph)
        self.build_ms = round(1e3 * (time.perf_counter() - start), 1)
        self.engine = engine_name(graph)
        self.cudnn, self.device, self.graph = cudnn, device, graph
        self.tensors = (q, k, v, out, stats)
        self.workspace = torch.empty(max(graph.get_workspace_size(), 1), device=device, dtype=torch.uint8)
        self.shape = (b, h, s, d)
        self.first_run_ms: float | None = None

    def negative_infinity(self, cudnn: Any, graph: Any, bind: bool) -> Any:
        """-inf as the frontend's own masks hold it (std::make_shared<Tensor_attributes>(float)): a scalar whose value
        the graph keeps and binds itself (tensor_scalar, RUNTIME_PARAM). With `bind`, a pass-by-value tensor bound to
        a host scalar at each execute instead, as the frontend's test_flexible_sdpa.py does."""
        if not bind:
            self.neg_inf_form = "graph.tensor_scalar(-inf, RUNTIME_PARAM)"
            return graph.tensor_scalar(-math.inf, cudnn.scalar_type.RUNTIME_PARAM)
        self.neg_inf_form = "pass-by-value tensor bound to a host scalar"
        neg_inf = graph.tensor(name="neg_inf", dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], is_pass_by_value=True,
                               data_type=cudnn.data_type.FLOAT)
        self.bound[neg_inf] = torch.full((1, 1, 1, 1), -math.inf, dtype=torch.float32)
        return neg_inf

    def new_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, s, d = self.shape
        out = alibi_cudnn._empty_bshd(b, h, s, d, self.workspace.new_empty(0, dtype=DTYPE))
        return out, torch.empty(b, h, s, 1, device=self.device, dtype=torch.float32)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 stats: torch.Tensor) -> None:
        handle = alibi_cudnn._handle(self.cudnn, self.device)  # set to torch's current stream
        pack = dict(zip(self.tensors, (q, k, v, out, stats), strict=True))
        pack.update(self.bound)
        self.graph.execute(pack, self.workspace, handle=handle)


def engine_name(graph: Any) -> str:
    """Which engine serves the built graph: a Python engine of nvidia-cudnn-frontend 1.3x, or the cuDNN backend."""
    try:
        engine = getattr(graph, "selected_engine", None)
        return f"python engine {engine.name}" if engine is not None else "cuDNN backend"
    except Exception as error:  # noqa: BLE001
        return f"unknown ({error_text(error)[:100]})"


def smoke_tested(kind: str, batch: int, length: int, bind_neg_inf: bool) -> ForwardProbe:
    """A ForwardProbe that has executed once (on zeros), so that a graph that builds but cannot run fails here."""
    probe = ForwardProbe(kind, batch, length, bind_neg_inf)
    zeros = torch.zeros(batch, length, H, D, device="cuda", dtype=DTYPE).transpose(1, 2)
    start = time.perf_counter()
    probe(zeros, zeros, zeros, *probe.new_outputs())
    torch.cuda.synchronize()
    probe.first_run_ms = round(1e3 * (time.perf_counter() - start), 1)  # a Python engine compiles its kernel here
    return probe


def forward_probe(kind: str, batch: int, length: int) -> Any:
    """The built graph for (kind, shape), built once per process; {'error': ...} if it cannot be built or run.
    score_mod_full tries -inf as a graph scalar first, then as a bound pass-by-value tensor."""
    key = (kind, batch, length)
    if key not in _PROBES:
        errors = []
        for bind in (False, True) if kind == "score_mod_full" else (False,):
            what = f"building {kind} at {shape_name(length, batch)}" + (" (-inf bound at execute)" if bind else "")
            probe = attempt(what, partial(smoke_tested, kind, batch, length, bind))
            if not failed(probe):
                break
            errors.append(probe["error"])
        _PROBES[key] = probe if not failed(probe) else {"error": " | then, -inf bound at execute: ".join(errors)}
        probe = _PROBES[key]
        log(build=kind, shape=shape_name(length, batch),
            **(probe if failed(probe) else dict(build_ms=probe.build_ms, first_run_ms=probe.first_run_ms,
                                                engine=probe.engine, neg_inf=probe.neg_inf_form)))
    return _PROBES[key]


# ----------------------------------------------------------------------------------------------------------
# Section host: does a call wait for the GPU?
# ----------------------------------------------------------------------------------------------------------


def sleep_cycles(ms: float) -> int:
    """torch.cuda._sleep cycles worth `ms` of GPU time on this GPU (calibrated with CUDA events)."""
    torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    cycles = 5_000_000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return int(cycles * ms / start.elapsed_time(end))


def host_wait(fn: Callable[[], object], cycles: int, reps: int = 5) -> dict:
    """Host milliseconds of one call of fn with ~SLEEP_MS of GPU work queued ahead, and with the GPU idle."""
    fn()  # warm-up: graphs built, allocator primed
    torch.cuda.synchronize()
    busy, idle, queued = [], [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        idle.append(1e3 * (time.perf_counter() - start))
        torch.cuda.synchronize()
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before.record()
        torch.cuda._sleep(cycles)
        after.record()
        start = time.perf_counter()
        fn()
        busy.append(1e3 * (time.perf_counter() - start))
        torch.cuda.synchronize()
        queued.append(before.elapsed_time(after))
    busy_ms = statistics.median(busy)
    return dict(host_ms_gpu_busy=round(busy_ms, 3), host_ms_gpu_busy_max=round(max(busy), 3),
                host_ms_gpu_idle=round(statistics.median(idle), 3), queued_gpu_ms=round(statistics.median(queued), 2),
                waited=busy_ms > 0.5 * statistics.median(queued))


def section_host() -> dict:
    length, batch = HOST_CASE
    shape = shape_name(length, batch)
    cycles = sleep_cycles(SLEEP_MS)
    q, k, v, grad = (bshd(batch, length) for _ in range(4))
    rows: dict[str, Any] = {}

    def op_backward() -> Callable[[], object]:
        out, stats = alibi_cudnn._forward(q, k, v, SCALE)
        dq, dk, dv = (alibi_cudnn._empty_bshd(batch, H, length, D, q) for _ in range(3))
        return lambda: alibi_cudnn._run(True, SCALE, (q, k, v, out, stats, grad, dq, dk, dv))

    def graph_call(kind: str) -> Callable[[], object]:
        probe = forward_probe(kind, batch, length)
        if failed(probe):
            raise RuntimeError(f"{kind} graph not built: {probe['error']}")
        out, stats = probe.new_outputs()
        return lambda: probe(q, k, v, out, stats)

    def copy_from(pinned: bool) -> Callable[[], object]:
        source = torch.arange(16, dtype=torch.float32)  # 64 bytes
        source = source.pin_memory() if pinned else source
        return lambda: torch.empty(16, device="cuda").copy_(source, non_blocking=True)

    cases: dict[str, Callable[[], Callable[[], object]]] = {
        "alibi_cudnn_attention fwd": lambda: lambda: alibi_cudnn.alibi_cudnn_attention(q, k, v, SCALE),
        "op's bwd graph (alibi_cudnn._run)": op_backward,
        "cuDNN causal fwd, no ALiBi": lambda: graph_call("causal"),
        "cuDNN score_mod ALiBi fwd (device slopes)": lambda: graph_call("score_mod_full"),
        "torch SDPA causal fwd, unbiased": lambda: lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "64 B HtoD copy_, pageable, non_blocking": lambda: copy_from(pinned=False),
        "64 B HtoD copy_, pinned, non_blocking": lambda: copy_from(pinned=True),
    }
    for name, make in cases.items():
        row = rows[name] = attempt(f"host: {name}", lambda make=make: host_wait(make(), cycles))
        log(section="host", case=name, shape=shape, **row)
        if failed(row):
            TABLE.append(("host", shape, name, row["error"][:120]))
        else:
            TABLE.append(("host", shape, name,
                          f"host {row['host_ms_gpu_busy']:.3f} ms with {row['queued_gpu_ms']:.1f} ms queued "
                          f"(idle GPU {row['host_ms_gpu_idle']:.3f} ms): {'WAITED' if row['waited'] else 'no wait'}"))
    engines = {("op bwd" if key[0] else "op fwd"): engine_name(graph)
               for key, (graph, *_) in alibi_cudnn._GRAPHS.items()}
    engines.update({kind: probe.engine for (kind, b, s), probe in _PROBES.items()
                    if (s, b) == HOST_CASE and not failed(probe)})
    return dict(shape=shape, sleep_cycles=cycles, sleep_ms=SLEEP_MS, engines=engines, rows=rows)


# ----------------------------------------------------------------------------------------------------------
# Section graph: eager against CUDA-graph replay
# ----------------------------------------------------------------------------------------------------------


def capture(step: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """step captured in a CUDA graph, warmed up on a side stream first (torch.cuda.graph's documented recipe)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    graph.replay()
    torch.cuda.synchronize()
    return graph, static


def eager_and_graphed(step: Callable[[], Any], reps: int) -> dict:
    row: dict[str, Any] = {}
    timed = attempt("eager timing", lambda: dict(eager_ms=round(median_ms(step, reps), 4),
                                                 eager_b2b_ms=round(mean_ms(step, reps), 4)))
    row.update(timed if not failed(timed) else {"eager_error": timed["error"]})
    captured = attempt("capture", lambda: capture(step))
    if failed(captured):
        row["capture_error"] = captured["error"]
        return row
    graph, static = captured
    timed = attempt("replay timing", lambda: dict(graphed_ms=round(median_ms(graph.replay, reps), 4),
                                                  graphed_b2b_ms=round(mean_ms(graph.replay, reps), 4)))
    row.update(timed if not failed(timed) else {"replay_error": timed["error"]})
    try:  # replayed dq against an eager dq (cuDNN's dq may accumulate in any order: a small difference is fine)
        row["replay_vs_eager_dq_max_abs"] = float((static[0].float() - step()[0].float()).abs().max())
    except Exception as error:  # noqa: BLE001
        row["replay_check_error"] = error_text(error)
    return row


def graph_case(length: int, batch: int) -> dict:
    """Section graph at one shape: the op and unbiased SDPA, eager and graphed."""
    shape = shape_name(length, batch)
    torch.cuda.empty_cache()
    q, k, v = (bshd(batch, length, requires_grad=True) for _ in range(3))
    grad = bshd(batch, length)  # same layout as the outputs, so the op's backward copies nothing
    reps = 10 if length >= 65536 else 20

    def ours() -> Any:
        return torch.autograd.grad(alibi_cudnn.alibi_cudnn_attention(q, k, v, SCALE), (q, k, v), grad)

    def sdpa() -> Any:
        return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), grad)

    row: dict[str, Any] = dict(shape=shape)
    for name, step in (("sdpa", sdpa), ("ours", ours)):  # SDPA first: a failed capture of ours cannot spoil it
        row[name] = attempt(f"graph: {name} at {shape}", partial(eager_and_graphed, step, reps))
        log(section="graph", case=name, shape=shape, **row[name])
    row["eager_sdpa_over_ours"] = ratio(row["sdpa"].get("eager_ms"), row["ours"].get("eager_ms"))
    row["graphed_sdpa_over_ours"] = ratio(row["sdpa"].get("graphed_ms"), row["ours"].get("graphed_ms"))
    for name in ("ours", "sdpa"):
        r = row[name]
        errors = "; ".join(f"{key}: {r[key][:100]}" for key in ("error", "eager_error", "capture_error",
                                                                  "replay_error") if key in r)
        TABLE.append(("graph", shape, f"{name} fwd+bwd ms/step",
                      f"eager {r.get('eager_ms', '-')} (b2b {r.get('eager_b2b_ms', '-')}), graphed "
                      f"{r.get('graphed_ms', '-')} (b2b {r.get('graphed_b2b_ms', '-')})"
                      + (f"  [{errors}]" if errors else "")))
    TABLE.append(("graph", shape, "sdpa/ours", f"eager {row['eager_sdpa_over_ours']}, "
                                               f"graphed {row['graphed_sdpa_over_ours']}"))
    return row


def section_graph(cases: list[tuple[int, int]]) -> dict:
    return dict(rows=[attempt(f"graph at {shape_name(*case)}", partial(graph_case, *case)) for case in cases])


# ----------------------------------------------------------------------------------------------------------
# Section score_mod: ALiBi as a score_mod subgraph with device slopes
# ----------------------------------------------------------------------------------------------------------


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """fp32: softmax(scale * q.k - m_h (i - j)) v over keys j <= i."""
    s = q.shape[2]
    position = torch.arange(s, device=q.device)
    distance = (position[:, None] - position[None, :]).float()  # i - j
    slopes = alibi_slopes(q.shape[1]).to(q.device).view(1, -1, 1, 1)
    scores = SCALE * (q.float() @ k.float().transpose(-1, -2)) - slopes * distance
    scores = scores.masked_fill(position[None, :] > position[:, None], -math.inf)
    return scores.softmax(-1) @ v.float()


def check_accuracy(kinds: list[str]) -> dict:
    """Outputs of the score_mod graphs against the use_alibi_mask graph and an fp32 reference."""
    length, batch = CHECK_CASE
    torch.manual_seed(0)
    q, k, v = (bshd(batch, length) for _ in range(3))
    expected = reference(q, k, v)
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    report: dict[str, Any] = dict(shape=shape_name(length, batch))
    for kind in ["alibi_mask", *kinds]:
        probe = forward_probe(kind, batch, length)
        if failed(probe):
            report[kind] = probe
            continue
        out, stats = probe.new_outputs()
        probe(q, k, v, out, stats)
        torch.cuda.synchronize()
        results[kind] = (out, stats)
        report[kind] = dict(max_abs_vs_fp32_reference=float((out.float() - expected).abs().max()))

    def yardstick() -> float:  # torch SDPA with the bias as a bf16 additive mask, against the same reference
        position = torch.arange(length, device="cuda")
        bias = -alibi_slopes(H).cuda().view(1, H, 1, 1) * (position[:, None] - position[None, :]).float()
        bias = bias.masked_fill(position[None, :] > position[:, None], -math.inf).to(DTYPE)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=SCALE)
        return float((out.float() - expected).abs().max())

    report["sdpa_bf16_bias_max_abs_vs_fp32_reference"] = attempt("bf16 SDPA yardstick", yardstick)
    tolerance = dict(atol=1e-2, rtol=1.6e-2)  # bf16 output: ~1 ulp of values near 1
    report["tolerance"] = tolerance
    for kind in results:
        checks = report[kind]
        try:
            torch.testing.assert_close(results[kind][0].float(), expected, **tolerance)
            checks["matches_fp32_reference"] = True
        except AssertionError as error:
            checks["matches_fp32_reference"] = False
            checks["reference_mismatch"] = str(error)[:600]
        if kind != "alibi_mask" and "alibi_mask" in results:
            out, stats = results["alibi_mask"]
            checks["max_abs_vs_alibi_mask"] = float((results[kind][0].float() - out.float()).abs().max())
            checks["stats_max_abs_vs_alibi_mask"] = float((results[kind][1] - stats).abs().max())
            try:
                torch.testing.assert_close(results[kind][0], out, **tolerance)
                checks["matches_alibi_mask"] = True
            except AssertionError as error:
                checks["matches_alibi_mask"] = False
                checks["alibi_mask_mismatch"] = str(error)[:600]
    return report


def score_mod_case(length: int, batch: int, kinds: list[str]) -> dict:
    """Section score_mod at one shape: forward ms of each graph kind and of unbiased SDPA."""
    shape = shape_name(length, batch)
    torch.cuda.empty_cache()
    q, k, v = (bshd(batch, length) for _ in range(3))
    reps = 10 if length >= 65536 else 20
    row: dict[str, Any] = dict(shape=shape)
    for kind in ["causal", "alibi_mask", *kinds]:
        probe = forward_probe(kind, batch, length)
        if failed(probe):
            row[kind] = probe
        else:
            step = partial(probe, q, k, v, *probe.new_outputs())
            timed = attempt(f"score_mod: timing {kind} at {shape}", partial(time_forward, step, reps))
            row[kind] = dict(timed, engine=probe.engine, build_ms=probe.build_ms, neg_inf=probe.neg_inf_form)
        log(section="score_mod", case=kind, shape=shape, **row[kind])
    sdpa = partial(F.scaled_dot_product_attention, q, k, v, is_causal=True)
    row["sdpa"] = attempt(f"score_mod: SDPA at {shape}", partial(time_forward, sdpa, reps))
    log(section="score_mod", case="sdpa", shape=shape, **row["sdpa"])
    alibi_ms = row["alibi_mask"].get("ms")
    for kind in ["causal", "alibi_mask", *kinds, "sdpa"]:
        r = row[kind]
        TABLE.append(("score_mod", shape, f"fwd {kind}", r["error"][:120] if failed(r) else
                      f"{r.get('ms')} ms (b2b {r.get('b2b_ms', '-')}); alibi_mask/this "
                      f"{ratio(alibi_ms, r.get('ms'))}" + (f"; {r['engine']}" if "engine" in r else "")))
    return row


def time_forward(step: Callable[[], object], reps: int) -> dict:
    """median_ms of single synchronized calls, and mean_ms of back-to-back calls."""
    return dict(ms=round(median_ms(step, reps), 4), b2b_ms=round(mean_ms(step, reps), 4))


def section_score_mod(cases: list[tuple[int, int]]) -> dict:
    kinds = ["score_mod+causal", "score_mod_full"]
    accuracy = attempt("score_mod accuracy check", lambda: check_accuracy(kinds))
    log(section="score_mod", accuracy=accuracy)
    shape = shape_name(*CHECK_CASE)
    for kind in kinds:
        checks = accuracy if failed(accuracy) else accuracy.get(kind, {})
        if failed(checks):
            TABLE.append(("score_mod", shape, f"{kind} accuracy", checks["error"][:120]))
        else:
            TABLE.append(("score_mod", shape, f"{kind} accuracy",
                          f"= alibi_mask graph: {checks.get('matches_alibi_mask')} (max abs "
                          f"{sci(checks.get('max_abs_vs_alibi_mask'))}); = fp32 reference: "
                          f"{checks.get('matches_fp32_reference')} (max abs "
                          f"{sci(checks.get('max_abs_vs_fp32_reference'))}, bf16 SDPA+bias "
                          f"{sci(accuracy.get('sdpa_bf16_bias_max_abs_vs_fp32_reference'))})"))
    rows = [attempt(f"score_mod at {shape_name(*case)}", partial(score_mod_case, *case, kinds)) for case in cases]
    return dict(kinds=KINDS, accuracy=accuracy, rows=rows)


# ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--cases", default="4096x4,16384x1,65536x1", help="LENGTHxBATCH, comma-separated")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cudnn_sync_probe.py: no CUDA GPU (torch.cuda.is_available() is False); run it on the GPU machine")
    cases = [tuple(int(x) for x in case.split("x")) for case in args.cases.split(",")]
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        sys.exit(f"cudnn_sync_probe.py: unknown sections {unknown}; choose from {SECTIONS}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "cudnn_sync_probe.json")
    cudnn = alibi_cudnn._frontend()
    result: dict[str, Any] = dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, torch_cudnn=torch.backends.cudnn.version(),
        cudnn_frontend=getattr(cudnn, "__version__", None),
        cudnn_backend=attempt("cudnn.backend_version", lambda: cudnn.backend_version()) if cudnn else None,
        heads=H, head_dim=D, dtype="bf16",
    )
    log(**result)
    runners = {"host": section_host, "graph": lambda: section_graph(cases),
               "score_mod": lambda: section_score_mod(cases)}
    start = time.perf_counter()
    for name in sections:
        result[name] = attempt(f"section {name}", runners[name])
        if failed(result[name]):
            TABLE.append((name, "-", "section failed", result[name]["error"][:120]))
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=str)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)

    widths = [max(len(row[i]) for row in TABLE + [("section", "shape", "case", "")]) for i in range(3)]
    print(f"\n{'section':{widths[0]}}  {'shape':{widths[1]}}  {'case':{widths[2]}}  result")
    for section, shape, case, text in TABLE:
        print(f"{section:{widths[0]}}  {shape:{widths[1]}}  {case:{widths[2]}}  {text}")
    print(f"host: host time of one call queued behind {SLEEP_MS:.0f} ms of GPU work; WAITED = over half of it, so "
          "the call waited for the stream. graph: ms per fwd+bwd step, median of single synchronized calls (b2b: "
          "mean of back-to-back calls). score_mod: forward only; alibi_mask/this > 1 means this graph is faster.")
    print(f"Wrote {path} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
