"""The residual add with its LayerNorm as one node (alibi_norm.add_layer_norm) and fc1's ReLU backward with its bias
gradient (alibi_linear_relu), against the separate ops: values and every gradient, eager and compiled, CPU and GPU.

The Triton kernels (alibi_triton_norm.py) run on the CPU under Triton's interpreter, in a subprocess
(TRITON_INTERPRET=1 must be set before triton is imported). The interpreter truncates fp32 to bf16 where GPUs round
to nearest, so there it runs fp32 and fp16; bf16 runs on the GPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import modeling_alibi.modeling_alibi as modeling
from modeling_alibi import alibi_linear_relu
from modeling_alibi.alibi_norm import add_layer_norm
from modeling_alibi.training.loop import training_loss

from conftest import assert_compiled_step_as_accurate_as_eager, run_interpreted, tiny_model


def _norm(width: int, dtype: torch.dtype, device: str = "cpu") -> torch.nn.LayerNorm:
    norm = torch.nn.LayerNorm(width, device=device, dtype=dtype)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    return norm


def _add_norm_grads(function, residual, delta, norm, grad_total, grad_normed) -> list[torch.Tensor]:
    """function(residual, delta, norm) -> (total, normed), and the gradients of both inputs and the norm's."""
    residual, delta = residual.clone().requires_grad_(), delta.clone().requires_grad_()
    total, normed = function(residual, delta, norm)
    grads = torch.autograd.grad((total * grad_total).sum() + (normed * grad_normed).sum(),
                                [residual, delta, norm.weight, norm.bias])
    return [total.detach(), normed.detach(), *grads]


def _separate(residual, delta, norm):
    total = residual + delta
    return total, norm(total)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_add_layer_norm_equals_the_separate_ops(compiled):
    """float64, (2, 5, 24) inputs, gradients flowing into both outputs (the residual stream and the norm's)."""
    norm = _norm(24, torch.float64)
    residual, delta, grad_total, grad_normed = (torch.randn(2, 5, 24, dtype=torch.float64) for _ in range(4))
    function = torch.compile(add_layer_norm, fullgraph=True) if compiled else add_layer_norm
    actual = _add_norm_grads(function, residual, delta, norm, grad_total, grad_normed)
    expected = _add_norm_grads(_separate, residual, delta, norm, grad_total, grad_normed)
    for name, a, e in zip(["total", "normed", "residual", "delta", "weight", "bias"], actual, expected, strict=True):
        assert_close(a, e, msg=name)


def test_add_layer_norm_needs_an_affine_norm():
    with pytest.raises(ValueError, match="weight and bias"):
        add_layer_norm(torch.zeros(2, 8), torch.zeros(2, 8), torch.nn.LayerNorm(8, elementwise_affine=False))


def _count_calls(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(modeling, "add_layer_norm", lambda *args: calls.append(args) or add_layer_norm(*args))
    return calls


def _served_norms(model, calls) -> list[str]:
    """The names of the LayerNorms the node served, in call order."""
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(norm)] for *_, norm in calls]


def _expected_norms(model) -> list[str]:
    """Pre-norm compiled training: each block's LayerNorm after attention and the first LayerNorm of every block
    after the first (which does the previous block's last add). Not the final LayerNorm: the last block keeps its
    add (`AlibiModel._defers_adds` says why)."""
    layers = range(model.config.num_hidden_layers)
    return [name for i in layers for name in (
        [f"model.layers.{i}.self_attn_layer_norm"] if i else []) + [f"model.layers.{i}.final_layer_norm"]]


@pytest.mark.parametrize("final_norm", [True, False], ids=["final-norm", "no-final-norm"])
def test_compiled_training_step_on_the_fused_add_norm_equals_eager(monkeypatch, final_norm):
    """Compiled training (on the CPU here) runs the node for every pre-norm LayerNorm that follows a residual add,
    but the final one; loss and every gradient as eager."""
    monkeypatch.setattr(modeling, "FUSED_NORM_DEVICES", ("cpu",))
    calls = _count_calls(monkeypatch)
    eager = tiny_model(num_hidden_layers=3, final_layer_norm=final_norm).train()
    model = copy.deepcopy(eager)
    ids = torch.randint(3, 99, (2, 12))
    expected = training_loss(eager)(input_ids=ids, labels=ids)
    assert calls == []  # eager: the separate ops
    actual = torch.compile(training_loss(model), fullgraph=True)(input_ids=ids, labels=ids)
    assert _served_norms(model, calls) == _expected_norms(model)
    expected.backward()
    actual.backward()
    assert_close(actual, expected)
    for (name, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
        assert_close(q.grad, p.grad, msg=name)


@pytest.mark.parametrize("case", ["hidden-states", "checkpointing"])
def test_blocks_add_their_own_residual_where_the_sums_are_needed(monkeypatch, case):
    """Returned hidden states are the blocks' sums, and gradient checkpointing recomputes one block at a time from
    tensor inputs: both keep each block's last add in the block. Values and every gradient as eager."""
    monkeypatch.setattr(modeling, "FUSED_NORM_DEVICES", ("cpu",))
    calls = _count_calls(monkeypatch)
    eager = tiny_model().train()
    model = copy.deepcopy(eager)
    if case == "checkpointing":
        # transformers 5.24 renamed it (the old name warns); 5.17 has only the old name.
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    ids = torch.randint(3, 99, (2, 12))
    kwargs = dict(output_hidden_states=case == "hidden-states")
    expected = eager(input_ids=ids, labels=ids, **kwargs)
    actual = torch.compile(model)(input_ids=ids, labels=ids, **kwargs)
    served = _served_norms(model, calls)
    assert all(name.endswith(".final_layer_norm") for name in served), served  # no block's first, no model.norm
    if case == "hidden-states":
        assert len(served) == 2  # the node after attention still serves
    expected.loss.backward()
    actual.loss.backward()
    assert_close(actual.loss, expected.loss)
    for got, want in zip(actual.hidden_states or (), expected.hidden_states or (), strict=True):
        assert_close(got, want)
    for (name, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
        assert_close(q.grad, p.grad, msg=name)


@pytest.mark.parametrize("case", ["autocast", "post-norm", "no-grad"])
def test_fused_add_norm_is_left_out_where_it_would_change_the_values(monkeypatch, case):
    """Under autocast the LayerNorm runs in fp32 and the add in mixed dtypes; post-norm layers normalize before
    the residual; evaluation has no backward to save."""
    monkeypatch.setattr(modeling, "FUSED_NORM_DEVICES", ("cpu",))
    calls = _count_calls(monkeypatch)
    model = tiny_model(normalize_before=case != "post-norm").train()
    ids = torch.randint(3, 99, (2, 12))
    compiled = torch.compile(training_loss(model))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"), torch.set_grad_enabled(
            case != "no-grad"):
        compiled(input_ids=ids, labels=ids)
    assert calls == []


# Runs in a fresh interpreter with TRITON_INTERPRET=1: argv[1] holds the cases, argv[2] gets their results.
_RUNNER = r"""
import sys
import torch
from modeling_alibi import alibi_triton_norm as kernels

results = {}
for name, case in torch.load(sys.argv[1]).items():
    residual, delta, weight, bias, grad_total, grad_normed, grad, output = case
    kernels.PARTIAL_PROGRAMS = kernels.RELU_PROGRAMS = int(name.split("/")[1])
    total, normed, mean, rstd = kernels._add_norm_forward(residual, delta, weight, bias, 1e-5)
    results[name] = (total, normed, *kernels._add_norm_backward(grad_normed, grad_total, total, weight, mean, rstd),
                     *kernels._relu_backward(grad, output))
torch.save(results, sys.argv[2])
"""


def test_interpreted_kernels_match_float64(tmp_path):
    """37 rows (not a multiple of any block), 96 and 600 columns (not powers of two), fp32 and fp16. With the
    default programs each backward program takes one block of rows; with 3, several, and the last one fewer (the
    LayerNorm backward's loop loads the next block while it reduces this one: run to its end)."""
    cases = {}
    for dtype in (torch.float32, torch.float16):
        rows = [torch.randn(37, 96).to(dtype) for _ in range(4)]
        norm = _norm(96, dtype)
        grad, output = torch.randn(37, 600).to(dtype), torch.relu(torch.randn(37, 600)).to(dtype)
        for programs in (264, 3):  # PARTIAL_PROGRAMS and RELU_PROGRAMS, set by the runner from the case's name
            cases[f"{dtype}/{programs}"] = (rows[0], rows[1], norm.weight.detach(), norm.bias.detach(), rows[2],
                                            rows[3], grad, output)
    results = run_interpreted(_RUNNER, cases, tmp_path)
    for name, (residual, delta, weight, bias, grad_total, grad_normed, grad, output) in cases.items():
        dtype = residual.dtype
        total, normed, grad_rows, sums, grad_in, grad_bias = results[name]
        assert torch.equal(total, residual + delta)  # rounded once, as the eager add
        x = total.double().requires_grad_()
        w, b = weight.double().requires_grad_(), bias.double().requires_grad_()
        y = F.layer_norm(x, (96,), w, b, 1e-5)
        gx, gw, gb = torch.autograd.grad((y * grad_normed.double()).sum(), [x, w, b])
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-3, atol=2e-2)
        assert_close(normed.double(), y.detach(), **tol)
        assert_close(grad_rows.double(), gx + grad_total.double(), **tol)
        assert_close(sums.double(), torch.stack([gw, gb]), **tol)
        masked = torch.where(output > 0, grad, 0)
        assert torch.equal(grad_in, masked)
        assert_close(grad_bias.double(), masked.double().sum(0), **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1000, 1024), (77, 768)], ids=["1000x1024", "77x768"])
def test_gpu_kernels_match_float64_as_closely_as_aten(shape):
    """bf16: the sum exactly as the eager add rounds it; the norm and every gradient at most twice as far from
    float64 as ATen's bf16 LayerNorm and its backward (plus 1e-3 of each largest value)."""
    rows, width = shape
    norm = _norm(width, torch.bfloat16, "cuda")
    residual, delta, grad_total, grad_normed = (torch.randn(rows, width, device="cuda", dtype=torch.bfloat16)
                                                for _ in range(4))
    actual = _add_norm_grads(add_layer_norm, residual, delta, norm, grad_total, grad_normed)
    aten = _add_norm_grads(_separate, residual, delta, norm, grad_total, grad_normed)
    exact_norm = _norm(width, torch.float64, "cuda")
    exact_norm.load_state_dict(norm.state_dict())
    exact = _add_norm_grads(_separate, *(x.double() for x in (residual, delta)), exact_norm,
                            grad_total.double(), grad_normed.double())
    assert torch.equal(actual[0], aten[0])
    for name, a, t, e in zip(["normed", "residual", "delta", "weight", "bias"], actual[1:], aten[1:], exact[1:],
                             strict=True):
        scale = e.abs().max()
        ours, theirs = (a.double() - e).abs().max() / scale, (t.double() - e).abs().max() / scale
        assert ours <= 2 * theirs + 1e-3, f"{name}: {ours:.4g} against ATen's {theirs:.4g}"


@pytest.mark.gpu
def test_gpu_relu_backward_kernel_equals_threshold_backward():
    """The masked gradient exactly; the bias gradient as close to float64 as bf16 rounding of the sum allows."""
    grad = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    output = torch.relu(torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16))
    grad_in, grad_bias = alibi_linear_relu.relu_backward_with_bias(grad, output)
    masked = torch.where(output > 0, grad, 0)
    assert torch.equal(grad_in, masked)
    assert_close(grad_bias, masked.double().sum(0).to(torch.bfloat16), rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("params", [torch.float32, torch.bfloat16], ids=["fp32-params-autocast", "bf16-params"])
def test_gpu_compiled_training_on_the_norm_kernels_is_as_accurate_as_eager(monkeypatch, params):
    """The loop's compiled step (CUDA graphs) with the fused add and LayerNorm (bf16 parameters only: autocast
    keeps the separate ops) and the ReLU backward kernel, against float64, as close as the eager step."""
    calls = _count_calls(monkeypatch)
    base = tiny_model(hidden_size=256, intermediate_size=1024, vocab_size=32_000).train()
    ids = torch.randint(3, 32_000, (4, 256), device="cuda")
    assert_compiled_step_as_accurate_as_eager(
        base, lambda model: torch.compile(training_loss(model), mode="reduce-overhead"), ids, params)
    # the helper's own copy ran, so by count: every LayerNorm after a residual add but the final one
    assert len(calls) == (len(_expected_norms(base)) if params == torch.bfloat16 else 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_backward_kernel_serves_float32_and_narrower_only(monkeypatch, dtype):
    """The kernel sums the bias gradient in fp32, so a float64 step keeps the plain ops (on the CPU here, with the
    kernel replaced by a recorder that computes the plain ops). Its dtype rule lives with the kernels, which need
    triton (not in the CPU build of torch)."""
    pytest.importorskip("triton")
    calls = []

    def recorder(grad, output):
        calls.append(grad.dtype)
        masked = torch.where(output > 0, grad, 0)
        return masked, masked.sum(0)

    monkeypatch.setattr(alibi_linear_relu, "FUSED_RELU_DEVICES", ("cpu",))
    monkeypatch.setattr(alibi_linear_relu, "RELU_KERNEL_DEVICES", ("cpu",))
    monkeypatch.setattr(alibi_linear_relu, "relu_backward_with_bias", recorder)
    model = tiny_model().to(dtype).train()
    ids = torch.randint(3, 99, (2, 12))
    torch.compile(training_loss(model))(input_ids=ids, labels=ids).backward()
    assert calls == ([] if dtype == torch.float64 else [dtype] * model.config.num_hidden_layers)


def test_add_layer_norm_of_mixed_dtypes_keeps_the_separate_ops(monkeypatch):
    """The kernels write the sum in the residual's dtype; the separate ops promote (fp32 + bf16 is fp32). With the
    kernels switched on for the CPU (a recorder in their place) mixed inputs still take ATen's ops."""
    from modeling_alibi import alibi_norm

    calls = []
    monkeypatch.setattr(alibi_norm, "NORM_KERNEL_DEVICES", ("cpu",))
    monkeypatch.setattr(alibi_norm, "norm_supported", lambda rows, weight: True)
    monkeypatch.setattr(alibi_norm, "add_layer_norm_forward", lambda *args: calls.append(args) or pytest.fail())
    norm = _norm(24, torch.float32)
    residual, delta = torch.randn(3, 24), torch.randn(3, 24).bfloat16()
    total, normed = add_layer_norm(residual, delta, norm)
    expected_total, expected_normed = _separate(residual, delta, norm)
    assert calls == [] and total.dtype == torch.float32
    assert_close(total, expected_total)
    assert_close(normed, expected_normed)
