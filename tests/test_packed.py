"""q, k and v projected as one GEMM into cuDNN's ALiBi (alibi_packed.py, `alibi_cudnn_attention_packed`).

CPU: which calls take the packed path, with a stand-in for the cuDNN op (eager ALiBi attention on the packed
tensor) so that the stacking, the split into heads and the output layout are checked against the model's eager
step, loss and every gradient, also with alibi_norm's add + LayerNorm node in the same blocks. GPU (`-m gpu`, needs
nvidia-cudnn-frontend): the packed op against the unpacked one on the same values, forward and backward, eager and
compiled, exactly but for dq's run-to-run rounding; the model's compiled training with bf16 parameters and under
autocast against float64.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import modeling_alibi.modeling_alibi as modeling
from modeling_alibi import alibi_attention, alibi_cudnn, alibi_packed, alibi_slopes
from modeling_alibi.alibi_cudnn import alibi_cudnn_attention, alibi_cudnn_attention_packed
from modeling_alibi.alibi_norm import add_layer_norm
from modeling_alibi.training.loop import training_loss

from conftest import assert_compiled_step_as_accurate_as_eager, tiny_model

needs_cudnn = pytest.mark.skipif(
    not (torch.cuda.is_available() and alibi_cudnn._available()), reason="needs CUDA and nvidia-cudnn-frontend"
)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """What the cuDNN ops compute, in plain ops: causal ALiBi attention of (b, h, s, d) inputs, as (b, h, s, d)."""
    num_heads, s = q.shape[1], q.shape[2]
    i = torch.arange(s)
    distance = (i[:, None] - i[None, :]).to(q.dtype)  # (s, s)
    bias = -alibi_slopes(num_heads).to(q.dtype)[:, None, None] * distance  # (h, s, s)
    scores = scaling * q @ k.transpose(-1, -2) + bias.masked_fill(distance < 0, float("-inf"))
    return scores.softmax(-1) @ v


def packed_reference(qkv: torch.Tensor, num_heads: int, scaling: float) -> torch.Tensor:
    """`reference` on the q, k and v of a (b, s, 3 * h * d) tensor."""
    b, s, width = qkv.shape
    return reference(*qkv.view(b, s, 3, num_heads, width // (3 * num_heads)).permute(2, 0, 3, 1, 4), scaling)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Compile from a clean Dynamo state and leave one: these tests compile training_loss's function with patched
    globals. Without the reset after them, test_norm's compiled step recorded no add_layer_norm call when it ran
    after the dropout case here."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def packed_on_cpu(monkeypatch) -> list:
    """The packed path switched on for CPU training under torch.compile, cuDNN's support check answering yes, and
    the two cuDNN ops replaced by `reference`; returns the packed stand-in's calls."""
    calls = []
    monkeypatch.setattr(modeling, "PACKED_QKV_DEVICES", ("cpu",))
    monkeypatch.setattr(alibi_attention, "_cudnn_supported", lambda query, key: True)
    monkeypatch.setattr(alibi_attention, "alibi_cudnn_attention", reference)
    monkeypatch.setattr(alibi_packed, "alibi_cudnn_attention_packed",
                        lambda *args: calls.append(args[1:]) or packed_reference(*args))
    return calls


def _loss_and_grads(loss_of, model, ids, **batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = loss_of(input_ids=ids, labels=ids, **batch)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


@pytest.fixture
def norm_calls(monkeypatch) -> list:
    """The fused add + LayerNorm node's calls."""
    calls = []
    monkeypatch.setattr(modeling, "add_layer_norm", lambda *args: calls.append(args) or add_layer_norm(*args))
    return calls


@pytest.mark.parametrize("norm_node", [False, True], ids=["plain-norm", "norm-node"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
def test_compiled_training_on_packed_qkv_equals_eager(packed_on_cpu, norm_calls, monkeypatch, use_bias, norm_node):
    """float64: the compiled step (q, k, v stacked, one GEMM, the stand-in op; with `norm_node`, alibi_norm's add +
    LayerNorm node too, as bf16 parameters run it on CUDA) gives eager's loss and gradients."""
    if norm_node:
        monkeypatch.setattr(modeling, "FUSED_NORM_DEVICES", ("cpu",))
    eager = tiny_model(num_hidden_layers=3, use_bias=use_bias).double().train()  # eager attention, three GEMMs
    model = tiny_model(attn_implementation="sdpa", num_hidden_layers=3, use_bias=use_bias).double().train()
    ids = torch.randint(3, 99, (2, 12))
    expected_loss, expected = _loss_and_grads(training_loss(eager), eager, ids)
    assert packed_on_cpu == [] and norm_calls == []
    loss, grads = _loss_and_grads(torch.compile(training_loss(model), fullgraph=True), model, ids)
    assert packed_on_cpu == [(4, model.model.layers[0].self_attn.scaling)] * 3  # every layer: heads, scale
    assert len(norm_calls) == (3 + 2 if norm_node else 0)  # each block's after attention, and blocks 2 and 3's first
    assert_close(loss, expected_loss)
    for (name, _), got, want in zip(eager.named_parameters(), grads, expected, strict=True):
        assert_close(got, want, msg=name)


class _Adapter(torch.nn.Linear):
    """A projection that is not a plain nn.Linear (as LoRA and quantized layers are not)."""


@pytest.mark.parametrize("case", ["eager-backend", "padding", "dropout", "adapter", "no-grad", "uncompiled"])
def test_packed_qkv_only_where_cudnn_takes_the_call(packed_on_cpu, case):
    """Calls the kernel-choice table does not give to cuDNN, projections that are not plain nn.Linears, evaluation
    and eager training keep three projections."""
    implementation = "eager" if case == "eager-backend" else "sdpa"
    model = tiny_model(attn_implementation=implementation, attention_dropout=0.1 if case == "dropout" else 0.0).train()
    if case == "adapter":
        layer = model.model.layers[0].self_attn
        layer.k_proj = _Adapter(layer.k_proj.in_features, layer.k_proj.out_features)
    ids = torch.randint(3, 99, (2, 12))
    batch = dict(attention_mask=torch.ones_like(ids).index_fill_(1, torch.tensor([0]), 0)) if case == "padding" else {}
    loss = training_loss(model) if case == "uncompiled" else torch.compile(training_loss(model))
    with torch.set_grad_enabled(case != "no-grad"):
        loss(input_ids=ids, labels=ids, **batch)
    # The adapter's layer keeps three; the other layer packs.
    assert packed_on_cpu == ([(4, model.model.layers[1].self_attn.scaling)] if case == "adapter" else [])


@pytest.mark.parametrize("autocast", [False, True], ids=["norm-dtype", "autocast"])
def test_blocks_pack_qkv_with_or_without_the_norm_node(packed_on_cpu, norm_calls, monkeypatch, autocast):
    """With the add + LayerNorm node switched on for the CPU, blocks whose norm it serves (activations in the norm's
    dtype) run it and pack q, k and v; under autocast, which the node leaves alone, they pack all the same."""
    monkeypatch.setattr(modeling, "FUSED_NORM_DEVICES", ("cpu",))
    model = tiny_model(attn_implementation="sdpa").train()
    ids = torch.randint(3, 99, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.compile(training_loss(model))(input_ids=ids, labels=ids)
    assert (len(norm_calls), len(packed_on_cpu)) == ((0, 2) if autocast else (3, 2))  # 2 blocks: 2 + 1


def test_packed_op_rejects_a_width_that_is_not_three_projections():
    with pytest.raises(ValueError, match="3 \\* heads \\* head_dim"):
        alibi_cudnn_attention_packed(torch.zeros(1, 4, 100), 4, 0.125)


def test_packed_fake_kernels():
    """Meta tensors: (b, h, s, d) output in (b, s, h, d) memory, fp32 stats, and a gradient shaped as the input."""
    qkv = torch.empty(2, 1000, 3 * 12 * 64, device="meta", dtype=torch.bfloat16)
    out, stats = alibi_cudnn._packed_forward_op(qkv, 12, 0.125)
    assert out.shape == (2, 12, 1000, 64) and out.stride() == (1000 * 12 * 64, 64, 12 * 64, 1)
    assert stats.shape == (2, 12, 1000, 1) and stats.dtype == torch.float32
    grad = alibi_cudnn._packed_backward_op(out, qkv, out, stats, 12, 0.125)
    assert grad.shape == qkv.shape and grad.is_contiguous()


# ----------------------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------------------


def _packed_and_split(b: int, s: int, heads: int, d: int, dtype: torch.dtype):
    """A random packed (b, s, 3 * h * d) leaf and the same values as three (b, s, h, d).transpose(1, 2) leaves."""
    qkv = torch.randn(b, s, 3 * heads * d, device="cuda", dtype=dtype)
    split = [x.contiguous().transpose(1, 2) for x in qkv.view(b, s, 3, heads, d).unbind(2)]  # (b, h, s, d) views
    return qkv.requires_grad_(), [x.requires_grad_() for x in split]


@pytest.mark.gpu
@needs_cudnn
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("shape", [(2, 1000, 8, 64), (1, 4096, 12, 128)], ids=["1000x8x64", "4096x12x128"])
def test_gpu_packed_op_equals_the_unpacked_op(shape, compiled):
    """The same kernel on the same values, read in place from the packed tensor: equal output, dk and dv, and dq
    within the run-to-run rounding of cuDNN's backward."""
    torch.manual_seed(0)
    b, s, heads, d = shape
    qkv, split = _packed_and_split(b, s, heads, d, torch.bfloat16)
    grad = torch.randn(b, heads, s, d, device="cuda", dtype=torch.bfloat16)
    packed = alibi_cudnn_attention_packed
    packed = torch.compile(packed, fullgraph=True) if compiled else packed
    out = packed(qkv, heads, d**-0.5)
    out.backward(grad)
    expected = alibi_cudnn_attention(*split, d**-0.5)
    expected.backward(grad)
    assert out.shape == (b, heads, s, d) and out.stride() == expected.stride()
    assert_close(out, expected, atol=0, rtol=0)
    grad_split = torch.stack([x.grad.transpose(1, 2) for x in split], dim=2)  # (b, s, 3, h, d)
    grad_qkv = qkv.grad.view_as(grad_split)  # (b, s, 3, h, d)
    assert_close(grad_qkv[:, :, 1:], grad_split[:, :, 1:], atol=0, rtol=0)  # dk, dv
    # dq within one bf16 rounding (rtol 2^-7): flash-attention backward kernels add dq's partial sums over key blocks
    # atomically, in an order that can vary between runs. Seen once (twentieth session, 4096x12x128-compiled): one
    # element of 18.9M one unit in the last place apart.
    assert_close(grad_qkv[:, :, 0], grad_split[:, :, 0], atol=1e-6, rtol=2**-7)


@pytest.mark.gpu
@needs_cudnn
@pytest.mark.parametrize("params", [torch.bfloat16, torch.float32], ids=["bf16-params", "autocast"])
def test_gpu_compiled_training_on_packed_qkv_is_as_accurate_as_eager(norm_calls, params):
    """The loop's compiled step (CUDA graphs) packs q, k and v in every layer and is as close to float64 as the
    eager step, with bf16 parameters (which also run the add + LayerNorm node) and under autocast, as `alibi-lm
    train` runs it; cuDNN built its graphs for the packed rows. Two layers: the size at which cuDNN's frontend,
    planning with both heuristic modes at once, left the last layer's saved tensors in a reference cycle and the
    CUDA-graph warm-up's pool check failed (alibi_cudnn.HEURISTIC_MODES)."""
    alibi_cudnn._GRAPHS.clear()
    base = tiny_model(8, "sdpa", hidden_size=512, intermediate_size=2048, vocab_size=32_000,
                      num_hidden_layers=2).train()
    ids = torch.randint(3, 32_000, (4, 256), device="cuda")
    assert_compiled_step_as_accurate_as_eager(
        base, lambda model: torch.compile(training_loss(model), mode="reduce-overhead"), ids, params)
    rows = {key[2][2] for key in alibi_cudnn._GRAPHS}  # the query's token stride of each built graph
    assert 3 * 512 in rows, rows
    assert bool(norm_calls) == (params == torch.bfloat16)  # traced: the node serves bf16 parameters only
