"""cuDNN's fused ALiBi SDPA (modeling_alibi/alibi_cudnn.py) against an fp32 eager reference, forward and backward.

Tolerance: the reference runs in fp32 on the same (bf16 or fp16) inputs, so its own error is negligible and what
remains is the kernel's: P rounded to the io dtype before P @ V, the output rounded, different accumulation
orders. torch's own SDPA with the ALiBi bias as an io-dtype mask (what the model's sdpa backend runs) makes the
same kinds of errors, so it sets the scale: for the output and each gradient, cuDNN's max abs error against the
reference must be at most twice SDPA's on the same inputs (margin for a max over many elements and for different
accumulation orders), plus one io-dtype epsilon of the largest reference value (a floor in case SDPA happens to be
exact). SDPA is pinned to its memory-efficient kernel: its default dispatch picks cuDNN for a biased call on an
H200, which would measure cuDNN against itself. Each case prints both errors (run with -s).

The gpu tests need CUDA and nvidia-cudnn-frontend (`pip install 'alibi-lm[cudnn]'`); the CPU tests check that the
module imports and reports no support without them, the ops' fake kernels, and how graphs are planned (against a
stand-in frontend).
"""

from __future__ import annotations

import gc
import sys
import weakref
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.testing import assert_close

from modeling_alibi import alibi_cudnn, alibi_slopes
from modeling_alibi.alibi_cudnn import alibi_cudnn_attention, is_supported

needs_cudnn = pytest.mark.skipif(
    not (torch.cuda.is_available() and alibi_cudnn._available()), reason="needs CUDA and nvidia-cudnn-frontend"
)


def alibi_bias(heads: int, length: int, device: torch.device) -> torch.Tensor:
    """(h, q, k) fp32: -m_h * (i - j) where j <= i, -inf above the diagonal."""
    i = torch.arange(length, device=device)
    distance = (i[:, None] - i[None, :]).float()  # (q, k)
    bias = -alibi_slopes(heads).to(device)[:, None, None] * distance  # (h, q, k)
    return bias.masked_fill(distance < 0, float("-inf"))


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal ALiBi attention in fp32: softmax(scale * q.k - m_h (i - j)) @ v."""
    scores = scale * (q.float() @ k.float().transpose(-1, -2)) + alibi_bias(q.shape[1], q.shape[2], q.device)
    return scores.softmax(-1) @ v.float()  # (b, h, q, d)


def sdpa_with_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """torch's memory-efficient SDPA kernel with the bias cast to the io dtype, as the model's sdpa backend does."""
    mask = alibi_bias(q.shape[1], q.shape[2], q.device).to(q.dtype)[None]  # (1, h, q, k)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):  # math only where efficient refuses
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def bshd_inputs(b: int, h: int, s: int, d: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """q, k, v as the model makes them: (b, s, h, d).transpose(1, 2) views, requiring grad."""
    return [torch.randn(b, s, h, d, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_() for _ in range(3)]


def forward_backward(fn, inputs: list[torch.Tensor], grad: torch.Tensor, scale: float) -> list[torch.Tensor]:
    """[out, dq, dk, dv] of fn on leaf copies of `inputs`."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves, scale)
    out.backward(grad.to(out.dtype))
    return [out.detach()] + [x.grad for x in leaves]


# ----------------------------------------------------------------------------------------------------------
# GPU: accuracy, layouts, torch.compile, CUDA graphs, streams
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cudnn
@pytest.mark.parametrize("length", [128, 1000, 4096])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [8, 12])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_matches_fp32_reference(dtype, heads, head_dim, length):
    torch.manual_seed(0)
    inputs = bshd_inputs(2, heads, length, head_dim, dtype)
    grad = torch.randn(2, heads, length, head_dim, device="cuda", dtype=dtype)  # the reference gets the same values
    scale = head_dim**-0.5
    assert is_supported(inputs[0], inputs[1])
    expected = forward_backward(reference, [x.float() for x in inputs], grad, scale)
    cudnn = forward_backward(alibi_cudnn_attention, inputs, grad, scale)
    sdpa = forward_backward(sdpa_with_bias, inputs, grad, scale)
    report = []
    for name, ours, theirs, ref in zip(("out", "dq", "dk", "dv"), cudnn, sdpa, expected, strict=True):
        ours_err = (ours.float() - ref).abs().max().item()
        sdpa_err = (theirs.float() - ref).abs().max().item()
        tolerance = 2 * sdpa_err + torch.finfo(dtype).eps * ref.abs().max().item()
        report.append((name, ours_err, sdpa_err, tolerance))
    print(f"\n[cudnn-alibi] {str(dtype)[6:]} h{heads} d{head_dim} L{length}: "
          + " | ".join(f"{n} cudnn {o:.2e} sdpa {s:.2e} tol {t:.2e}" for n, o, s, t in report))
    for (name, _, _, tolerance), ours, ref in zip(report, cudnn, expected, strict=True):
        assert ours.dtype == dtype and ours.shape == ref.shape, name
        assert_close(ours.float(), ref, atol=tolerance, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.gpu
@needs_cudnn
def test_output_layout_and_any_input_strides():
    """(b, s, h, d) views go in as they are; contiguous (b, h, s, d) inputs are copied and give the same result."""
    torch.manual_seed(0)
    q, k, v = (x.detach() for x in bshd_inputs(2, 8, 300, 64, torch.bfloat16))
    out = alibi_cudnn_attention(q, k, v, 0.125)
    assert out.shape == q.shape and out.stride() == q.stride()  # (b, h, s, d) view of (b, s, h, d) memory
    assert_close(alibi_cudnn_attention(q.contiguous(), k.contiguous(), v.contiguous(), 0.125), out, atol=0, rtol=0)
    b, h, s, d = q.shape
    misaligned = torch.empty(q.numel() + 1, device="cuda", dtype=q.dtype)[1:].view(b, s, h, d).transpose(1, 2)
    misaligned.copy_(q)  # the right strides on a base 2 bytes off 16-byte alignment
    assert misaligned.stride() == q.stride() and misaligned.data_ptr() % 16
    assert_close(alibi_cudnn_attention(misaligned, k, v, 0.125), out, atol=0, rtol=0)


@pytest.mark.gpu
@needs_cudnn
def test_is_supported_limits():
    q = torch.zeros(1, 4, 64, 64, device="cuda", dtype=torch.bfloat16)
    assert is_supported(q, q) and is_supported(q.half(), q.half())
    assert not is_supported(q.float(), q.float())  # cuDNN's fused SDPA has no fp32
    assert not is_supported(q, q[:, :, :32])  # q_len != k_len: the causal diagonal would be top-left
    assert not is_supported(q[..., :60], q[..., :60])  # head dim not a multiple of 8
    wide = torch.zeros(1, 4, 64, 256, device="cuda", dtype=torch.bfloat16)
    assert not is_supported(wide, wide)


@pytest.mark.gpu
@needs_cudnn
def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    inputs = bshd_inputs(2, 12, 1000, 64, torch.bfloat16)
    grad = torch.randn(2, 12, 1000, 64, device="cuda", dtype=torch.bfloat16)

    def attend(q, k, v, scale):
        return alibi_cudnn_attention(q * 2, k, v, scale) + 1  # ops around it, fused by inductor

    compiled = torch.compile(attend, fullgraph=True)
    eager = forward_backward(attend, inputs, grad, 0.125)
    traced = forward_backward(compiled, inputs, grad, 0.125)
    for name, a, b in zip(("out", "dq", "dk", "dv"), traced, eager, strict=True):
        assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.gpu
@needs_cudnn
def test_cuda_graph_capture_and_side_stream():
    """Kernels run on torch's current stream: a side stream and a captured graph (on its own stream) match eager."""
    torch.manual_seed(0)
    inputs = bshd_inputs(1, 8, 512, 128, torch.bfloat16)
    grad = torch.randn(1, 8, 512, 128, device="cuda", dtype=torch.bfloat16)
    static = [x.detach().clone().requires_grad_() for x in inputs]

    def step():
        out = alibi_cudnn_attention(*static, 0.088)
        return [out] + list(torch.autograd.grad(out, static, grad))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # builds the graphs outside capture, as torch.compile's cudagraph warm-up does
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for x, y in zip(static, inputs, strict=True):  # new data into the static inputs
        x.data.copy_(torch.randn_like(y))
    graph.replay()
    torch.cuda.synchronize()
    eager = forward_backward(alibi_cudnn_attention, static, grad, 0.088)
    for name, a, b in zip(("out", "dq", "dk", "dv"), captured, eager, strict=True):
        assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------------
# GPU: inside the model, where the kernel-choice table routes training and whole-prompt calls to it
# ----------------------------------------------------------------------------------------------------------


def model_step(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and gradients (fp32) of one training step."""
    model.zero_grad()
    loss = model.train()(input_ids, labels=input_ids).loss
    loss.backward()
    return loss.detach().float(), [p.grad.float() for p in model.parameters()]


@pytest.mark.gpu
@needs_cudnn
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_gpu_model_training_step_on_cudnn_is_as_close_to_fp32_as_flex(monkeypatch, compiled):
    """A bf16 model's training step runs cuDNN in every layer (compiled too), and its loss and gradients are as
    close to the fp32 eager model's as the same bf16 model's on flex (2x flex's error, plus a floor)."""
    import modeling_alibi.alibi_attention as attention

    from conftest import model_pair

    reference, fast = model_pair(8, "flex_attention", initializer_range=0.1)  # head dim 64
    fast.to(torch.bfloat16)
    run = torch.compile(fast) if compiled else fast
    kernel, calls = attention.alibi_cudnn_attention, []
    monkeypatch.setattr(attention, "alibi_cudnn_attention", lambda *args: calls.append(1) or kernel(*args))
    input_ids = torch.randint(3, 99, (2, 1000), device="cuda")
    expected_loss, expected = model_step(reference, input_ids)
    monkeypatch.setattr(attention, "CUDNN_ALIBI", False)
    flex_loss, flex = model_step(fast, input_ids)  # eager model: the flag is read per call
    assert calls == []
    monkeypatch.setattr(attention, "CUDNN_ALIBI", True)
    loss, grads = model_step(run, input_ids)
    if not compiled:  # a compiled graph calls the op directly, past the Python-level wrapper
        assert len(calls) == fast.config.num_hidden_layers
    scale = max(g.abs().max() for g in expected)
    assert abs(loss - expected_loss) <= 2 * abs(flex_loss - expected_loss) + 1e-3
    for index, (got, flex_got, want) in enumerate(zip(grads, flex, expected, strict=True)):
        error, flex_error = (got - want).abs().max() / scale, (flex_got - want).abs().max() / scale
        assert error <= 2 * flex_error + 1e-3, (index, float(error), float(flex_error))


@pytest.mark.gpu
@needs_cudnn
def test_gpu_building_graphs_leaves_nothing_for_the_garbage_collector():
    """The first call at a shape builds its graphs; with Python's collector off, the call's tensors are freed as
    soon as the caller drops them. (With both heuristic modes planned at once, the frontend's error of the mode
    that offers nothing held them, and every frame on the stack, in a reference cycle.)"""
    alibi_cudnn._GRAPHS.clear()
    gc.collect()
    gc.disable()
    try:
        base = torch.randn(1, 72, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # (b, s, h, d)
        out = alibi_cudnn_attention(*(base.transpose(1, 2),) * 3, 0.125)  # builds the forward graph
        out.sum().backward()  # and the backward graph
        assert len(alibi_cudnn._GRAPHS) == 2
        refs = [weakref.ref(base), weakref.ref(out)]
        del base, out
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()


# ----------------------------------------------------------------------------------------------------------
# CPU: no cudnn needed
# ----------------------------------------------------------------------------------------------------------


def test_not_supported_on_cpu():
    q = torch.zeros(1, 4, 16, 64, dtype=torch.bfloat16)
    assert not is_supported(q, q)
    with pytest.raises((RuntimeError, ValueError), match="alibi_cudnn_attention"):
        alibi_cudnn_attention(q, q, q, 0.125)


def test_imports_without_cudnn(monkeypatch):
    """This module imported alibi_cudnn at the top (the CPU environments have no cudnn); with `cudnn` unimportable
    (a None entry in sys.modules) the lazy import gives no frontend and no support, and raises nothing."""
    monkeypatch.setitem(sys.modules, "cudnn", None)
    alibi_cudnn._frontend.cache_clear()
    try:
        assert alibi_cudnn._frontend() is None
        q = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16)
        assert not alibi_cudnn.is_supported(q, q)
    finally:
        alibi_cudnn._frontend.cache_clear()  # the next caller imports the real one, if any


def test_fake_kernels_and_autograd_trace():
    """Meta tensors run the fake kernels; a fake-mode trace of forward+backward holds both ops and nothing else."""
    from torch.fx.experimental.proxy_tensor import make_fx

    q = torch.empty(2, 12, 1000, 64, device="meta", dtype=torch.bfloat16)
    out, stats = alibi_cudnn._forward_op(q, q, q, 0.125)
    assert out.shape == q.shape and out.stride() == (1000 * 12 * 64, 64, 12 * 64, 1)  # (b, s, h, d) memory
    assert stats.shape == (2, 12, 1000, 1) and stats.dtype == torch.float32
    grads = alibi_cudnn._backward_op(out, q, q, q, out, stats, 0.125)
    assert all(g.shape == q.shape and g.stride() == out.stride() for g in grads)

    def forward_and_grads(q, k, v):
        out = alibi_cudnn_attention(q, k, v, 0.125)
        return torch.autograd.grad(out.float().square().sum(), (q, k, v))

    inputs = [torch.randn(1, 16, 4, 8, dtype=torch.bfloat16).transpose(1, 2).requires_grad_() for _ in range(3)]
    code = make_fx(forward_and_grads, tracing_mode="fake")(*inputs).code
    assert code.count("alibi_lm.cudnn_fwd_") == 1 and code.count("alibi_lm.cudnn_bwd_") == 1


def test_compile_fullgraph_traces_on_cpu(monkeypatch):
    """torch.compile(fullgraph=True, dynamic=True) takes the wrapper and both ops, for the model's layout and a
    contiguous one, at two lengths.

    cuDNN is stubbed out (the ops return uninitialized tensors), so this checks tracing only; the gpu test
    compares values.
    """
    monkeypatch.setattr(alibi_cudnn, "_run", lambda backward, scale, buffers: None)
    compiled = torch.compile(lambda q, k, v: alibi_cudnn_attention(q * 2, k, v, 0.125) + 1, fullgraph=True,
                             backend="aot_eager", dynamic=True)
    for length in (64, 96):
        model_layout = [torch.randn(2, length, 4, 64).bfloat16().transpose(1, 2).requires_grad_() for _ in range(3)]
        contiguous = [torch.randn(2, 4, length, 64).bfloat16().requires_grad_() for _ in range(3)]
        for inputs in (model_layout, contiguous):
            compiled(*inputs).float().sum().backward()
            assert all(x.grad.shape == x.shape for x in inputs)


class _StandInFrontend:
    """What `_build` uses of nvidia-cudnn-frontend, with heuristic modes that offer no plan. A mode that offers none
    fails as the real frontend's (1.32) does: the error kept in a local of the frame that caught it, a reference
    cycle with that frame and, through it, every frame on the stack."""

    class cudnnGraphNotSupportedError(RuntimeError):
        pass

    heur_mode = SimpleNamespace(A="A", FALLBACK="FALLBACK")

    def __init__(self, without_plans: set[str]):
        self.without_plans, self.planned = without_plans, []

    def graph(self) -> SimpleNamespace:
        return SimpleNamespace(validate=lambda: None, build_operation_graph=lambda: None, check_support=lambda: None,
                               build_plans=lambda: None, get_workspace_size=lambda: 0,
                               create_execution_plans=self.create_execution_plans)

    def create_execution_plans(self, modes: list[str]) -> None:
        self.planned.append(list(modes))
        failure = None
        for mode in modes:
            try:
                if mode in self.without_plans:
                    raise self.cudnnGraphNotSupportedError(f"no plan from {mode}")
            except self.cudnnGraphNotSupportedError as error:
                failure = error
                continue
            return
        raise failure


def _build_holding(frontend: _StandInFrontend, monkeypatch) -> tuple[weakref.ref, Exception | None]:
    """`_build` called from a frame that holds a tensor, as the op's callers do; a weak reference to the tensor after
    the caller returned, and the error `_build` raised, if any."""
    monkeypatch.setattr(alibi_cudnn, "_define", lambda *args, **kwargs: (frontend.graph(), (1, 2, 3)))

    def caller(held: torch.Tensor) -> Exception | None:
        try:
            alibi_cudnn._build(frontend, None, False, (1, 2, 8, 64), torch.bfloat16, 0.125, 128)
        except frontend.cudnnGraphNotSupportedError as error:
            return type(error)(*error.args)  # a copy: the raised error's traceback holds this frame
        return None

    held = torch.ones(4)
    ref = weakref.ref(held)
    error = caller(held)
    del held
    return ref, error


@pytest.mark.parametrize("without_plans", [set(), {"FALLBACK"}, {"A"}, {"A", "FALLBACK"}],
                         ids=["both-offer", "fallback-offers-none", "a-offers-none", "none-offers"])
def test_graphs_plan_one_heuristic_mode_at_a_time_and_leave_no_cycle(monkeypatch, without_plans):
    """Mode A alone when it offers a plan, FALLBACK only when A offers none, the error when neither does; and with
    Python's collector off the caller's tensor is freed as soon as the caller returns."""
    frontend = _StandInFrontend(without_plans)
    gc.collect()
    gc.disable()
    try:
        ref, error = _build_holding(frontend, monkeypatch)
        assert ref() is None
    finally:
        gc.enable()
    assert frontend.planned == ([["A"]] if "A" not in without_plans else [["A"], ["FALLBACK"]])
    assert (error is not None) == (without_plans == {"A", "FALLBACK"})
