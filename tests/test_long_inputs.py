"""Long inputs in bounded memory: windowed KV cache, chunked prefill, static cache, SDPA chunks, ALiBi truncation."""

import pytest
import torch
from test_attention_backends import _reference_flash, batch_with_padding
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache
from transformers.cache_utils import DynamicSlidingWindowLayer, StaticSlidingWindowLayer

import modeling_alibi.alibi_attention as modeling
from modeling_alibi import AlibiConfig, AlibiForCausalLM
from modeling_alibi.modeling_alibi import output_cache

from conftest import model_pair, tiny_config, tiny_model
from test_generation import left_padded

HEADS = [pytest.param(4, id="h4"), pytest.param(6, id="h6")]
WINDOW = 8
TRAIN_LEN = 16  # tiny_config's train_seq_len
GREEDY = dict(do_sample=False, pad_token_id=1, output_logits=True, return_dict_in_generate=True)


def padded_batch(length: int, pad: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, the second left-padded by `pad` tokens."""
    input_ids = torch.randint(3, 99, (2, length))
    mask = torch.ones_like(input_ids)
    mask[1, :pad] = 0
    input_ids[mask == 0] = 1
    return input_ids, mask


def record_key_counts(cache: DynamicCache, layer: int = 0) -> list[int]:
    """Key counts the cache's `layer` hands to attention on each update."""
    counts, update = [], cache.layers[layer].update

    def counting_update(*args, **kwargs):
        keys, values = update(*args, **kwargs)
        counts.append(keys.shape[-2])
        return keys, values

    cache.layers[layer].update = counting_update
    return counts


def assert_same_greedy(actual, expected) -> None:
    assert torch.equal(actual.sequences, expected.sequences)
    assert_close(torch.stack(actual.logits), torch.stack(expected.logits), atol=1e-5, rtol=1e-5)


# --- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_window=0), "attention_window=0 must be a positive integer"),
        (dict(attention_window=2.5), "attention_window=2.5"),
        (dict(alibi_truncation=0.0), "alibi_truncation=0.0 must be a positive threshold"),
        (dict(alibi_truncation=20.0, position_encoding="rotary"), 'alibi_truncation needs position_encoding="alibi"'),
    ],
)
def test_bad_long_context_options_name_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_attention_window_is_transformers_sliding_window(tmp_path):
    config = tiny_config(attention_window=WINDOW, alibi_truncation=20.0)
    assert config.sliding_window == WINDOW  # what DynamicCache / StaticCache read
    config.save_pretrained(tmp_path)
    stored = (tmp_path / "config.json").read_text()
    assert '"attention_window": 8' in stored and "sliding_window" not in stored
    loaded = AlibiConfig.from_pretrained(tmp_path)
    assert (loaded.attention_window, loaded.alibi_truncation) == (WINDOW, 20.0)
    assert all(isinstance(layer, DynamicSlidingWindowLayer) for layer in DynamicCache(config=loaded).layers)
    assert all(isinstance(layer, StaticSlidingWindowLayer) for layer in StaticCache(loaded, max_cache_len=64).layers)
    assert not any(isinstance(layer, DynamicSlidingWindowLayer) for layer in DynamicCache(config=tiny_config()).layers)


# --- 1. windowed attention and its KV cache ---------------------------------------------------------------------


@pytest.mark.parametrize("num_heads", HEADS)
def test_window_hides_keys_at_distance_w_or_more(num_heads):
    """With 2 layers of window W, the last logits depend on the last 2 (W - 1) + 1 tokens and on nothing before."""
    model = tiny_model(num_heads, "sdpa", attention_window=WINDOW)
    input_ids = torch.randint(3, 99, (1, 30))
    reach = 2 * (WINDOW - 1) + 1
    before, inside = input_ids.clone(), input_ids.clone()
    before[0, : 30 - reach] = torch.randint(3, 99, (30 - reach,))
    inside[0, 30 - reach] = (input_ids[0, 30 - reach] - 3 + 1) % 96 + 3  # another token, just inside the reach
    last = model(input_ids).logits[:, -1]
    assert torch.equal(model(before).logits[:, -1], last)  # masked keys get exactly zero weight
    assert (model(inside).logits[:, -1] - last).abs().max() > 1e-6
    unwindowed = tiny_model(num_heads, "sdpa")(input_ids).logits[:, -1]
    assert (unwindowed - last).abs().max() > 1e-3


MASK_OPTIONS = [pytest.param(dict(attention_window=WINDOW), id="window"),
                pytest.param(dict(alibi_truncation=2.0), id="trunc")]


@pytest.mark.parametrize("overrides", MASK_OPTIONS)
@pytest.mark.parametrize("num_heads", HEADS)
def test_sdpa_matches_eager_with_window_and_truncation(num_heads, overrides):
    input_ids, mask = batch_with_padding(True, length=40)
    eager = tiny_model(num_heads, "eager", **overrides)(input_ids, attention_mask=mask).logits
    sdpa = tiny_model(num_heads, "sdpa", **overrides)(input_ids, attention_mask=mask).logits
    assert_close(sdpa[mask.bool()], eager[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_heads", HEADS)
def test_windowed_streaming_equals_windowed_full_forward_at_10x_window(num_heads):
    """Token-by-token decoding with the model's own (sliding) cache, left-padded, against one windowed forward.

    SDPA only: eager computes the same mask (test_sdpa_matches_eager_with_window_and_truncation).
    """
    model = tiny_model(num_heads, "sdpa", attention_window=WINDOW)
    length = 10 * WINDOW
    input_ids, mask = padded_batch(length)
    full = model(input_ids, attention_mask=mask).logits
    out = model(input_ids[:, :1], attention_mask=mask[:, :1], use_cache=True)
    assert isinstance(output_cache(out).layers[0], DynamicSlidingWindowLayer)  # made by the model itself
    steps = [out.logits]
    for t in range(1, length):
        out = model(input_ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=output_cache(out))
        steps.append(out.logits)
        assert all(layer.keys.shape[-2] <= WINDOW - 1 for layer in output_cache(out).layers)  # constant memory
    real = mask.bool()
    assert_close(torch.cat(steps, dim=1)[real], full[real], atol=1e-5, rtol=1e-5)


def test_windowed_cache_without_a_mask_keeps_true_positions():
    model = tiny_model(4, "sdpa", attention_window=WINDOW)
    input_ids = torch.randint(3, 99, (1, 5 * WINDOW))
    full = model(input_ids).logits
    _, cache = model.prefill(input_ids[:, :-3], chunk_size=5)
    steps = [model(input_ids[:, t : t + 1], cache=cache).logits for t in range(5 * WINDOW - 3, 5 * WINDOW)]
    assert_close(torch.cat(steps, 1), full[:, -3:], atol=1e-5, rtol=1e-5)


def test_windowed_generate_equals_full_forward_argmax():
    model = tiny_model(6, "sdpa", attention_window=WINDOW)
    input_ids, mask = padded_batch(3 * WINDOW)
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=6 * WINDOW, min_new_tokens=6 * WINDOW, **GREEDY)
    assert isinstance(output_cache(out).layers[0], DynamicSlidingWindowLayer)
    assert output_cache(out).layers[0].keys.shape[-2] == WINDOW - 1
    full_mask = torch.cat([mask, torch.ones(2, 6 * WINDOW, dtype=torch.long)], dim=1)
    full = model(out.sequences, attention_mask=full_mask).logits[:, 3 * WINDOW - 1 : -1]
    assert_close(torch.stack(out.logits, dim=1), full, atol=1e-5, rtol=1e-5)


# --- 2. chunked prefill -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, WINDOW], ids=["full-cache", "windowed"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_chunked_prefill_then_decode_equals_one_shot(padded, window):
    model = tiny_model(6, "sdpa", attention_window=window)
    input_ids, mask = padded_batch(45, pad=7 if padded else 0)
    one_shot = model(input_ids, attention_mask=mask, use_cache=True)
    cache = DynamicCache(config=model.config)
    counts = record_key_counts(cache)
    last, cache = model.prefill(input_ids, attention_mask=mask, chunk_size=6, cache=cache)
    assert_close(last, one_shot.logits[:, -1], atol=1e-5, rtol=1e-5)
    if window is not None:  # attention never sees more than the kept keys plus one chunk
        assert max(counts) <= WINDOW - 1 + 6
    # Greedy decoding from both caches.
    caches, tokens = [output_cache(one_shot), cache], [one_shot.logits[:, -1], last]
    new_mask = mask
    for _ in range(10):
        nexts = [logits.argmax(-1, keepdim=True) for logits in tokens]
        assert torch.equal(nexts[0], nexts[1])
        new_mask = torch.cat([new_mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        tokens = [model(nexts[i], attention_mask=new_mask, cache=caches[i]).logits[:, -1] for i in (0, 1)]
        assert_close(tokens[1], tokens[0], atol=1e-5, rtol=1e-5)


def test_prefill_runs_each_forward_on_one_chunk():
    """Activations scale with chunk_size: no forward pass sees more than one chunk of the prompt."""
    model = tiny_model(4, "sdpa", attention_window=WINDOW)
    lengths = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
                                          with_kwargs=True)
    model.prefill(torch.randint(3, 99, (1, 100)), chunk_size=16)
    assert lengths == [16] * 6 + [4]
    with pytest.raises(ValueError, match="chunk_size=0"):
        model.prefill(torch.randint(3, 99, (1, 10)), chunk_size=0)


@pytest.mark.parametrize("cache_implementation", [None, "static"], ids=["dynamic", "static"])
@pytest.mark.parametrize("window", [None, WINDOW], ids=["full-cache", "windowed"])
def test_generate_with_prefill_chunk_size_equals_one_shot(window, cache_implementation):
    model = tiny_model(4, "sdpa", attention_window=window)
    input_ids, mask = left_padded([torch.randint(3, 99, (n,)) for n in (37, 22)])
    kwargs = dict(attention_mask=mask, max_new_tokens=20, min_new_tokens=20, **GREEDY)
    expected = model.generate(input_ids, **kwargs)
    chunked = model.generate(input_ids, prefill_chunk_size=10, cache_implementation=cache_implementation, **kwargs)
    assert_same_greedy(chunked, expected)


# --- 3. static cache --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_heads, window",
    [pytest.param(4, None, id="h4"), pytest.param(6, None, id="h6"), pytest.param(6, WINDOW, id="h6-windowed")],
)
def test_static_cache_generate_equals_dynamic_to_8x_train_len(num_heads, window):
    model = tiny_model(num_heads, "sdpa", attention_window=window)
    input_ids, mask = left_padded([torch.randint(3, 99, (n,)) for n in (20, 9)])
    new_tokens = 8 * TRAIN_LEN - input_ids.shape[1]
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **GREEDY)
    static = model.generate(input_ids, cache_implementation="static", **kwargs)
    assert isinstance(output_cache(static), StaticCache)
    dynamic = model.generate(input_ids, **kwargs)
    assert_same_greedy(static, dynamic)
    full_mask = torch.cat([mask, torch.ones(2, new_tokens, dtype=torch.long)], dim=1)
    full = model(static.sequences, attention_mask=full_mask).logits[:, input_ids.shape[1] - 1 : -1]
    assert_close(torch.stack(static.logits, dim=1), full, atol=1e-5, rtol=1e-5)


def test_static_cache_forward_takes_a_mask_padded_to_the_cache_length():
    model = tiny_model(4, "eager")
    input_ids, mask = padded_batch(30)
    full = model(input_ids, attention_mask=mask).logits
    cache = StaticCache(model.config, max_cache_len=48)
    out = model(input_ids[:, :20], attention_mask=mask[:, :20], cache=cache)  # unpadded mask works too
    steps = [out.logits]
    for t in range(20, 30):
        step_mask = model.create_masks_for_generate(model.config, torch.empty(2, 1, 0), mask[:, : t + 1], cache)
        assert step_mask.shape == (2, 48)  # 2-D, one shape for every step
        steps.append(model(input_ids[:, t : t + 1], attention_mask=step_mask, cache=cache).logits)
    assert_close(torch.cat(steps, 1)[mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoding", ["alibi", "none", "rotary"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_static_cache_without_a_mask_hides_its_empty_slots(implementation, encoding):
    """An unpadded prompt may go into a StaticCache with no mask (graph_generate's prefill does): chunks and single
    tokens see the filled slots only, also on SDPA's own causal kernel (the plain-causal baselines)."""
    model = tiny_model(4, implementation, position_encoding=encoding)
    input_ids = torch.randint(3, 99, (2, 30))
    full = model(input_ids).logits
    cache = StaticCache(model.config, max_cache_len=48)
    last, _ = model.prefill(input_ids[:, :20], chunk_size=8, cache=cache)  # 8 + 8 + 4, no mask
    assert_close(last, full[:, 19], atol=1e-5, rtol=1e-5)
    steps = [model(input_ids[:, t : t + 1], cache=cache).logits for t in range(20, 30)]
    assert_close(torch.cat(steps, 1), full[:, 20:], atol=1e-5, rtol=1e-5)


def _windowed_flash(q, k, v, dropout_p, softmax_scale, causal, alibi_slopes, window_size=(-1, -1)):
    """flash_attn_func semantics with `window_size`: query i sees key j when 0 <= i + sk - sq - j <= left window."""
    assert causal and dropout_p == 0.0
    sq, sk = q.shape[1], k.shape[1]
    distance = torch.arange(sq)[:, None] + sk - sq - torch.arange(sk)[None, :]  # (sq, sk), bottom-right aligned
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * softmax_scale - alibi_slopes[:, None, None] * distance.abs()
    hidden = (distance < 0) | ((distance > window_size[0]) if window_size[0] >= 0 else False)
    return torch.einsum("bhqk,bkhd->bqhd", scores.masked_fill(hidden, float("-inf")).softmax(-1), v)


def _windowed_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, alibi_slopes, **kw):
    outs = []
    for n in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[n], cu_q[n + 1]), slice(cu_k[n], cu_k[n + 1])
        outs.append(_windowed_flash(q[None, qs], k[None, ks], v[None, ks], dropout_p, softmax_scale, causal,
                                    alibi_slopes, **kw)[0])
    return torch.cat(outs)


def test_flash_call_with_window_and_static_cache_matches_eager(monkeypatch):
    """Our flash-attn call (window_size, varlen with a static cache's empty slots), against flash-attn's semantics."""
    monkeypatch.setattr(modeling, "flash_attn_func", _windowed_flash)
    monkeypatch.setattr(modeling, "flash_attn_varlen_func", _windowed_flash_varlen)
    input_ids, mask = padded_batch(30)
    real = mask.bool()
    for window in (None, WINDOW):
        model = tiny_model(4, "eager", attention_window=window)
        expected = model(input_ids, attention_mask=mask).logits
        model.config._attn_implementation = "flash_attention_2"  # transformers' own check wants the real package
        assert_close(model(input_ids, attention_mask=mask).logits[real], expected[real], atol=1e-5, rtol=1e-5)
        cache = StaticCache(model.config, max_cache_len=40)  # empty slots after the queries: varlen path
        steps = [model(input_ids[:, :25], attention_mask=mask[:, :25], cache=cache).logits]
        for t in range(25, 30):
            steps.append(model(input_ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits)
        assert_close(torch.cat(steps, 1)[real], expected[real], atol=1e-5, rtol=1e-5)


def test_compiled_static_decode_is_one_graph():
    """The decode step traces with fullgraph=True (no graph breaks); backend="eager" keeps this cheap on CPU."""
    torch._dynamo.reset()
    model = tiny_model(4, "sdpa")
    input_ids, mask = padded_batch(12)
    expected = model.generate(input_ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, **GREEDY)
    cache = StaticCache(model.config, max_cache_len=20)
    logits = model(input_ids, attention_mask=mask, cache=cache).logits[:, -1]
    step = torch.compile(model, fullgraph=True, backend="eager", dynamic=False)
    tokens = [logits.argmax(-1, keepdim=True)]
    for _ in range(7):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        step_mask = model.create_masks_for_generate(model.config, torch.empty(2, 1, 0), mask, cache)
        logits = step(tokens[-1], attention_mask=step_mask, cache=cache).logits[:, -1]
        tokens.append(logits.argmax(-1, keepdim=True))
    assert torch.equal(torch.cat(tokens, 1), expected.sequences[:, 12:])


# --- 4. CPU: never eager by default; SDPA in bounded query chunks ------------------------------------------------


def test_eager_is_never_the_default(tmp_path):
    tiny_model(4, "eager").save_pretrained(tmp_path)  # the saved config must not pin a backend
    expected = "flex_attention" if torch.cuda.is_available() else "sdpa"
    for model in (AlibiForCausalLM(tiny_config()), AutoModelForCausalLM.from_config(tiny_config()),
                  AutoModelForCausalLM.from_pretrained(tmp_path)):
        assert model.config._attn_implementation == expected


def test_4096_tokens_on_sdpa_in_small_chunks_equal_eager_on_a_prefix(monkeypatch):
    length, prefix, heads = 4096, 256, 4
    budget = 4 * heads * length * 64  # 64 query rows per SDPA call at the full key length
    monkeypatch.setattr(modeling, "SDPA_BIAS_BYTES", budget)
    biggest = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(query, key, value, attn_mask=None, **kwargs):
        biggest.append(attn_mask.numel() * 4)  # fp32 bias bytes
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", recording_sdpa)
    input_ids = torch.randint(3, 99, (1, length))
    with torch.no_grad():
        long = tiny_model(heads, "sdpa")(input_ids, logits_to_keep=torch.arange(prefix)).logits
        short = tiny_model(heads, "eager")(input_ids[:, :prefix]).logits
    assert max(biggest) <= budget and len(biggest) == 2 * length // 64
    assert_close(long, short, atol=1e-5, rtol=1e-5)


# --- 5. ALiBi truncation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_truncation_is_negligible_at_large_t_and_visible_at_small_t(num_heads, implementation):
    input_ids, mask = padded_batch(200)
    real = mask.bool()
    base = tiny_model(num_heads, implementation)(input_ids, attention_mask=mask).logits
    unset = tiny_model(num_heads, implementation, alibi_truncation=None)(input_ids, attention_mask=mask).logits
    assert torch.equal(unset, base)
    large = tiny_model(num_heads, implementation, alibi_truncation=20.0)(input_ids, attention_mask=mask).logits
    assert (large - base)[real].abs().max() < 1e-6  # dropped keys weigh at most e^-20 each
    small = tiny_model(num_heads, implementation, alibi_truncation=1.0)(input_ids, attention_mask=mask).logits
    assert (small - base)[real].abs().max() > 1e-3


def test_truncation_on_flash_names_the_fix(monkeypatch):
    monkeypatch.setattr(modeling, "flash_attn_func", _reference_flash)
    model = tiny_model(4, "eager", alibi_truncation=20.0)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match='attn_implementation="flex_attention"'):
        model(torch.randint(3, 99, (1, 8)))


# --- GPU: flex/flash windows and truncation, compiled static decode ----------------------------------------------


GPU_OPTIONS = [pytest.param(dict(attention_window=100), id="window100"),
               pytest.param(dict(alibi_truncation=4.0), id="trunc4")]


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", GPU_OPTIONS)
@pytest.mark.parametrize("implementation", ["flex_attention", "sdpa", "flash_attention_2"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_gpu_window_and_truncation_match_eager(num_heads, implementation, overrides):
    if implementation == "flash_attention_2":
        pytest.importorskip("flash_attn")
        if "alibi_truncation" in overrides:
            pytest.skip("flash-attn has no per-head window (refusal tested on CPU)")
    reference, fast = model_pair(num_heads, implementation, **overrides)
    input_ids, mask = batch_with_padding(True, length=600)
    input_ids, mask = input_ids.cuda(), mask.cuda()
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=mask).logits
        actual = fast(input_ids, attention_mask=mask).logits
    assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", ["flex_attention", "flash_attention_2"])
def test_gpu_windowed_chunked_prefill_matches_eager(implementation):
    """Chunks of 128 >= FLEX_MIN_QUERY_LEN take the flex kernel against a sliding cache of kept keys."""
    if implementation == "flash_attention_2":
        pytest.importorskip("flash_attn")
    reference, fast = model_pair(4, implementation, attention_window=100)
    input_ids, mask = (t.cuda() for t in padded_batch(1000, pad=37))
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=mask).logits[:, -1]
        last, cache = fast.prefill(input_ids, attention_mask=mask, chunk_size=128)
    assert cache.layers[0].keys.shape[-2] == 99
    assert_close(last, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_compiled_static_generate_equals_dynamic():
    """On CUDA generate() compiles the decode step (mode="reduce-overhead") for a static cache."""
    _, model = model_pair(4, "sdpa")
    input_ids, mask = (t.cuda() for t in padded_batch(40))
    kwargs = dict(attention_mask=mask, max_new_tokens=8 * TRAIN_LEN, min_new_tokens=8 * TRAIN_LEN, **GREEDY)
    static = model.generate(input_ids, cache_implementation="static", **kwargs)
    assert hasattr(model, "_compiled_call")  # the compiled path really ran
    dynamic = model.generate(input_ids, **kwargs)
    assert torch.equal(static.sequences, dynamic.sequences)
    assert_close(torch.stack(static.logits), torch.stack(dynamic.logits), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", [pytest.param({}, id="full"), *GPU_OPTIONS])
def test_gpu_unpadded_chunked_prefill_matches_eager(overrides):
    """Unpadded chunks take flex with block masks built from block distance ranges, at a new offset each chunk."""
    reference, fast = model_pair(4, "flex_attention", **overrides)
    input_ids = torch.randint(3, 99, (1, 1000), device="cuda")
    with torch.no_grad():
        expected = reference(input_ids).logits[:, -1]
        last, _ = fast.prefill(input_ids, chunk_size=192)
    assert_close(last, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_bf16_log_probs_at_65536_match_fp32():
    """No growth of bf16 error with position: the bias is an exact integer distance times a slope, in fp32.

    A bias built as slope * absolute position in bf16 (BLOOM) is off by up to 128 at position 65,536 for the
    steepest head; its attention, and so its log-probs, would drift from fp32 as positions grow.
    """
    length, n = 65_537, 256
    config = tiny_config(8, hidden_size=512, intermediate_size=2048, num_hidden_layers=4, vocab_size=1000)
    reference = AlibiForCausalLM(config).cuda().eval()  # fp32, the default backend (flex)
    model = AlibiForCausalLM(config).cuda().eval().to(torch.bfloat16)
    model.load_state_dict(reference.state_dict())
    input_ids = torch.randint(3, 1000, (1, length), device="cuda")
    keep = torch.cat([torch.arange(n), torch.arange(length - n, length)]).cuda()  # first and last 256 positions
    with torch.no_grad():
        expected = reference(input_ids, logits_to_keep=keep).logits.float().log_softmax(-1)
        actual = model(input_ids, logits_to_keep=keep).logits.float().log_softmax(-1)
    error = (actual - expected).abs()[0]  # (2n, vocab)
    first, last = error[:n], error[n:]
    assert_close(actual, expected, atol=5e-2, rtol=5e-2)  # bf16 tolerance
    assert last.mean() < 1.5 * first.mean() + 1e-4, (first.mean(), last.mean())
    assert last.max() < 1.5 * first.max() + 1e-3, (first.max(), last.max())
