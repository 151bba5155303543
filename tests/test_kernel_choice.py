"""The kernel-choice table (`alibi_attention.KERNEL_RULES`): which kernel serves which call, and that a kernel is
chosen only where it computes what eager computes.

On CPU the fast kernels cannot run, so their availability checks are stubbed (the stubs keep each kernel's real
dtype limits) and cuDNN's kernel is replaced by what cuDNN computes: causal ALiBi over the same tokens with the
paper's slopes for the head count, blind to padding, windows and cache offsets. A call routed to it wrongly
therefore gives different logits from eager. The real kernels are tested against eager on the GPU
(test_alibi_cudnn.py, test_attention_backends.py).
"""

import pytest
import torch
from torch.testing import assert_close
from transformers import DynamicCache

import modeling_alibi.alibi_attention as attention
from modeling_alibi.alibi_attention import KernelCall, choose_kernel
from modeling_alibi.alibi_mask import AlibiAttentionMask, alibi_slopes

from conftest import tiny_model

HALF = (torch.float16, torch.bfloat16)


def cudnn_semantics(query, key, value, scaling):
    """What cuDNN's built-in ALiBi computes: top-left causal, slopes from the head count at bias_max 8."""
    _, h, s, _ = query.shape
    i = torch.arange(s)
    distance = (i[:, None] - i[None, :]).float()  # (q, k)
    bias = (-alibi_slopes(h)[:, None, None] * distance).masked_fill(distance < 0, float("-inf"))  # (h, q, k)
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling + bias  # (b, h, q, k)
    return torch.matmul(scores.softmax(-1), value.float()).to(query.dtype)  # (b, h, q, d)


@pytest.fixture
def kernels(monkeypatch) -> list[str]:
    """Fast kernels available as on an H100 with nvidia-cudnn-frontend; returns the kernels each call ran."""
    chosen = []
    monkeypatch.setattr(attention, "_flex_device", lambda device: True)
    monkeypatch.setattr(attention, "_cudnn_supported", lambda q, k: q.dtype in HALF and q.shape[-1] % 8 == 0)
    monkeypatch.setattr(attention, "_triton_supported", lambda q: True)
    monkeypatch.setattr(attention, "_decode_supported", lambda q: q.dtype in HALF)
    # The Triton kernels never run on the CPU, and without triton (the CPU build of torch has none) they are None,
    # which the choice reads as absent: stand-ins that fail if called keep it the same with and without triton.
    for name in ("alibi_flash_attention", "alibi_decode_attention"):
        monkeypatch.setattr(attention, name, lambda *args, name=name, **kwargs: pytest.fail(f"{name} ran on the CPU"))
    monkeypatch.setattr(attention, "alibi_cudnn_attention", cudnn_semantics)
    real = attention.choose_kernel

    def recording(call):
        chosen.append(real(call))
        return chosen[-1]

    monkeypatch.setattr(attention, "choose_kernel", recording)
    return chosen


def call(implementation="flex_attention", q_len=128, k_len=None, dtype=torch.bfloat16, needs_grad=True,
         dropout=0.0, **mask_fields) -> KernelCall:
    """A call of 4 heads with head dim 16; `mask_fields` override an unpadded ALiBi mask at offset k_len - q_len."""
    k_len = q_len if k_len is None else k_len
    fields = dict(
        query_positions=torch.arange(k_len - q_len, k_len)[None], key_positions=torch.arange(k_len)[None],
        key_padding=None, slopes=alibi_slopes(4), offset=k_len - q_len, bias_max=8.0,
    )
    fields.update(mask_fields)
    query = torch.zeros(1, 4, q_len, 16, dtype=dtype)
    return KernelCall(implementation, AlibiAttentionMask(**fields), query, k_len, dropout, needs_grad)


CASES = {
    "training": (call(), "cudnn"),
    "training-sdpa": (call("sdpa"), "cudnn"),
    "short-training": (call(q_len=16), "cudnn"),
    "prefill": (call(needs_grad=False), "cudnn"),
    "eager": (call("eager"), "eager"),
    "flash": (call("flash_attention_2"), "flash"),
    "fp32": (call(dtype=torch.float32), "flex"),
    "padded": (call(key_padding=torch.zeros(1, 128, dtype=torch.bool), offset=None), "flex"),
    "padded-sdpa": (call("sdpa", key_padding=torch.zeros(1, 128, dtype=torch.bool), offset=None), "sdpa_bias"),
    "packed": (call(segments=torch.zeros(1, 128, dtype=torch.long)), "flex"),
    "window": (call(window=64), "flex"),
    "truncated": (call(max_distance=torch.full((4,), 9.0)), "flex"),
    "bias-max-4": (call(bias_max=4.0), "flex"),
    "dropout-sdpa": (call("sdpa", dropout=0.1), "sdpa_bias"),
    "cached-chunk": (call(k_len=192, needs_grad=False), "triton"),
    "cached-chunk-training": (call(k_len=192), "flex"),
    "decode": (call(q_len=1, k_len=100, needs_grad=False), "triton_decode"),
    "decode-fp32": (call(q_len=1, k_len=100, needs_grad=False, dtype=torch.float32), "matmul"),
    "baseline": (call(slopes=None, bias_max=None), "flex"),
    "baseline-sdpa": (call("sdpa", slopes=None, bias_max=None), "sdpa_causal"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_call_gets_the_kernel_of_its_row(kernels, name):
    kernel_call, expected = CASES[name]
    assert choose_kernel(kernel_call) == expected


@pytest.mark.parametrize("name", ["padded", "packed-rows", "training", "window", "truncated", "fp32"])
def test_compiled_per_row_masks_leave_flex_for_sdpa(kernels, monkeypatch, name):
    """Inside torch.compile, padding and packed rows (a per-row block mask, which inductor fails on at symbolic
    lengths) go to SDPA with the bias; calls whose block mask does not depend on the row keep their kernel."""
    packed_rows = call(segments=torch.zeros(1, 128, dtype=torch.long), offset=None)  # as build_attention_mask makes
    kernel_call, expected = (packed_rows, "flex") if name == "packed-rows" else CASES[name]
    assert choose_kernel(kernel_call) == expected
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert choose_kernel(kernel_call) == ("sdpa_bias" if name in ("padded", "packed-rows") else expected)


def test_switching_cudnn_off_falls_back(kernels, monkeypatch):
    monkeypatch.setattr(attention, "CUDNN_ALIBI", False)
    assert choose_kernel(call()) == "flex" and choose_kernel(call(needs_grad=False)) == "triton"


def test_every_rule_names_a_kernel():
    assert {kernel for kernel, _, _ in attention.KERNEL_RULES} == set(attention.KERNELS)


def fp32_models(monkeypatch, implementation: str, train: bool = False):
    """An eager reference and the same weights on `implementation`, fp32 on CPU: the stubbed cuDNN takes fp32
    here (its dtype limit is the table's concern, above)."""
    monkeypatch.setattr(attention, "_cudnn_supported", lambda q, k: q.shape[-1] % 8 == 0)
    reference = tiny_model(4, "eager", initializer_range=0.2).train(train)
    fast = tiny_model(4, "eager", initializer_range=0.2).train(train)
    fast.config._attn_implementation = implementation  # transformers' own check wants CUDA for flex
    return reference, fast


@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_cudnn_serves_training_and_prefill_and_matches_eager(kernels, monkeypatch, implementation):
    """Training-shaped and prefill calls go to cuDNN's semantics and give eager's logits; padded rows and cached
    chunks go elsewhere (cuDNN's semantics would be wrong for them)."""
    reference, fast = fp32_models(monkeypatch, implementation)
    input_ids = torch.randint(3, 99, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        expected, expected_padded = reference(input_ids).logits, reference(input_ids, attention_mask=mask).logits
        del kernels[:]
        assert_close(fast(input_ids).logits, expected)
        assert kernels == ["cudnn"] * 2  # one call per layer
        assert_close(fast(input_ids, attention_mask=mask).logits, expected_padded)
        assert "cudnn" not in kernels[2:]
        del kernels[:]
        cache = DynamicCache(config=fast.config)
        fast(input_ids[:, :20], cache=cache, use_cache=True)  # prefill: the same tokens as queries and keys
        step = fast(input_ids[:, 20:], cache=cache, use_cache=True).logits  # a cached chunk of 4
        assert kernels == ["cudnn"] * 2 + ["matmul"] * 2
        assert_close(step, expected[:, 20:])


def test_cudnn_gradients_match_eager(kernels, monkeypatch):
    reference, fast = fp32_models(monkeypatch, "flex_attention", train=True)
    input_ids = torch.randint(3, 99, (2, 24))
    reference(input_ids, labels=input_ids).loss.backward()
    del kernels[:]
    fast(input_ids, labels=input_ids).loss.backward()
    assert kernels == ["cudnn"] * 2
    for (name, expected), actual in zip(reference.named_parameters(), fast.parameters(), strict=True):
        assert_close(actual.grad, expected.grad, msg=name)
