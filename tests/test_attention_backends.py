"""Every backend computes what eager computes: with 4 and 6 heads, with and without padding."""

import copy

import pytest
import torch
from torch.testing import assert_close
from transformers import DynamicCache

import modeling_alibi.alibi_attention as modeling
import modeling_alibi.alibi_flex as flex_module
from modeling_alibi import AlibiForCausalLM
from modeling_alibi.alibi_mask import AlibiAttentionMask, alibi_slopes
from modeling_alibi.modeling_alibi import output_cache

from conftest import model_pair, tiny_config, tiny_model

HEADS = [pytest.param(4, id="h4"), pytest.param(6, id="h6")]


def batch_with_padding(padded: bool, length: int = 23, batch: int = 3):
    input_ids = torch.randint(3, 99, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    if padded:
        mask[1, :5] = 0  # left padding
        mask[2, -7:] = 0  # right padding
        input_ids[mask == 0] = 1
    return input_ids, mask


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_sdpa_matches_eager(num_heads, padded):
    input_ids, mask = batch_with_padding(padded)
    eager = tiny_model(num_heads, "eager")(input_ids, attention_mask=mask).logits
    sdpa = tiny_model(num_heads, "sdpa")(input_ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close(sdpa[real], eager[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_heads", HEADS)
def test_sdpa_query_chunks_match_eager(num_heads, monkeypatch):
    """Long inputs run SDPA in query chunks; force tiny chunks and compare."""
    input_ids, mask = batch_with_padding(True)
    eager = tiny_model(num_heads, "eager")(input_ids, attention_mask=mask).logits
    monkeypatch.setattr(modeling, "SDPA_BIAS_BYTES", 4 * 3 * num_heads * 23 * 5)  # 5 query rows per chunk
    sdpa = tiny_model(num_heads, "sdpa")(input_ids, attention_mask=mask).logits
    assert_close(sdpa[mask.bool()], eager[mask.bool()], atol=1e-5, rtol=1e-5)


# --- flash-attn is not installable on CPU machines: check our call against its documented semantics -----------


def _reference_flash(q, k, v, dropout_p, softmax_scale, causal, alibi_slopes):
    """flash_attn_func semantics: (b, s, h, d); causal and ALiBi bottom-right aligned, -slope * |i + sk - sq - j|."""
    assert causal and dropout_p == 0.0 and alibi_slopes.dtype == torch.float32
    sq, sk = q.shape[1], k.shape[1]
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None, :]
    bias = -alibi_slopes[:, None, None] * (i - j).abs()  # (h, sq, sk)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * softmax_scale + bias
    scores = scores.masked_fill(j > i, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def _reference_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, alibi_slopes):
    outs = []
    for n in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[n], cu_q[n + 1]), slice(cu_k[n], cu_k[n + 1])
        out = _reference_flash(q[None, qs], k[None, ks], v[None, ks], dropout_p, softmax_scale, causal, alibi_slopes)
        outs.append(out[0])
    return torch.cat(outs)


@pytest.fixture
def fake_flash(monkeypatch):
    monkeypatch.setattr(modeling, "flash_attn_func", _reference_flash)
    monkeypatch.setattr(modeling, "flash_attn_varlen_func", _reference_flash_varlen)


def flash_model(num_heads: int) -> AlibiForCausalLM:
    model = tiny_model(num_heads, "eager")
    model.config._attn_implementation = "flash_attention_2"  # transformers' own check wants the real package
    return model


def test_flash_without_flash_attn_names_the_extra():
    if modeling.flash_attn_func is not None:
        pytest.skip("flash-attn is installed")
    with pytest.raises(ImportError, match=r"alibi-lm\[flash\]"):
        tiny_model(4, "flash_attention_2")


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_flash_call_matches_eager(fake_flash, num_heads, padded):
    input_ids, mask = batch_with_padding(padded)
    eager = tiny_model(num_heads, "eager")(input_ids, attention_mask=mask).logits
    flash = flash_model(num_heads)(input_ids, attention_mask=mask).logits
    assert_close(flash[mask.bool()], eager[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_heads", HEADS)
def test_flash_call_decodes_with_cache(fake_flash, num_heads):
    input_ids, mask = batch_with_padding(False, length=12)
    mask[0, :3] = 0
    model = flash_model(num_heads)
    full = tiny_model(num_heads, "eager")(input_ids, attention_mask=mask).logits
    out = model(input_ids[:, :8], attention_mask=mask[:, :8], use_cache=True)
    steps = [out.logits]
    for t in range(8, 12):
        out = model(input_ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=output_cache(out))
        steps.append(out.logits)
    assert_close(torch.cat(steps, 1)[mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)


def test_output_attentions_falls_back_to_eager_weights():
    input_ids, mask = batch_with_padding(True)
    out = tiny_model(4, "sdpa")(input_ids, attention_mask=mask, output_attentions=True)
    weights = out.attentions[0]  # (b, h, q, k)
    assert weights.shape == (3, 4, 23, 23)
    allowed = torch.ones(23, 23).tril().bool()[None] & mask.bool()[:, None, :]  # (b, q, k): causal, not padding
    for b in range(3):
        real = mask[b].bool()  # padded query rows are don't-care
        rows = weights[b][:, real]  # (h, real q, k)
        assert_close(rows.sum(-1), torch.ones(rows.shape[:2]))
        assert torch.all(rows[~allowed[b][real][None].expand_as(rows)] == 0)


def test_default_backend_is_sdpa_on_cpu_and_flex_on_cuda():
    model = AlibiForCausalLM(tiny_config())
    expected = "flex_attention" if torch.cuda.is_available() else "sdpa"
    assert model.config._attn_implementation == expected


# --- FlexAttention's block mask, built from block distance ranges ---------------------------------------------


@pytest.mark.skipif(flex_module.BlockMask is None, reason="this torch has no FlexAttention")
@pytest.mark.parametrize("truncation", [None, 20.0], ids=["full", "truncated"])
@pytest.mark.parametrize("window", [None, 200], ids=["unwindowed", "window200"])
@pytest.mark.parametrize("q_len,k_len", [(1, 300), (100, 300), (256, 520), (300, 300), (1000, 1000), (130, 1000)])
def test_unpadded_block_mask_equals_create_block_mask(q_len, k_len, window, truncation):
    """Same partial and full blocks, in the same order, as flex's dense construction, with no (q, k) tensor."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = k_len - q_len
    max_distance = None if truncation is None else truncation / alibi_slopes(4)
    mask = AlibiAttentionMask(
        query_positions=torch.arange(offset, k_len)[None], key_positions=torch.arange(k_len)[None],
        key_padding=None, slopes=None, window=window, max_distance=max_distance,
    )
    mask_mod = flex_module._flex_mask_mod(mask, offset)
    heads = None if max_distance is None else 4
    expected = create_block_mask(mask_mod, 1, heads, q_len, k_len, device="cpu")
    actual = flex_module._unpadded_block_mask(mask_mod, q_len, k_len, offset, window, max_distance, torch.device("cpu"))
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks"):
        want, got = getattr(expected, name), getattr(actual, name)
        if name.endswith("indices"):  # only the first `count` entries of a row are meaningful
            counts = getattr(expected, name.replace("indices", "num_blocks"))
            keep = torch.arange(want.shape[-1]) < counts[..., None]
            want, got = want.expand_as(got)[keep.expand_as(got)], got[keep.expand_as(got)]
        assert torch.equal(want.expand_as(got), got), name
    assert torch.equal(expected.to_dense().expand_as(actual.to_dense()), actual.to_dense())


# --- The Triton kernel on flex's inference calls: dispatch, checked on CPU with a stand-in kernel ------------


def flex_model(dtype: torch.dtype = torch.float16, **overrides) -> AlibiForCausalLM:
    """4 heads; a wide init (0.2) so that attention is far from uniform and a wrong mask shows in the logits."""
    model = tiny_model(4, "eager", initializer_range=0.2, **overrides).to(dtype)
    model.config._attn_implementation = "flex_attention"  # transformers' own check wants CUDA
    return model


@pytest.fixture
def forced_flex(monkeypatch) -> dict:
    """flex_attention on CPU: a stand-in Triton kernel and a stand-in flex kernel, with their calls recorded.

    The stand-in Triton kernel computes the kernel's documented function (test_alibi_triton's reference), so a
    model whose calls it serves must still equal eager. Flex cannot run here: its stand-in returns zeros, and
    block masks are a placeholder.
    """
    from test_alibi_triton import reference_attention

    calls = {"triton": [], "flex": 0, "block_masks": 0}

    def kernel(query, key, value, slopes, scale, offset=0, window=None, max_distance=None):
        calls["triton"].append(dict(offset=offset, window=window, max_distance=max_distance))
        q, k, v = (t.float() for t in (query, key, value))
        return reference_attention(q, k, v, slopes, scale, offset, window, max_distance).to(query.dtype)

    def flex(query, *args):
        calls["flex"] += 1
        return torch.zeros_like(query)

    def block_mask(mask, *args):
        calls["block_masks"] += 1
        mask.block_mask = "block mask"
        return mask.block_mask

    monkeypatch.setattr(modeling, "_flex_device", lambda device: True)  # flex on CPU: the stand-ins run
    monkeypatch.setattr(modeling, "alibi_flash_attention", kernel)
    monkeypatch.setattr(modeling, "_triton_supported", lambda query: True)
    monkeypatch.setattr(flex_module, "_compiled_flex_alibi", flex)
    monkeypatch.setattr(modeling, "flex_block_mask", block_mask)  # before the layers
    monkeypatch.setattr(flex_module, "flex_block_mask", block_mask)  # inside the flex kernel call
    return calls


@pytest.mark.parametrize(
    "overrides, offsets",
    [
        pytest.param({}, [0, 64, 128], id="full-cache"),
    ],
)
def test_unpadded_inference_runs_the_triton_kernel(forced_flex, overrides, offsets):
    """A prompt fed in chunks with a cache: each chunk reaches the kernel at offset = the cached key count.

    fp16 against fp32 eager: the error is fp16 rounding (~5e-3); an offset off by one gives ~1.6.
    """
    model = flex_model(**overrides)
    reference = tiny_model(4, "eager", initializer_range=0.2, **overrides)
    input_ids = torch.randint(3, 99, (2, 192))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        expected = reference(input_ids).logits
        chunks = [model(input_ids[:, s : s + 64], cache=cache, use_cache=True).logits for s in (0, 64, 128)]
    layers = model.config.num_hidden_layers
    assert [call["offset"] for call in forced_flex["triton"]] == [offset for offset in offsets for _ in range(layers)]
    for call in forced_flex["triton"]:
        assert call["window"] == model.config.attention_window and call["max_distance"] is None
    assert forced_flex["flex"] == forced_flex["block_masks"] == 0  # no block mask is built for nothing
    assert_close(torch.cat(chunks, 1).float(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
    "case",
    [
        "padded", "grad-enabled", "frozen-embeddings", "fp32", "rotary", "learned", "windowed", "truncated",
        "switched-off",
    ],
)
def test_other_calls_keep_flex(forced_flex, monkeypatch, case):
    """Padded batches, calls that need gradients, fp32, the non-ALiBi baselines, windows and ALiBi truncation
    (the kernel gave NaN rows with them inside the model on an H100) and TRITON_INFERENCE = False.

    Adapters on frozen embeddings need gradients too; fp32 would round to TF32 in Triton's tl.dot. The block
    mask of these calls is still built once, before the first layer.
    """
    encoding = dict(position_encoding=case) if case in ("rotary", "learned") else {}
    if case in ("windowed", "truncated"):
        encoding = dict(attention_window=40) if case == "windowed" else dict(alibi_truncation=4.0)
    model = flex_model(torch.float32 if case == "fp32" else torch.float16, max_position_embeddings=256, **encoding)
    monkeypatch.setattr(modeling, "TRITON_INFERENCE", case != "switched-off")
    input_ids, mask = torch.randint(3, 99, (2, 100)), torch.ones(2, 100, dtype=torch.long)
    if case == "padded":
        mask[1, :5] = 0
    if case == "frozen-embeddings":
        model.model.embed_tokens.requires_grad_(False)
    built_before_layers = []
    model.model.layers[0].register_forward_pre_hook(lambda *_: built_before_layers.append(forced_flex["block_masks"]))
    with torch.set_grad_enabled(case in ("grad-enabled", "frozen-embeddings")):
        model(input_ids, attention_mask=mask)
    assert forced_flex["triton"] == []
    assert forced_flex["flex"] == model.config.num_hidden_layers
    assert built_before_layers == [1] and forced_flex["block_masks"] == 1


def test_windowed_calls_stay_on_flex_and_offsets_pass_through(forced_flex):
    """Queries past the keys (offset + q_len > k_len) reach the kernel unwindowed; a window keeps flex."""
    query = torch.randn(1, 4, 64, 8, dtype=torch.float16)
    key = torch.randn(1, 4, 80, 8, dtype=torch.float16)

    def attend(window, offset):
        mask = AlibiAttentionMask(
            query_positions=torch.arange(64)[None] + offset, key_positions=torch.arange(80)[None],
            key_padding=None, slopes=alibi_slopes(4), window=window, offset=offset,
        )
        modeling.flex_attention_forward(None, query, key, key, mask, scaling=0.125)

    attend(window=None, offset=20)
    attend(window=30, offset=16)
    assert [call["offset"] for call in forced_flex["triton"]] == [20] and forced_flex["flex"] == 1


def test_leaf_tensors_that_require_grad_take_triton_under_no_grad(forced_flex):
    """Under no_grad nothing records a graph, whatever the inputs' requires_grad says."""
    query = torch.randn(1, 4, 64, 8, dtype=torch.float16, requires_grad=True)
    mask = AlibiAttentionMask(
        query_positions=torch.arange(64)[None], key_positions=torch.arange(64)[None], key_padding=None,
        slopes=alibi_slopes(4), offset=0,
    )
    modeling.flex_attention_forward(None, query, query, query, mask, scaling=0.125)
    assert forced_flex["flex"] == 1 and forced_flex["triton"] == []
    with torch.no_grad():
        modeling.flex_attention_forward(None, query, query, query, mask, scaling=0.125)
    assert len(forced_flex["triton"]) == 1


# Runs in a fresh interpreter with TRITON_INTERPRET=1 (it must be set before triton is imported): the real
# kernel inside an fp16 flex model on CPU. For each case in argv[1] it records the kernel's offsets and the
# largest logit error of that model and of the same fp16 model on SDPA, both against fp32 eager.
_INTERPRETED_MODEL = r"""
import json, sys
import torch
import modeling_alibi.alibi_attention as modeling
from modeling_alibi import AlibiConfig, AlibiForCausalLM

modeling._flex_device = lambda device: True
modeling._triton_supported = lambda query: True
kernel, offsets = modeling.alibi_flash_attention, []
def recorded(*args, **kwargs):
    offsets.append(kwargs["offset"])
    return kernel(*args, **kwargs)
modeling.alibi_flash_attention = recorded

def model(backend, overrides):
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=99, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                         initializer_range=0.2, **overrides)
    model = AlibiForCausalLM._from_config(config, attn_implementation="eager").eval()
    model.config._attn_implementation = backend  # flex: transformers' own check wants CUDA
    return model if backend == "eager" else model.to(torch.float16)

results = {}
for name, overrides in json.loads(sys.argv[1]).items():
    offsets.clear()
    input_ids = torch.randint(3, 99, (2, 200), generator=torch.Generator().manual_seed(1))
    errors = {}
    with torch.no_grad():
        expected = model("eager", overrides).prefill(input_ids, chunk_size=64)[0]
        for backend in ("sdpa", "flex_attention"):  # chunks of 64, 64, 64 and 8 (the last one on SDPA)
            actual = model(backend, overrides).prefill(input_ids, chunk_size=64)[0]
            errors[backend] = (actual.float() - expected).abs().max().item()
    results[name] = {"offsets": list(offsets), "errors": errors}
print(json.dumps(results))
"""

INTERPRETED_CASES = {  # name: (config overrides, the kernel's offset for each chunk)
    "full-cache": ({}, [0, 64, 128]),
}


def run_interpreted(script: str, cases: dict) -> dict:
    """Run `script` with `cases` (as JSON in argv[1]) in a fresh interpreter under TRITON_INTERPRET=1; its last
    line of output, as JSON."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], cwd=repo, capture_output=True,
                         env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def interpreted_model() -> dict:
    if modeling.alibi_flash_attention is None:
        pytest.skip("triton is not installed")
    return run_interpreted(_INTERPRETED_MODEL, {name: overrides for name, (overrides, _) in INTERPRETED_CASES.items()})


@pytest.mark.parametrize("name", list(INTERPRETED_CASES))
def test_interpreted_kernel_in_the_model_matches_eager(interpreted_model, name):
    """The real kernel (Triton's CPU interpreter) as flex_attention_forward calls it: strides, offsets, masks."""
    result, offsets = interpreted_model[name], INTERPRETED_CASES[name][1]
    assert result["offsets"] == [offset for offset in offsets for _ in range(2)]  # two layers
    errors = result["errors"]  # fp16 rounding: the kernel's error is that of fp16 SDPA (an offset off by one: ~1)
    assert errors["flex_attention"] <= 1.5 * errors["sdpa"] + 1e-2, errors


# The real decode kernel inside an fp16 sdpa model on CPU (interpreter), against fp32 eager: a left-padded batch
# decoded step by step from a dynamic or a static cache, the steps optionally through torch.compile(fullgraph=True)
# (aot_eager on CPU: the kernel's custom op must trace with no graph break). argv[1]: {name: [overrides, cache,
# compiled]}.
_INTERPRETED_DECODE = r"""
import json, sys
import torch
from transformers import DynamicCache, StaticCache
import modeling_alibi.alibi_attention as modeling
from modeling_alibi import AlibiConfig, AlibiForCausalLM

modeling._decode_supported = lambda query: True
kernel, calls = modeling.alibi_decode_attention, []
def recorded(*args, **kwargs):
    calls.append(args[0].shape[2])
    return kernel(*args, **kwargs)
modeling.alibi_decode_attention = recorded

def model(dtype, overrides):
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=99, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                         initializer_range=0.2, **overrides)
    return AlibiForCausalLM._from_config(config, attn_implementation="eager" if dtype == torch.float32 else "sdpa"
                                         ).eval().to(dtype)

def decode(model, kind, prompt, mask, new, compiled=False):
    slots = prompt.shape[1] + new.shape[1] + 5
    if kind == "static":
        cache = StaticCache(config=model.config, max_cache_len=slots)
    else:
        cache = DynamicCache(config=model.config)
    width = lambda seen: slots if kind == "static" else seen
    full = torch.cat([mask, torch.ones_like(new)], 1)
    padded = lambda seen: torch.nn.functional.pad(full[:, :seen], (0, width(seen) - seen))
    model(prompt, attention_mask=padded(prompt.shape[1]), cache=cache, use_cache=True)
    step = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False) if compiled else model
    logits = []
    for i in range(new.shape[1]):
        seen = prompt.shape[1] + i + 1
        out = step(new[:, i : i + 1], attention_mask=padded(seen), cache=cache, use_cache=True)
        logits.append(out.logits[:, -1].float())
    return torch.stack(logits, 1)

results = {}
generator = torch.Generator().manual_seed(1)
prompt, new = torch.randint(3, 99, (2, 40), generator=generator), torch.randint(3, 99, (2, 4), generator=generator)
mask = torch.ones_like(prompt)
mask[1, :7] = 0  # left padding
for name, (overrides, kind, compiled) in json.loads(sys.argv[1]).items():
    calls.clear()
    with torch.no_grad():
        expected = decode(model(torch.float32, overrides), kind, prompt, mask, new)
        modeling.TRITON_INFERENCE = False
        fallback = decode(model(torch.float16, overrides), kind, prompt, mask, new)  # fp16 matmuls, no kernel
        modeling.TRITON_INFERENCE = True
        actual = decode(model(torch.float16, overrides), kind, prompt, mask, new, compiled)
    errors = {"kernel": (actual - expected).abs().max().item(), "fallback": (fallback - expected).abs().max().item()}
    results[name] = {"calls": list(calls), "errors": errors}
print(json.dumps(results))
"""

INTERPRETED_DECODE_CASES = {  # name: (config overrides, cache, compiled steps)
    "dynamic-cache": ({}, "dynamic", False),
    "static-cache": ({}, "static", False),
    "static-cache-compiled": ({}, "static", True),
    "window": ({"attention_window": 8}, "dynamic", False),
    "window-static-cache": ({"attention_window": 8}, "static", False),  # sliding slots: positions from the mask
    "truncation": ({"alibi_truncation": 2.0}, "static", False),
}


@pytest.fixture(scope="module")
def interpreted_decode() -> dict:
    if modeling.alibi_decode_attention is None:
        pytest.skip("triton is not installed")
    return run_interpreted(_INTERPRETED_DECODE, INTERPRETED_DECODE_CASES)


@pytest.mark.parametrize("name", list(INTERPRETED_DECODE_CASES))
def test_interpreted_decode_kernel_in_the_model_matches_eager(interpreted_decode, name):
    """Decode steps (one query each) of a padded batch run the decode kernel, and are as close to fp32 eager as
    the fp16 fallback (two matmuls) is."""
    result = interpreted_decode[name]
    assert result["calls"] == [1] * 4 * 2  # 4 steps x 2 layers; the 40-token prompt stays on SDPA
    errors = result["errors"]
    assert errors["kernel"] <= 1.5 * errors["fallback"] + 1e-2, errors


def test_decode_steps_fall_back_without_the_kernel(monkeypatch):
    """On CPU (or without triton) decode steps take the matmul path: the dispatch asks `_decode_supported`."""
    model = tiny_model(4, "sdpa")
    seen = []
    monkeypatch.setattr(modeling, "_decode_supported", lambda query: seen.append(query.shape) or False)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(3, 99, (1, 5)), cache=cache, use_cache=True)
        model(torch.randint(3, 99, (1, 1)), cache=cache, use_cache=True)
    if modeling.alibi_decode_attention is None:
        assert seen == []  # no triton: the kernel is never considered
    else:
        assert [shape[2] for shape in seen] == [5, 5, 1, 1]  # every short call asks, per layer


# --- GPU: FlexAttention and SDPA at 8,192 tokens in bf16 -----------------------------------------------------


def test_model_pair_really_runs_two_backends():
    """Guards the GPU comparisons below: the reference must stay eager when the fast model is built."""
    reference, fast = model_pair(4, "sdpa", device="cpu")
    assert reference.config is not fast.config
    assert (reference.config._attn_implementation, fast.config._attn_implementation) == ("eager", "sdpa")


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", ["flex_attention", "sdpa"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_gpu_fp32_matches_eager(num_heads, implementation):
    reference, fast = model_pair(num_heads, implementation)
    input_ids, mask = batch_with_padding(True, length=300)
    input_ids, mask = input_ids.cuda(), mask.cuda()
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=mask).logits
        actual = fast(input_ids, attention_mask=mask).logits
    assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", ["flex_attention", "sdpa"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_gpu_bf16_matches_eager_at_8192(num_heads, implementation):
    reference, fast = model_pair(num_heads, implementation, dtype=torch.bfloat16)
    input_ids = torch.randint(3, 99, (1, 8192), device="cuda")
    with torch.no_grad():
        expected = reference(input_ids).logits.float().log_softmax(-1)
        actual = fast(input_ids).logits.float().log_softmax(-1)
    # bf16 tolerance: both sides round activations to 8 significant bits, layer by layer.
    assert_close(actual, expected, atol=5e-2, rtol=5e-2)
    assert (actual - expected).abs().mean() < 5e-3


# --- GPU: the Triton kernel on flex's inference calls, against fp32 eager ------------------------------------


def record_kernel_offsets(monkeypatch) -> list[int]:
    """Wrap the real Triton kernel: the offsets of its calls, so a test knows it ran. cuDNN, which serves whole
    prompts before Triton does, is switched off: these tests are about Triton's calls against flex's."""
    monkeypatch.setattr(modeling, "CUDNN_ALIBI", False)
    kernel = modeling.alibi_flash_attention
    assert kernel is not None, "triton is missing on this CUDA machine"
    offsets = []

    def recorded(*args, **kwargs):
        offsets.append(kwargs["offset"])
        return kernel(*args, **kwargs)

    monkeypatch.setattr(modeling, "alibi_flash_attention", recorded)
    return offsets


TRITON_OPTIONS = [pytest.param({}, id="full"), pytest.param(dict(attention_window=100), id="window100"),
                  pytest.param(dict(alibi_truncation=4.0), id="trunc4")]


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", TRITON_OPTIONS)
@pytest.mark.parametrize("chunk_size", [None, 192], ids=["one-forward", "prefill192"])
def test_gpu_triton_inference_matches_eager(monkeypatch, chunk_size, overrides):
    """bf16 flex model under no_grad runs the Triton kernel, as close to fp32 eager as flex's own kernel.

    Chunked prefill gives new offsets per chunk (the cached key count: 99 kept keys with the window); its last
    chunk of 40 < FLEX_MIN_QUERY_LEN queries takes SDPA. The init is wider than the default 0.02 so that
    attention is far from uniform: an offset off by one then moves log-probs by ~1 against ~0.1 of bf16 rounding
    (measured on CPU with a stand-in kernel); at 0.02 it hides in the rounding.
    """
    reference, fast = model_pair(8, "flex_attention", initializer_range=0.1, **overrides)  # head dim 64
    fast.to(torch.bfloat16)
    offsets = record_kernel_offsets(monkeypatch)
    input_ids = torch.randint(3, 99, (2, 1000), device="cuda")

    def log_probs(model):
        with torch.no_grad():
            if chunk_size is None:
                logits = model(input_ids).logits
            else:
                logits = model.prefill(input_ids, chunk_size=chunk_size)[0][:, None]  # last position
        return logits.float().log_softmax(-1)

    expected = log_probs(reference)
    monkeypatch.setattr(modeling, "TRITON_INFERENCE", False)
    flex = log_probs(fast)
    assert offsets == []
    monkeypatch.setattr(modeling, "TRITON_INFERENCE", True)
    actual = log_probs(fast)
    size = chunk_size or 1000
    starts = [start for start in range(0, 1000, size) if min(size, 1000 - start) >= modeling.FLEX_MIN_QUERY_LEN]
    window = overrides.get("attention_window")
    expected_offsets = [start if window is None else min(start, window - 1) for start in starts]
    if overrides:
        expected_offsets = []  # windows stay on flex (NaN rows from the kernel inside the model on an H100)
    assert offsets == [offset for offset in expected_offsets for _ in range(fast.config.num_hidden_layers)]
    # bf16 against fp32: the kernel must be as close as flex's own kernel, at the largest and on average.
    flex_error, triton_error = (flex - expected).abs(), (actual - expected).abs()
    assert torch.isfinite(actual).all()
    assert triton_error.max() <= 1.5 * flex_error.max() + 1e-2, (triton_error.max(), flex_error.max())
    assert triton_error.mean() <= 1.5 * flex_error.mean() + 1e-3, (triton_error.mean(), flex_error.mean())


@pytest.mark.gpu
def test_gpu_training_forward_keeps_flex(monkeypatch):
    """Forward + backward: the kernel's backward is no faster than flex's, so gradients stay on flex."""
    _, model = model_pair(8, "flex_attention", dtype=torch.bfloat16)
    offsets = record_kernel_offsets(monkeypatch)
    input_ids = torch.randint(3, 99, (2, 512), device="cuda")
    model.train()(input_ids, labels=input_ids).loss.backward()
    assert offsets == []
    with torch.no_grad():
        model.eval()(input_ids)
    assert offsets == [0] * model.config.num_hidden_layers


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_compiled_training_step_matches_eager(dtype):
    """`torch.compile(model)` (what --torch_compile trains) gives the eager model's loss and gradients on flex.

    Head dim 128 at L=512, the benchmark's shape: the block mask is traced into the compiled graph there.
    """
    _, eager = model_pair(8, "flex_attention", dtype=dtype, hidden_size=1024, intermediate_size=256)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    input_ids = torch.randint(3, 99, (2, 512), device="cuda")
    losses = []
    for run, module in ((eager, eager), (compiled, compiled_model)):
        module.train()
        loss = run(input_ids, labels=input_ids).loss
        loss.backward()
        losses.append(loss.detach())
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    assert_close(losses[1], losses[0], **tolerance)
    # One scale for all gradients: some are zero in exact arithmetic (the key bias shifts a whole softmax row),
    # so their rounding noise cannot be compared relative to itself.
    scale = max(p.grad.abs().max() for p in eager.parameters())
    for (name, expected), actual in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        assert_close(actual.grad / scale, expected.grad / scale, **tolerance, msg=name)
