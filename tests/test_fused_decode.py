"""graph_generate's batch-1 layer (alibi_fused_decode.py) and its kernels (alibi_triton_gemv.py) against the separate
ops and the layers' own forward: kernel values, one decode step's logits, whole generations, CPU and GPU.

On the CPU the kernels run under Triton's interpreter, in a subprocess (TRITON_INTERPRET=1 must be set before triton
is imported); it truncates fp32 to bf16 where GPUs round to nearest, so there it runs fp32 and fp16, and bf16 runs
on the GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from conftest import run_interpreted, tiny_model
from test_decoding import GREEDY

# Runs in a fresh interpreter with TRITON_INTERPRET=1: argv[1] holds the cases, argv[2] gets their results.
_KERNELS = r"""
import sys
import torch
from modeling_alibi import alibi_triton_gemv as gemv

results = {}
for name, (x, weight, bias, norm_weight, norm_bias, residual) in torch.load(sys.argv[1]).items():
    norm = torch.nn.LayerNorm(x.shape[1], dtype=x.dtype)
    norm.weight.data, norm.bias.data = norm_weight, norm_bias
    results[name] = (gemv.norm_linear(x, norm, weight, bias, relu=True), gemv.norm_linear(x, norm, weight, None),
                     gemv.linear_add(x, weight, bias, residual), gemv.linear_add(x, weight, None, residual))
torch.save(results, sys.argv[2])
"""


def _separate(x, weight, bias, norm_weight, norm_bias, residual) -> tuple[torch.Tensor, ...]:
    """The kernels' four results from the separate ops, each sum in fp32 and rounded where eager rounds."""
    dtype = x.dtype

    def linear(inp, b):
        return F.linear(inp.float(), weight.float(), None if b is None else b.float()).to(dtype)

    normed = F.layer_norm(x.float(), (x.shape[1],), norm_weight.float(), norm_bias.float()).to(dtype)
    added = [(residual.float() + linear(x, b).float()).to(dtype) for b in (bias, None)]
    return torch.relu(linear(normed, bias)), linear(normed, None), *added


def test_interpreted_kernels_match_the_separate_ops(tmp_path):
    """N of 37 and 24 (not multiples of the block), K of 96 and 600 (not powers of two), fp32 and fp16."""
    cases = {}
    for dtype in (torch.float32, torch.float16):
        for n, k in ((37, 96), (24, 600)):
            cases[f"{dtype}/{n}x{k}"] = (torch.randn(1, k).to(dtype), (torch.randn(n, k) / k**0.5).to(dtype),
                                         torch.randn(n).to(dtype), torch.randn(k).to(dtype), torch.randn(k).to(dtype),
                                         torch.randn(1, n).to(dtype))
    results = run_interpreted(_KERNELS, cases, tmp_path)
    for name, case in cases.items():
        tol = dict(rtol=1e-5, atol=1e-5) if case[0].dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
        for label, actual, expected in zip(("norm+relu", "norm, no bias", "add", "add, no bias"), results[name],
                                           _separate(*case), strict=True):
            assert actual.shape == expected.shape and actual.dtype == expected.dtype
            assert_close(actual, expected, **tol, msg=f"{name} {label}")


_LAYER = r"""
import sys
import torch
from transformers import DynamicCache
from modeling_alibi import alibi_decoding as decoding, alibi_fused_decode as fused, modeling_alibi as modeling
from modeling_alibi.configuration_alibi import AlibiConfig
from modeling_alibi.generation import graph_generate

config, state, ids = torch.load(sys.argv[1])["case"]
config = AlibiConfig.from_dict(config)
model = modeling.AlibiForCausalLM._from_config(config, attn_implementation="sdpa").eval()
model.load_state_dict(state)
calls = []
layer = modeling.fused_decode_layer
modeling.fused_decode_layer = lambda *args: calls.append(1) or layer(*args)
stacked = decoding._stacked_projections(model)
decoding._restack(stacked)
results = {}
for devices in ((), ("cpu",)):
    fused.FUSED_DECODE_DEVICES = devices
    cache = DynamicCache(config=model.config)
    model(ids[:, :-1], cache=cache)
    with decoding._fused_projections(stacked):
        results[devices] = model(ids[:, -1:], cache=cache).logits
counts = [len(calls)]
results["generated"] = graph_generate(model, ids, 6, cuda_graph=False, compile=False)
counts.append(len(calls))
graph_generate(model, ids.repeat(2, 1), 6, cuda_graph=False, compile=False)
counts.append(len(calls))
results["calls"] = (counts[0], counts[1] - counts[0], counts[2] - counts[1])  # one step, batch 1, batch 2
torch.save(results, sys.argv[2])
"""


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
def test_interpreted_fused_layer_decodes_as_the_layers(tmp_path, use_bias):
    """One decode step's logits with the fused layer equal the layers' own (fp32); graph_generate's batch-1 tokens
    equal transformers' loop, and its batch-2 steps keep the layers' forward."""
    model = tiny_model(4, "sdpa", use_bias=use_bias, hidden_size=48, intermediate_size=96)
    ids = torch.randint(3, 99, (1, 9))
    results = run_interpreted(_LAYER, {"case": (model.config.to_dict(), model.state_dict(), ids)}, tmp_path)
    layers = model.config.num_hidden_layers
    assert results["calls"] == (layers, 5 * layers, 0)  # batch 1: 5 decode steps after the prompt's token
    assert_close(results[("cpu",)], results[()], rtol=1e-5, atol=1e-5)
    expected = model.generate(ids, max_new_tokens=6, min_new_tokens=6, **GREEDY)
    assert torch.equal(results["generated"], expected)


@pytest.mark.parametrize(("overrides", "fused"), [
    ({}, True), (dict(normalize_before=False), False), (dict(activation_function="gelu"), False),
], ids=["pre-norm-relu", "post-norm", "gelu"])
def test_only_pre_norm_relu_layers_take_the_fused_layer(overrides, fused, monkeypatch):
    """Post-norm and non-ReLU layers are not the fused layer's: it declines them where it is allowed to run."""
    from modeling_alibi import alibi_decoding as decoding
    from modeling_alibi import alibi_fused_decode as fused_decode

    monkeypatch.setattr(fused_decode, "FUSED_DECODE_DEVICES", ("cpu",))
    monkeypatch.setattr(fused_decode, "gemv_supported", lambda x, weight: True)  # the interpreter's, on the CPU
    model = tiny_model(4, "sdpa", **overrides)
    stacked = decoding._stacked_projections(model)
    decoding._restack(stacked)
    hidden = torch.randn(1, 1, model.config.hidden_size)
    layer = model.model.layers[0]
    with decoding._fused_projections(stacked):
        expected = fused and fused_decode.norm_linear is not None  # without triton no layer takes it
        assert fused_decode.fused_decode_applies(layer, hidden, None, object(), False) is expected
        assert not fused_decode.fused_decode_applies(layer, hidden.expand(2, 1, -1), None, object(), False)
    assert not fused_decode.fused_decode_applies(layer, hidden, None, object(), False)  # outside graph_generate


def _kernels_and_separate_ops(x, weight, bias, norm, residual) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(kernel results, the separate bf16 ops' results) for norm_linear with ReLU and linear_add."""
    from modeling_alibi import alibi_triton_gemv as gemv

    kernels = [gemv.norm_linear(x, norm, weight, bias, relu=True), gemv.linear_add(x, weight, bias, residual)]
    separate = [torch.relu(F.linear(norm(x), weight, bias)), residual + F.linear(x, weight, bias)]
    return kernels, separate


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(3072, 1024), (4096, 1024), (1024, 4096), (1000, 600)],
                         ids=["qkv", "fc1", "fc2", "1000x600"])
def test_gpu_kernels_are_as_accurate_as_cublas(shape):
    """bf16: each result at most twice as far from float64 as the separate bf16 ops (cuBLAS, ATen), plus 1e-3 of
    the largest value."""
    n, k = shape
    x, weight = torch.randn(1, k, device="cuda"), torch.randn(n, k, device="cuda") / k**0.5
    bias, residual = torch.randn(n, device="cuda"), torch.randn(1, n, device="cuda")
    norm = torch.nn.LayerNorm(k, device="cuda")
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    with torch.no_grad():
        truth = [torch.relu(F.linear(norm.double()(x.double()), weight.double(), bias.double())),
                 residual.double() + F.linear(x.double(), weight.double(), bias.double())]
        kernels, separate = _kernels_and_separate_ops(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), norm.bfloat16(),
                                          residual.bfloat16())
    for label, got, eager, exact in zip(("norm_linear", "linear_add"), kernels, separate, truth, strict=True):
        error, eager_error = (got.double() - exact).abs().max(), (eager.double() - exact).abs().max()
        assert error <= 2 * eager_error + 1e-3 * exact.abs().max(), f"{label}: {error:.4f} against {eager_error:.4f}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_batch_1_graph_generate_runs_the_fused_layer_and_equals_transformers_loop(monkeypatch, dtype):
    """On CUDA with no extra argument, a batch-1 generate() runs the compiled graph step on the fused layer, and
    gives transformers' loop's tokens on a first (compile, capture) and a second (replay) call."""
    from modeling_alibi import alibi_decoding
    from modeling_alibi import modeling_alibi as modeling

    from test_decoding import transformers_loop

    calls = []
    layer = modeling.fused_decode_layer
    monkeypatch.setattr(modeling, "fused_decode_layer", lambda *args: calls.append(1) or layer(*args))
    model = tiny_model(4, "sdpa", hidden_size=64, intermediate_size=256).to("cuda", dtype).eval()
    torch.manual_seed(2)
    for length in (20, 33):
        ids = torch.randint(3, 99, (1, length), device="cuda")
        got = model.generate(ids, max_new_tokens=48)
        assert id(model) in alibi_decoding._DECODERS  # the graph path ran
        assert torch.equal(got, transformers_loop(model, ids, max_new_tokens=48))
    assert calls  # traced into the compiled step
    alibi_decoding.release_decoders()
