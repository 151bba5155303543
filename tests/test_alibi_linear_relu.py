"""fc1 and ReLU as one GEMM (alibi_linear_relu.py): the op against `relu(linear(x))`, and compiled models on it
against eager ones."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from modeling_alibi import alibi_linear_relu
from modeling_alibi.alibi_linear_relu import fused_linear_relu, linear_relu
from modeling_alibi.training.loop import training_loss

from conftest import tiny_model


def test_op_passes_torch_library_checks():
    """Schema, fake tensor, autograd registration and AOT dispatch (torch.library.opcheck)."""
    shapes = ((2, 5, 6), (7, 6), (7,))  # x, weight, bias
    x, weight, bias = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in shapes)
    torch.library.opcheck(linear_relu, (x, weight, bias))


def test_op_and_its_gradients_equal_relu_of_linear():
    """Values and all three gradients, in float64, with some pre-activations exactly 0 (ReLU's gradient there is 0,
    as in eager autograd)."""
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    x[0, 0] = 0.0
    weight, bias = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    bias[2] = 0.0  # with x[0, 0] = 0: an exact zero before the ReLU
    grad = torch.randn(3, 4, 8, dtype=torch.float64)
    results = []
    for function in (linear_relu, lambda *args: F.relu(F.linear(*args))):
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        out = function(*inputs)
        out.backward(grad)
        results.append((out, *(t.grad for t in inputs)))
    for actual, expected, name in zip(*results, ("out", "x", "weight", "bias"), strict=True):
        assert_close(actual, expected, msg=name)


def test_autocast_gives_the_dtype_linear_would():
    linear = torch.nn.Linear(6, 8)
    x = torch.randn(2, 3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, expected = fused_linear_relu(x, linear), F.relu(linear(x))
    assert fused.dtype == expected.dtype == torch.bfloat16
    assert_close(fused, expected)


def _recording_backend() -> tuple:
    """(a torch.compile backend that runs dynamo's graphs as they are, the list of those graphs)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend, graphs


def _graph_ops(graphs: list) -> set[str]:
    return {str(node.target) for graph in graphs for node in graph.graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize("use_bias, fused", [(True, True), (False, False)], ids=["bias", "no-bias"])
def test_compiled_training_on_the_fused_op_matches_eager(monkeypatch, use_bias, fused):
    """With the CPU allowed, a compiled training loss calls the op (only where fc1 has a bias) and gives the eager
    model's loss and gradients; the eager model never calls it."""
    monkeypatch.setattr(alibi_linear_relu, "FUSED_RELU_DEVICES", ("cpu",))
    eager = tiny_model(use_bias=use_bias, activation_dropout=0.0).train()
    model = copy.deepcopy(eager)
    backend, graphs = _recording_backend()
    calls = []

    def recorded(*args):
        calls.append(args)
        return fused_linear_relu(*args)

    monkeypatch.setattr(alibi_linear_relu, "fused_linear_relu", recorded)
    ids = torch.randint(3, 99, (2, 12))
    expected = training_loss(eager)(input_ids=ids, labels=ids)
    assert calls == []
    actual = torch.compile(training_loss(model), backend=backend, fullgraph=True)(input_ids=ids, labels=ids)
    assert any("linear_relu" in op for op in _graph_ops(graphs)) == fused
    expected.backward()
    actual.backward()
    assert_close(actual, expected)
    for (name, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
        assert_close(q.grad, p.grad, msg=name)


def test_compiled_inference_keeps_the_separate_relu(monkeypatch):
    """Without gradients (decoding, evaluation) the compiled model keeps fc1 and ReLU apart, as measured."""
    monkeypatch.setattr(alibi_linear_relu, "FUSED_RELU_DEVICES", ("cpu",))
    model = tiny_model()
    backend, graphs = _recording_backend()
    ids = torch.randint(3, 99, (2, 12))
    with torch.no_grad():
        assert_close(torch.compile(model, backend=backend)(ids).logits, model(ids).logits)
    assert graphs and not any("linear_relu" in op for op in _graph_ops(graphs))


@pytest.mark.gpu
@pytest.mark.parametrize("params", [torch.float32, torch.bfloat16], ids=["fp32-params-autocast", "bf16-params"])
def test_gpu_compiled_training_on_the_fused_op_matches_eager(params):
    """On CUDA, in the two ways the benchmarks and alibi-lm train run: bf16 autocast over fp32 parameters, and bf16
    parameters. The compiled loss (CUDA graphs, the loop's default) against the eager model, one step of each."""
    eager = tiny_model(hidden_size=256, intermediate_size=1024).to("cuda", params).train()
    model = copy.deepcopy(eager)
    ids = torch.randint(3, 99, (4, 256), device="cuda")
    losses = []
    for loss_of in (training_loss(eager), torch.compile(training_loss(model), mode="reduce-overhead")):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=params == torch.float32):
            loss = loss_of(input_ids=ids, labels=ids)
        loss.backward()
        losses.append(loss.detach().clone())
    assert_close(losses[1], losses[0], rtol=1e-2, atol=1e-2)
    # One scale for all gradients: the key bias's is zero in exact arithmetic (it shifts a whole softmax row).
    scale = max(p.grad.abs().max() for p in eager.parameters())
    for (name, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
        assert_close(q.grad / scale, p.grad / scale, rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.gpu
def test_gpu_op_equals_relu_of_linear_in_bf16():
    x = torch.randn(8, 512, 1024, device="cuda", dtype=torch.bfloat16)
    linear = torch.nn.Linear(1024, 4096, device="cuda", dtype=torch.bfloat16)
    assert_close(linear_relu(x, linear.weight, linear.bias), F.relu(linear(x)))
