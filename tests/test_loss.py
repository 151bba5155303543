"""The head fused into the loss (`skip_logits`, alibi_loss.linear_cross_entropy, alibi_triton_loss.py) against
the plain loss on full logits: values and every gradient, eager and compiled, CPU and GPU.

The Triton kernel runs on the CPU under Triton's interpreter, in a subprocess (TRITON_INTERPRET=1 must be set
before triton is imported; see test_alibi_triton.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import modeling_alibi.alibi_loss as alibi_loss
from modeling_alibi.alibi_loss import linear_cross_entropy
from modeling_alibi.training.loop import training_loss

from conftest import assert_compiled_step_as_accurate_as_eager, run_interpreted, tiny_model


def _cross_entropy_and_grads(hidden, weight, targets, count, grad_loss, function):
    """function(hidden, weight, targets, count) times grad_loss, backpropagated: (loss, d hidden, d weight)."""
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = function(hidden, weight, targets, count)
    (loss * grad_loss).backward()
    return loss.detach(), hidden.grad, weight.grad


def _reference(hidden, weight, targets, count):
    return F.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100, reduction="sum") / count


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_linear_cross_entropy_equals_cross_entropy_of_the_logits(compiled):
    """float64, some rows ignored, an incoming gradient other than 1 (the backward scales by it)."""
    hidden, weight = torch.randn(37, 16, dtype=torch.float64), torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (37,))
    targets[::5] = -100
    count = (targets != -100).sum()
    function = torch.compile(linear_cross_entropy, fullgraph=True) if compiled else linear_cross_entropy
    actual = _cross_entropy_and_grads(hidden, weight, targets, count, 3.0, function)
    expected = _cross_entropy_and_grads(hidden, weight, targets, count, 3.0, _reference)
    for a, e, name in zip(actual, expected, ("loss", "hidden", "weight"), strict=True):
        assert_close(a, e, msg=name)


def test_linear_cross_entropy_skips_the_gradient_of_a_frozen_weight():
    hidden = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(10, 8, dtype=torch.float64)  # frozen: no GEMM for its gradient
    targets = torch.randint(0, 10, (6,))
    linear_cross_entropy(hidden, weight, targets, 6).backward()
    expected = torch.autograd.grad(_reference(hidden, weight, targets, 6), hidden)[0]
    assert weight.grad is None
    assert_close(hidden.grad, expected)


@pytest.mark.parametrize("keyword", ["labels", "shift_labels", "num_items_in_batch"])
def test_skip_logits_gives_the_same_loss_and_gradients(keyword):
    """The model's loss with the head fused (`skip_logits=True`) against the loss on its full logits."""
    reference = tiny_model(4, "sdpa").train()
    fused = copy.deepcopy(reference)
    ids = torch.randint(3, 99, (2, 10))
    labels = ids.clone()
    labels[0, :3] = -100
    batch = {"labels": labels}
    if keyword == "shift_labels":
        batch = {"shift_labels": F.pad(labels[:, 1:], (0, 1), value=-100)}
    elif keyword == "num_items_in_batch":
        batch["num_items_in_batch"] = torch.tensor(40)
    expected = reference(ids, **batch).loss
    expected.backward()
    out = fused(ids, **batch, skip_logits=True)
    out.loss.backward()
    assert out.logits is None
    assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(reference.named_parameters(), fused.parameters(), strict=True):
        assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_skip_logits_without_gradients_and_with_an_adaptive_softmax():
    """No gradient wanted, or an adaptive head: the loss is the usual one, and still no logits come back."""
    ids = torch.randint(3, 99, (2, 12))
    adaptive = dict(adaptive_input=True, adaptive_input_cutoffs=[20, 60], adaptive_softmax_cutoffs=[20, 60],
                    tie_word_embeddings=False)
    for model in (tiny_model(4, "sdpa"), tiny_model(4, "sdpa", **adaptive)):
        with torch.no_grad():
            out = model(ids, labels=ids, skip_logits=True)
            assert out.logits is None
            assert_close(out.loss, model(ids, labels=ids).loss, rtol=1e-6, atol=1e-6)


def test_skip_logits_needs_labels_and_every_position():
    model = tiny_model(4, "sdpa")
    ids = torch.randint(3, 99, (1, 6))
    with pytest.raises(ValueError, match="skip_logits=True returns the loss alone"):
        model(ids, skip_logits=True)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, labels=ids, skip_logits=True, logits_to_keep=1)


def test_compiled_training_loss_equals_the_eager_loss_on_full_logits():
    """What alibi-lm train compiles (`training_loss`, which skips the logits) against the eager model's loss."""
    reference = tiny_model(4, "sdpa").train()
    model = copy.deepcopy(reference)
    ids = torch.randint(3, 99, (2, 16))
    expected = reference(ids, labels=ids).loss
    expected.backward()
    actual = torch.compile(training_loss(model), fullgraph=True)(input_ids=ids, labels=ids)
    actual.backward()
    assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(reference.named_parameters(), model.parameters(), strict=True):
        assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


# Runs in a fresh interpreter with TRITON_INTERPRET=1: argv[1] holds the cases, argv[2] gets their results.
_RUNNER = r"""
import sys
import torch
from modeling_alibi import alibi_triton_loss

results = {}
for name, (logits, targets, count) in torch.load(sys.argv[1]).items():
    results[name] = alibi_triton_loss._rows(logits, targets, count)
torch.save(results, sys.argv[2])
"""


def test_interpreted_rows_kernel_matches_float64_cross_entropy(tmp_path):
    """The kernel's per-row loss and gradient: a vocabulary that is not a power of two (a masked block tail),
    ignored rows, an integer count; fp32 and fp16 logits. A target outside the vocabulary gives that row a NaN
    loss and leaves the others alone."""
    cases = {}
    for dtype in (torch.float32, torch.float16):
        logits = (torch.randn(9, 1000) * 3).to(dtype)
        targets = torch.randint(0, 1000, (9,))
        targets[[2, 7]] = -100
        cases[str(dtype)] = (logits, targets, torch.tensor(7))
    bad_targets = cases[str(torch.float32)][1].clone()
    bad_targets[[0, 8]] = torch.tensor([1000, -5])  # past the vocabulary, and negative but not -100
    cases["out of range"] = (cases[str(torch.float32)][0], bad_targets, torch.tensor(7))
    results = run_interpreted(_RUNNER, cases, tmp_path)
    rows, _ = results.pop("out of range")
    cases.pop("out of range")
    assert rows[[0, 8]].isnan().all() and not rows[1:8].isnan().any()
    assert_close(rows[1:8], results[str(torch.float32)][0][1:8])
    for name, (logits, targets, count) in cases.items():
        x = logits.double().requires_grad_()
        nll = F.cross_entropy(x, targets, ignore_index=-100, reduction="none")
        (nll.sum() / count).backward()
        rows, grad = results[name]
        assert rows.dtype == torch.float32 and grad.dtype == logits.dtype
        assert_close(rows.double(), nll.detach(), rtol=1e-5, atol=1e-5, msg=name)
        assert_close(grad, x.grad.to(logits.dtype), rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [32_000, 50_257])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_rows_kernel_matches_cross_entropy(vocab, dtype):
    """Vocabularies in a 32K and a 64K block, against F.cross_entropy on the fp32 logits."""
    from modeling_alibi.alibi_triton_loss import _cross_entropy_rows, cross_entropy_rows

    logits = (torch.randn(300, vocab, device="cuda") * 4).to(dtype)
    targets = torch.randint(0, vocab, (300,), device="cuda")
    targets[::7] = -100
    count = (targets != -100).sum()
    x = logits.float().requires_grad_()
    nll = F.cross_entropy(x, targets, ignore_index=-100, reduction="none")
    (nll.sum() / count).backward()
    rows, grad = cross_entropy_rows(logits, targets, count)
    assert_close(rows, nll.detach(), rtol=1e-5, atol=1e-4)
    assert_close(grad, x.grad.to(dtype), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-7)
    # No autograd test: the op runs inside linear_cross_entropy's forward, which computes the gradient itself.
    torch.library.opcheck(_cross_entropy_rows, (logits[:4], targets[:4], count),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", [True, False], ids=["rows-kernel", "plain-ops"])
@pytest.mark.parametrize("params", [torch.float32, torch.bfloat16], ids=["fp32-params-autocast", "bf16-params"])
def test_gpu_compiled_training_loss_is_as_accurate_as_the_eager_loss_on_full_logits(monkeypatch, params, kernel):
    """The loop's compiled loss (CUDA graphs, head fused, with the rows kernel or inductor's plain ops) is as close
    to a float64 step as the eager model's loss on its full logits (conftest's helper says how close)."""
    monkeypatch.setattr(alibi_loss, "ROWS_KERNEL_DEVICES", ("cuda",) if kernel else ())
    base = tiny_model(hidden_size=256, intermediate_size=1024, vocab_size=32_000).train()
    ids = torch.randint(3, 32_000, (4, 256), device="cuda")
    assert_compiled_step_as_accurate_as_eager(
        base, lambda model: torch.compile(training_loss(model), mode="reduce-overhead"), ids, params)
