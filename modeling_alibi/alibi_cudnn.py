"""Causal ALiBi attention on cuDNN's fused flash SDPA, forward and backward, through nvidia-cudnn-frontend.

Why: cuDNN's fused SDPA has ALiBi built in (`use_alibi_mask`). On an H200 (bf16, 8 heads, head dim 128,
benchmarks/cudnn_bench.py, runs of the fifth to eighth sessions) this op's forward+backward runs at 0.85-0.93x (4K
tokens x 4), 0.89-0.93x (16K) and 0.96-0.985x (64K) of unbiased causal SDPA, and 1.4x, 2.5x and 2.3x faster than the
model's flex backend; its forward alone is 0.84-0.86x of unbiased SDPA, 1.1-1.25x faster than the Triton kernel the
model uses for inference. No other plan cuDNN offers for these graphs is faster (benchmarks/cudnn_plan_sweep.py).
Its host cost per call is higher than SDPA's (53 us for an eager forward against 17; forward+backward through
autograd 270-310 us against 125-170; benchmarks/cudnn_host_profile.py), which shows at small shapes unless CUDA
graphs replay the step; eager calls therefore skip the custom ops' dispatch (`_EagerCudnnAlibi`).

What it computes, exactly (and nothing else):
    out[b, h, i] = sum_j softmax_j(scale * q_i.k_j - m_h * (i - j)) v_j   over keys j <= i,
with m_h the paper's slopes for h heads at alibi_bias_max = 8 (`alibi_slopes(h)`, non-powers of two
included): cuDNN derives the slopes from the head count itself and takes no other bias_max. The causal
diagonal is aligned top-left (query i sees keys 0..i), and cuDNN refuses ALiBi with bottom-right alignment, so
queries and keys must be the same tokens: q_len == k_len and query i is key i. In the model's terms the op
serves a call exactly when all of these hold:
  * ALiBi with `alibi_bias_max == 8` (not the sinusoidal/none baselines);
  * no padding (`key_padding is None`), no packed documents (`segments is None`);
  * no window (`window is None`) and no truncation (`max_distance is None`);
  * no cache offset: `offset == 0` and q_len == k_len (training, scoring, whole-prompt prefill without a cache;
    not cached chunks or decode steps);
  * no attention dropout, and `is_supported(query, key)`: CUDA (sm80+), nvidia-cudnn-frontend importable,
    bf16 or fp16 (cuDNN's fused SDPA has no fp32), head dim a multiple of 8 and at most 128.

Layout: the graphs are built for (b, h, s, d) views of (b, s, h, d)-contiguous memory, the layout of the
model's projections `(b, s, h, d).transpose(1, 2)`, which therefore go in without a copy; any other strides are
copied into it first. The output and the gradients come back in that layout too.

Packed: `alibi_cudnn_attention_packed` takes one (b, s, 3 * h * d) tensor, the output of q, k and v projected as
one GEMM, and reads q, k and v from it in place (rows of 3 * h * d elements); its backward writes their gradients
into one tensor of that layout, which the projection's backward reads as one GEMM input. Separate q, k and v views
of such a tensor would need a copy each way: the custom ops cannot return gradients that share memory, and
autograd would concatenate three separate ones.

Each (shape, dtype, device, scale) builds one forward and one backward cuDNN graph on first use (60-100 ms each on
an H200; benchmarks/cudnn_bench.py prints it; the process's first call also loads the frontend, about 0.5 s),
cached for the process: paid once for training's fixed shape, once per new length for prompts. Kernels run on
torch's current stream and the workspace comes from torch's caching allocator, so the op works under CUDA-graph
capture once its graphs are built (a warm-up call builds them). Forward and backward are `torch.library` custom
ops with fake kernels and an autograd formula, so `torch.compile(fullgraph=True)` keeps them as single nodes.

Hub payload: imports only torch, the standard library and its sibling alibi_ops.py; `cudnn` is imported inside
`try` where first needed, and without it `is_supported` is False.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import threading
import traceback
from typing import Any

import torch

from .alibi_ops import custom_op

__all__ = ["alibi_cudnn_attention", "alibi_cudnn_attention_packed", "is_supported"]

try:  # the tracer's dispatch mode (make_fx, export), if any; private, so absent means "never traced this way"
    from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode
except ImportError:  # pragma: no cover
    def _current_dispatch_mode() -> None:
        return None

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 128
# Built graphs kept per process; the oldest goes first. Training uses one shape; varied prompt lengths would
# otherwise accumulate plans without bound.
GRAPH_CACHE_SIZE = 64


@functools.cache
def _frontend() -> Any:
    """The `cudnn` module of nvidia-cudnn-frontend, or None where it is missing or cannot load."""
    try:
        import cudnn
    except (ImportError, OSError, RuntimeError):
        return None
    return cudnn


@torch.compiler.assume_constant_result
def _available() -> bool:
    return _frontend() is not None


@torch.compiler.assume_constant_result
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)  # cuDNN's fused flash SDPA: Ampere and later


def is_supported(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether `alibi_cudnn_attention` computes this call: see the module docstring for the mask conditions.

    Args:
        query: (b, h, q, d).
        key: (b, h, k, d).
    """
    return (
        query.is_cuda
        and query.dim() == 4
        and key.shape == query.shape  # q_len == k_len, same heads, no GQA
        and query.dtype in SUPPORTED_DTYPES
        and key.dtype == query.dtype
        and query.shape[-1] % 8 == 0
        and query.shape[-1] <= MAX_HEAD_DIM
        and _available()
        and _capable(query.device.index if query.device.index is not None else 0)
    )


# ----------------------------------------------------------------------------------------------------------
# Graphs, handles, execution
# ----------------------------------------------------------------------------------------------------------


def _bshd_strides(b: int, h: int, s: int, d: int, row: int | None = None) -> tuple[int, int, int, int]:
    """Strides of a (b, h, s, d) view of (b, s, h, d)-contiguous memory, or of memory whose token rows are `row`
    elements apart (3 * h * d for q, k or v inside a packed projection)."""
    row = h * d if row is None else row
    return (s * row, d, row, 1)


def _as_bshd(x: torch.Tensor) -> torch.Tensor:
    """`x` (b, h, s, d) in the layout the graphs are built for, with a 16-byte-aligned base; copies only if needed."""
    if x.stride() != _bshd_strides(*x.shape) or x.data_ptr() % 16:
        # clone, not contiguous: contiguous() returns a misaligned tensor unchanged
        x = x.transpose(1, 2).clone(memory_format=torch.contiguous_format).transpose(1, 2)
    return x


def _empty_bshd(b: int, h: int, s: int, d: int, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(b, s, h, d, device=like.device, dtype=like.dtype).transpose(1, 2)  # (b, h, s, d)


_GRAPHS: dict[tuple, tuple[Any, tuple[Any, ...], int]] = {}
_GRAPHS_LOCK = threading.Lock()
atexit.register(_GRAPHS.clear)  # release the frontend's objects before its module is torn down
# cuDNN handles must not be shared between threads (autograd runs the backward on its own thread), so each
# thread has one per device. Built graphs are immutable and run with the calling thread's handle.
_THREAD = threading.local()


try:  # torch's current stream of a device as a raw pointer; private (inductor's generated code uses it), so guarded
    from torch._C import _cuda_getCurrentRawStream as _raw_stream
except ImportError:  # pragma: no cover
    def _raw_stream(index: int) -> int:
        return torch.cuda.current_stream(index).cuda_stream


def _handle(cudnn: Any, device: torch.device) -> Any:
    """This thread's cuDNN handle for `device`, set to torch's current stream."""
    handles = _THREAD.__dict__.setdefault("handles", {})
    index = device.index if device.index is not None else torch.cuda.current_device()
    entry = handles.get(index)  # [handle, the stream it was last set to]
    if entry is None:
        with torch.cuda.device(index):
            entry = handles[index] = [cudnn.create_handle(), None]
    stream = _raw_stream(index)
    if stream != entry[1]:  # host time: the stream changes only under side streams and graph capture
        cudnn.set_stream(entry[0], stream)
        entry[1] = stream
    return entry[0]


def _new_graph(cudnn: Any, handle: Any, dtype: torch.dtype) -> Any:
    io_type = cudnn.data_type.BFLOAT16 if dtype == torch.bfloat16 else cudnn.data_type.HALF
    return cudnn.pygraph(
        io_data_type=io_type,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=handle,
    )


# cuDNN's heuristic modes, one per graph, the next one only where a mode offers no plan that builds: A ranks first
# the fastest plan for these graphs (benchmarks/cudnn_plan_sweep.py). One at a time, not `[A, FALLBACK]` in one
# call, because nvidia-cudnn-frontend (1.32) keeps the error of a mode that offers no plan (one did, for these
# graphs) in a reference cycle with the frames on the stack (`_create_backend_plans`: `failure = exc`).
# Until Python's next collection that cycle held the op's inputs and every live buffer of its callers; in compiled
# training it made inductor's CUDA-graph warm-up check fail (docs/benchmarks.md, twentieth session).
HEURISTIC_MODES = ("A", "FALLBACK")


def _plan(cudnn: Any, graph: Any, modes: tuple[str, ...] = HEURISTIC_MODES[:1]) -> None:
    """Validate `graph` and rank its execution plans with the heuristic `modes`; no plan is built yet."""
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([getattr(cudnn.heur_mode, mode) for mode in modes])
    graph.check_support()


def _finish(cudnn: Any, graph: Any, mode: str = HEURISTIC_MODES[0]) -> None:
    """Plan `graph` with one heuristic mode and build the first plan that builds: the one the op runs."""
    _plan(cudnn, graph, (mode,))
    graph.build_plans()


def _build(
    cudnn: Any, handle: Any, backward: bool, shape: tuple[int, ...], dtype: torch.dtype, scale: float, row: int
):
    """(graph, its tensors' uids in binding order, workspace bytes) for one direction at one shape."""
    for mode in HEURISTIC_MODES:
        graph, uids = _define(cudnn, handle, backward, shape, dtype, scale, row=row)
        try:
            _finish(cudnn, graph, mode)
        except cudnn.cudnnGraphNotSupportedError as error:
            traceback.clear_frames(error.__traceback__)  # the frontend's frames hold the error: see HEURISTIC_MODES
            if mode == HEURISTIC_MODES[-1]:
                raise
            continue
        return graph, uids, graph.get_workspace_size()


def _define(
    cudnn: Any,
    handle: Any,
    backward: bool,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    scale: float,
    alibi: bool = True,
    left_band: int | None = None,
    row: int | None = None,
) -> tuple[Any, tuple[int, ...]]:
    """(graph before planning, its tensors' uids in binding order).

    q, k, v and their gradients have token rows `row` elements apart (`_bshd_strides`; None: h * d), the output
    and its gradient h * d. For benchmarks only: `alibi=False` drops the bias; `left_band` keeps query i to keys
    i - j < left_band (one window for all heads, so not the model's per-head `alibi_truncation`:
    benchmarks/cudnn_band_bench.py).
    """
    b, h, s, d = shape
    layout = dict(dim=[b, h, s, d], stride=list(_bshd_strides(b, h, s, d)))
    inputs = dict(dim=[b, h, s, d], stride=list(_bshd_strides(b, h, s, d, row)))
    stats_layout = dict(dim=[b, h, s, 1], stride=[h * s, s, 1, 1], data_type=cudnn.data_type.FLOAT)
    mask = dict(attn_scale=scale, use_causal_mask=True, use_alibi_mask=alibi)
    if left_band is not None:
        mask["diagonal_band_left_bound"] = left_band
    graph = _new_graph(cudnn, handle, dtype)
    # Uids name the operands, so a call binds its buffers as an ordered list (the frontend's fast path). The
    # numbers are those of the frontend's own torch op (cudnn/sdpa/fwd/torch_op.py).
    q, k, v = (graph.tensor(name=name, uid=uid, **inputs) for uid, name in ((1, "q"), (2, "k"), (3, "v")))
    if not backward:
        out, stats = graph.sdpa(name="alibi_sdpa", q=q, k=k, v=v, generate_stats=True, **mask)
        out.set_uid(100).set_output(True).set_dim(layout["dim"]).set_stride(layout["stride"])
        stats.set_uid(101).set_output(True).set_dim(stats_layout["dim"]).set_stride(stats_layout["stride"])
        stats.set_data_type(cudnn.data_type.FLOAT)
    else:
        out = graph.tensor(name="o", uid=100, **layout)
        stats = graph.tensor(name="stats", uid=101, **stats_layout)
        grad_out = graph.tensor(name="dO", uid=200, **layout)
        dq, dk, dv = graph.sdpa_backward(name="alibi_sdpa_bwd", q=q, k=k, v=v, o=out, dO=grad_out, stats=stats, **mask)
        for uid, grad in enumerate((dq, dk, dv), start=201):
            grad.set_uid(uid).set_output(True).set_dim(inputs["dim"]).set_stride(inputs["stride"])
    return graph, (1, 2, 3, 100, 101, 200, 201, 202, 203) if backward else (1, 2, 3, 100, 101)


def _run(backward: bool, scale: float, buffers: tuple[torch.Tensor, ...]) -> None:
    """Build (once) and execute one graph on `buffers`: q, k, v, out, stats, then dO, dq, dk, dv for the backward.
    q, k, v (and dq, dk, dv) have the strides `_bshd_strides` gives for their row stride; out and dO the default."""
    cudnn = _frontend()
    if cudnn is None:
        raise RuntimeError("alibi_cudnn_attention needs nvidia-cudnn-frontend: pip install 'alibi-lm[cudnn]'")
    query = buffers[0]
    if not query.is_cuda or query.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"alibi_cudnn_attention takes CUDA bf16/fp16 tensors; got {query.dtype} on {query.device}")
    device = query.device
    key = (backward, tuple(query.shape), query.stride(), query.dtype, device, scale)
    # Kernels launch on the current device's context; switching costs host time, so only when it differs.
    with torch.cuda.device(device) if device.index != torch.cuda.current_device() else contextlib.nullcontext():
        handle = _handle(cudnn, device)
        entry = _GRAPHS.get(key)
        if entry is None:
            with _GRAPHS_LOCK:
                entry = _GRAPHS.get(key)
                if entry is None:
                    shape, row = tuple(query.shape), query.stride(2)
                    entry = _GRAPHS[key] = _build(cudnn, handle, backward, shape, query.dtype, scale, row)
                    while len(_GRAPHS) > GRAPH_CACHE_SIZE:
                        _GRAPHS.pop(next(iter(_GRAPHS)))
        graph, uids, workspace_bytes = entry
        workspace = torch.empty(max(workspace_bytes, 1), device=device, dtype=torch.uint8)
        graph.execute(list(buffers), workspace, handle=handle, tensor_uids=uids)


# ----------------------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------------------


def _forward(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, stats): out (b, h, q, d) in (b, q, h, d) memory; stats (b, h, q, 1) fp32, the rows' log-sum-exp."""
    if key.shape != query.shape or value.shape != query.shape:
        raise ValueError(f"alibi_cudnn_attention needs q_len == k_len and equal shapes; got query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}")
    query, key, value = _as_bshd(query), _as_bshd(key), _as_bshd(value)
    b, h, s, d = query.shape
    out = _empty_bshd(b, h, s, d, query)  # (b, h, q, d)
    stats = torch.empty(b, h, s, 1, device=query.device, dtype=torch.float32)
    _run(False, scale, (query, key, value, out, stats))
    return out, stats


def _forward_fake(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, s, d = query.shape
    return _empty_bshd(b, h, s, d, query), query.new_empty(b, h, s, 1, dtype=torch.float32)


def _backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    stats: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each (b, h, s, d) in (b, s, h, d) memory."""
    grad_out, query, key, value, out = (_as_bshd(x) for x in (grad_out, query, key, value, out))
    stats = stats.contiguous()
    b, h, s, d = query.shape
    dq, dk, dv = (_empty_bshd(b, h, s, d, query) for _ in range(3))
    _run(True, scale, (query, key, value, out, stats, grad_out, dq, dk, dv))
    return dq, dk, dv


def _backward_fake(grad_out: torch.Tensor, query: torch.Tensor, *args: Any) -> tuple[torch.Tensor, ...]:
    b, h, s, d = query.shape
    return tuple(_empty_bshd(b, h, s, d, query) for _ in range(3))


_forward_op = custom_op("cudnn_fwd", __name__, _forward, _forward_fake)
_backward_op = custom_op("cudnn_bwd", __name__, _backward, _backward_fake)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    query, key, value, scale = inputs
    out, stats = output
    ctx.save_for_backward(query, key, value, out, stats)
    ctx.mark_non_differentiable(stats)
    ctx.scale = scale


def _grad(ctx: Any, grad_out: torch.Tensor, grad_stats: torch.Tensor | None) -> tuple:
    query, key, value, out, stats = ctx.saved_tensors
    dq, dk, dv = _backward_op(grad_out, query, key, value, out, stats, ctx.scale)  # stats carry no gradient
    return dq, dk, dv, None


_forward_op.register_autograd(_grad, setup_context=_setup_context)


def _packed_views(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v of a (b, s, 3 * h * d) packed projection as (b, h, s, d) views, token rows 3 * h * d apart; a
    copy of `qkv` first if it is not contiguous with a 16-byte-aligned base."""
    if not qkv.is_contiguous() or qkv.data_ptr() % 16:
        qkv = qkv.clone(memory_format=torch.contiguous_format)  # clone: contiguous() keeps a misaligned base
    b, s, width = qkv.shape
    split = qkv.view(b, s, 3, heads, width // (3 * heads))  # (b, s, 3, h, d)
    return tuple(split[:, :, i].transpose(1, 2) for i in range(3))  # each (b, h, s, d)


def _packed_forward(qkv: torch.Tensor, heads: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, stats) as `_forward` gives them, for q, k and v read in place from the packed projection."""
    query, key, value = _packed_views(qkv, heads)
    b, h, s, d = query.shape
    out = _empty_bshd(b, h, s, d, qkv)  # (b, h, s, d)
    stats = torch.empty(b, h, s, 1, device=qkv.device, dtype=torch.float32)
    _run(False, scale, (query, key, value, out, stats))
    return out, stats


def _packed_forward_fake(qkv: torch.Tensor, heads: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    b, s, width = qkv.shape
    d = width // (3 * heads)
    return _empty_bshd(b, heads, s, d, qkv), qkv.new_empty(b, heads, s, 1, dtype=torch.float32)


def _packed_backward(
    grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, stats: torch.Tensor, heads: int, scale: float
) -> torch.Tensor:
    """The (b, s, 3 * h * d) gradient of the packed projection: dq, dk and dv written in place, in its layout."""
    grad_out, out = _as_bshd(grad_out), _as_bshd(out)
    grad_qkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    _run(True, scale, (*_packed_views(qkv, heads), out, stats.contiguous(), grad_out, *_packed_views(grad_qkv, heads)))
    return grad_qkv


def _packed_backward_fake(grad_out: torch.Tensor, qkv: torch.Tensor, *args: Any) -> torch.Tensor:
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


_packed_forward_op = custom_op("cudnn_packed_fwd", __name__, _packed_forward, _packed_forward_fake)
_packed_backward_op = custom_op("cudnn_packed_bwd", __name__, _packed_backward, _packed_backward_fake)


def _packed_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    qkv, heads, scale = inputs
    out, stats = output
    ctx.save_for_backward(qkv, out, stats)
    ctx.mark_non_differentiable(stats)
    ctx.heads, ctx.scale = heads, scale


def _packed_grad(ctx: Any, grad_out: torch.Tensor, grad_stats: torch.Tensor | None) -> tuple:
    qkv, out, stats = ctx.saved_tensors
    return _packed_backward_op(grad_out, qkv, out, stats, ctx.heads, ctx.scale), None, None


_packed_forward_op.register_autograd(_packed_grad, setup_context=_packed_setup_context)


class _EagerCudnnAlibi(torch.autograd.Function):
    """The same forward and backward for eager calls, without the custom ops' dispatch: torch.library's Python
    custom ops and their autograd wrapper cost ~0.7 ms of host time per forward+backward (H200, 4K x 4 tokens:
    1.17 ms per step through the ops against 1.08 ms of GPU time; benchmarks/cudnn_kernel_trace.py), which
    uncompiled training pays in every layer. torch.compile traces the custom ops instead."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        out, stats = _forward(query, key, value, scale)
        ctx.save_for_backward(query, key, value, out, stats)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        return (*_backward(grad_out, *ctx.saved_tensors, ctx.scale), None)


def alibi_cudnn_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """Causal ALiBi attention (paper slopes for h heads, bias_max 8) on cuDNN's fused SDPA, differentiable.

    Computes exactly the calls listed in the module docstring; check `is_supported(query, key)` first.

    Args:
        query, key, value: (b, h, s, d), the same tokens as queries and keys (q_len == k_len), bf16 or fp16.
            (b, s, h, d).transpose(1, 2) views go in without a copy; other strides are copied.
        scaling: softmax scale applied to q.k (usually head_dim ** -0.5).

    Returns:
        (b, h, s, d) in the query dtype, a view of (b, s, h, d)-contiguous memory.
    """
    # Converted here, not only inside the op, so that the backward saves converted tensors. The model's layout
    # skips this: three transposes per input would add autograd nodes and host time to every call.
    query, key, value = (
        x if x.stride() == _bshd_strides(*x.shape) else x.transpose(1, 2).contiguous().transpose(1, 2)
        for x in (query, key, value)
    )
    if _traced(query):
        return _forward_op(query, key, value, float(scaling))[0]
    return _EagerCudnnAlibi.apply(query, key, value, float(scaling))


def alibi_cudnn_attention_packed(qkv: torch.Tensor, num_heads: int, scaling: float) -> torch.Tensor:
    """`alibi_cudnn_attention` on q, k and v projected as one GEMM, without copying them apart (module docstring).

    The same calls qualify: check `is_supported` with a (b, h, s, d) query of qkv's dtype first.

    Args:
        qkv: (b, s, 3 * h * d): each token's query, key and value, in that order, each h heads of d.
        num_heads: h.
        scaling: softmax scale applied to q.k (usually head_dim ** -0.5).

    Returns:
        (b, h, s, d) in qkv's dtype, a view of (b, s, h, d)-contiguous memory. Differentiable in qkv; the
        gradient is one (b, s, 3 * h * d) tensor.
    """
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"alibi_cudnn_attention_packed takes (b, s, 3 * heads * head_dim); got {tuple(qkv.shape)} "
                         f"for {num_heads} heads")
    return _packed_forward_op(qkv, int(num_heads), float(scaling))[0]


def _traced(query: torch.Tensor) -> bool:
    """Whether a tracer sees this call (torch.compile, torch.export, make_fx): fake or functional tensors, or a
    dispatch mode in force. Tracers must meet the custom ops; only real tensors take the autograd.Function."""
    return (
        torch.compiler.is_compiling()
        or type(query) is not torch.Tensor
        or _current_dispatch_mode() is not None
    )
