"""graph_generate: the static-cache, one-CUDA-graph-per-token decoder, against generate()."""

import pytest
import torch
from torch.testing import assert_close

from modeling_alibi.generation import graph_generate

from conftest import model_pair, tiny_model
from test_generation import left_padded

GREEDY = dict(do_sample=False, pad_token_id=0)


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return left_padded([torch.randint(3, 99, (n,)) for n in (20, 13, 7)])


@pytest.mark.parametrize("overrides", [{}, dict(attention_window=12)], ids=["full", "window12"])
def test_greedy_equals_generate(overrides):
    """Past the training length (16) and, windowed, past the window: the same tokens as generate()."""
    model = tiny_model(4, "sdpa", **overrides)
    input_ids, mask = prompts()
    expected = model.generate(input_ids, attention_mask=mask, max_new_tokens=40, min_new_tokens=40, **GREEDY)
    actual = graph_generate(model, input_ids, 40, attention_mask=mask, prefill_chunk_size=8)
    assert torch.equal(actual, expected)


def test_top_k_1_sampling_is_greedy_and_sampling_varies():
    model = tiny_model(4, "sdpa")
    input_ids, mask = prompts()
    greedy = graph_generate(model, input_ids, 12, attention_mask=mask)
    assert torch.equal(graph_generate(model, input_ids, 12, attention_mask=mask, do_sample=True, top_k=1), greedy)
    torch.manual_seed(0)
    sampled = graph_generate(model, input_ids, 12, attention_mask=mask, do_sample=True, temperature=5.0)
    assert sampled.shape == greedy.shape and not torch.equal(sampled, greedy)


def test_rows_stop_at_eos_and_pad():
    model = tiny_model(4, "sdpa")
    input_ids, mask = prompts()
    free = graph_generate(model, input_ids, 10, attention_mask=mask)
    eos = int(free[0, input_ids.shape[1] + 2])  # row 0's third new token
    stopped = graph_generate(model, input_ids, 10, attention_mask=mask, eos_token_id=eos, pad_token_id=0)
    new = stopped[0, input_ids.shape[1]:]
    first = int((new == eos).nonzero()[0])
    assert first <= 2 and torch.all(new[first + 1:] == 0)


def test_batch_1_linear_layers_decompose_to_the_same_products():
    """The compiled step's batch-1 matmuls become a multiply and an fp32 sum (decoding._row_matmul): equal to
    addmm and mm within rounding, and other shapes go to the fallback (inductor's own decomposition)."""
    from modeling_alibi.alibi_decoding import _row_matmul

    torch.manual_seed(0)
    row, matrix, bias = torch.randn(1, 64), torch.randn(64, 48), torch.randn(48)
    passed_on = []
    decomposed = _row_matmul(lambda *args, **kwargs: passed_on.append(args) or NotImplemented)
    assert_close(decomposed(bias, row, matrix), torch.addmm(bias, row, matrix))
    scaled = dict(beta=0.5, alpha=2.0)
    assert_close(decomposed(bias, row, matrix, **scaled), torch.addmm(bias, row, matrix, **scaled))
    assert_close(decomposed(row, matrix), row @ matrix)
    half = decomposed(row.bfloat16(), matrix.bfloat16())
    assert half.dtype == torch.bfloat16
    assert_close(half, (row.bfloat16().float() @ matrix.bfloat16().float()).bfloat16())  # fp32 sum, one rounding
    assert decomposed(torch.randn(2, 64), matrix) is NotImplemented and len(passed_on) == 1


@pytest.mark.parametrize("batch", [1, 3])
def test_compiled_step_equals_eager_step(batch):
    """The inductor step (batch 1: each linear layer one reduction kernel) gives the eager step's tokens."""
    model = tiny_model(4, "sdpa")
    input_ids, mask = prompts()
    input_ids, mask = input_ids[:batch], mask[:batch]
    eager = graph_generate(model, input_ids, 6, attention_mask=mask, compile=False)
    compiled = graph_generate(model, input_ids, 6, attention_mask=mask, compile=True)
    assert torch.equal(compiled, eager)


def test_a_freed_cache_keeps_the_compiled_step(monkeypatch):
    """generate() frees a large cache after its call, and `release_decoders()` frees everything: the next call
    builds a new decoder (and a new torch.compile wrapper) but reuses the compiled step instead of recompiling."""
    from torch._dynamo.utils import counters

    from modeling_alibi import alibi_decoding as decoding

    monkeypatch.setattr(decoding, "KEEP_CACHE_BYTES", 0)  # every cache is large
    model = tiny_model(4, "sdpa")
    input_ids = torch.randint(3, 99, (2, 6))
    call = dict(input_ids=input_ids, max_new_tokens=4, eos_token_id=None, pad_token_id=0, attention_mask=None,
                prefill_chunk_size=64, max_cache_len=16, compile=True, cuda_graph=False)
    first = decoding.graph_generate_for(model, call)
    assert not decoding._DECODERS  # the cache was freed
    compiled = counters["stats"]["unique_graphs"]
    assert torch.equal(decoding.graph_generate_for(model, call), first)
    decoding.release_decoders()
    assert torch.equal(decoding.graph_generate_for(model, call), first)
    assert counters["stats"]["unique_graphs"] == compiled  # neither call compiled again


def test_bad_arguments_are_named():
    model = tiny_model(4, "sdpa")
    input_ids = torch.randint(3, 99, (1, 5))
    with pytest.raises(ValueError, match="max_new_tokens"):
        graph_generate(model, input_ids, 0)
    with pytest.raises(ValueError, match="temperature"):
        graph_generate(model, input_ids, 4, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="cuda_graph=True"):
        graph_generate(model, input_ids, 4, cuda_graph=True)
    with pytest.raises(ValueError, match="eval"):
        graph_generate(model.train(), input_ids, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True], ids=["eager_step", "compiled_step"])
def test_gpu_graph_generate_equals_generate(compile):
    """The captured step replays the same computation: greedy tokens equal generate()'s, padded rows included,
    on the first call (capture) and on a second call that replays the kept graph with another prompt."""
    _, model = model_pair(4, "flex_attention")
    input_ids, mask = (t.cuda() for t in prompts())
    for ids, attention in ((input_ids, mask), (input_ids[:, 4:], mask[:, 4:])):
        expected = model.generate(ids, attention_mask=attention, max_new_tokens=64, min_new_tokens=64, **GREEDY)
        actual = graph_generate(model, ids, 64, attention_mask=attention, compile=compile, max_cache_len=100)
        assert torch.equal(actual, expected)


def test_second_call_reuses_the_decoder_and_matches():
    """Reuse resets the cache in place: a second call with a shorter prompt equals generate() on it."""
    from modeling_alibi import alibi_decoding as decoding

    model = tiny_model(4, "sdpa")
    input_ids, mask = prompts()
    graph_generate(model, input_ids, 10, attention_mask=mask, max_cache_len=40)
    decoder = decoding._DECODERS[id(model)]
    shorter_ids, shorter_mask = input_ids[:, 5:], mask[:, 5:]
    again = graph_generate(model, shorter_ids, 12, attention_mask=shorter_mask, max_cache_len=40)
    assert decoding._DECODERS[id(model)] is decoder
    expected = model.generate(shorter_ids, attention_mask=shorter_mask, max_new_tokens=12, min_new_tokens=12, **GREEDY)
    assert torch.equal(again, expected)
    decoding.release_decoders()
    assert not decoding._DECODERS


def test_prompt_into_an_empty_static_cache_needs_no_length_read():
    """Under `empty_static_cache()` (the graph decoder's one-chunk prompt, which it captures as a CUDA graph) an
    unpadded prompt takes the unpadded path without reading the cache's length, a sync a capture forbids."""
    from transformers import StaticCache

    from modeling_alibi.alibi_mask import build_attention_mask, empty_static_cache

    class NoRead:
        def __int__(self):
            raise AssertionError("the cache length was read from the device")

    model = tiny_model(4, "sdpa")
    cache = StaticCache(config=model.config, max_cache_len=32)
    hidden = torch.zeros(2, 5, model.config.hidden_size)
    expected = build_attention_mask(model.config, None, cache, hidden)  # a fresh cache: the length 0 is an int
    cache.get_seq_length = lambda *args: NoRead()
    with pytest.raises(AssertionError, match="was read"):
        build_attention_mask(model.config, None, cache, hidden)
    with empty_static_cache():
        actual = build_attention_mask(model.config, None, cache, hidden)
    assert actual.key_padding is None and actual.offset == 0 == expected.offset
    assert torch.equal(actual.query_positions, expected.query_positions)
    assert torch.equal(actual.key_positions, expected.key_positions) and actual.key_positions.shape == (2, 5)


def test_a_prompt_capture_that_fails_leaves_prompts_eager(monkeypatch, caplog):
    """A backend that cannot be captured: the repeated shape's call logs it, prefills eagerly with the same
    logits, and the decoder tries no further capture."""
    from modeling_alibi import alibi_decoding as decoding

    model = tiny_model(4, "sdpa")
    input_ids = torch.randint(3, 99, (1, 6))
    graph_generate(model, input_ids, 4, max_cache_len=16)
    decoder = decoding._DECODERS[id(model)]
    expected = decoder.start(input_ids, None, 64).clone()
    attempts = []

    def fail(*args, **kwargs):
        attempts.append(args)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(decoding, "_captured", fail)
    decoder.last_prompt = None
    assert_close(decoder.start(input_ids, None, 64, graph=True), expected)  # a shape's first call: eager
    assert not attempts
    with caplog.at_level("WARNING"):
        assert_close(decoder.start(input_ids, None, 64, graph=True), expected)  # its second: capture, failed
    assert len(attempts) == 1 and "could not be captured" in caplog.text
    assert decoder.prefill is None and not decoder.capture_prompts
    decoder.start(input_ids, None, 64, graph=True)
    assert len(attempts) == 1  # no second try
    decoding.release_decoders()


@pytest.mark.gpu
def test_gpu_repeated_prompt_shape_is_captured_and_equals_transformers_loop():
    """A prompt shape's second call captures the prompt as a CUDA graph and later calls replay it with new
    tokens: every call gives transformers' tokens. Padded prompts and prompts over one chunk stay eager."""
    from modeling_alibi import alibi_decoding as decoding

    model = tiny_model(4, "sdpa").to("cuda", torch.bfloat16).eval()
    torch.manual_seed(0)
    calls = [torch.randint(3, 99, (2, 24), device="cuda") for _ in range(4)]
    for i, ids in enumerate(calls):
        got = graph_generate(model, ids, 20, prefill_chunk_size=64, max_cache_len=64)  # one decoder throughout
        decoder = decoding._DECODERS[id(model)]
        assert (decoder.prefill is not None) == (i >= 1), i  # eager, then captured, then replayed
        if i == 1:
            captured = decoder.prefill
        assert i < 2 or decoder.prefill is captured
        assert torch.equal(got, transformers_loop(model, ids, max_new_tokens=20, min_new_tokens=20, **GREEDY))
    mask = torch.ones_like(calls[0])
    mask[1, :5] = 0  # the captured shape, padded: eager
    got = graph_generate(model, calls[0], 20, attention_mask=mask, prefill_chunk_size=64, max_cache_len=64)
    expected = transformers_loop(model, calls[0], attention_mask=mask, max_new_tokens=20, min_new_tokens=20, **GREEDY)
    assert torch.equal(got, expected) and decoding._DECODERS[id(model)].prefill is captured
    long_prompt = torch.randint(3, 99, (2, 40), device="cuda")  # 80 tokens over a chunk of 64: eager
    for _ in range(2):
        got = graph_generate(model, long_prompt, 8, prefill_chunk_size=64, max_cache_len=64)
    assert decoding._DECODERS[id(model)].prefill is captured
    assert torch.equal(got, transformers_loop(model, long_prompt, max_new_tokens=8, min_new_tokens=8, **GREEDY))
    decoding.release_decoders()


@pytest.mark.gpu
def test_gpu_captured_prompt_on_cudnn_equals_transformers_loop(monkeypatch):
    """A model cuDNN's fused ALiBi serves (bf16, head dim 64): the prompt runs on cuDNN when eager and when captured,
    its replays call no Python, and every call gives transformers' tokens. A replay's logits are the eager fill's."""
    from modeling_alibi import alibi_attention, alibi_cudnn
    from modeling_alibi import alibi_decoding as decoding

    if not alibi_cudnn._available():
        pytest.skip("needs nvidia-cudnn-frontend (alibi-lm[cudnn])")
    kernel, calls = alibi_attention.alibi_cudnn_attention, []
    monkeypatch.setattr(alibi_attention, "alibi_cudnn_attention", lambda *args: calls.append(1) or kernel(*args))
    model = tiny_model(4, "sdpa", hidden_size=256, intermediate_size=512).to("cuda", torch.bfloat16).eval()
    torch.manual_seed(0)
    prompts = [torch.randint(3, 99, (2, 48), device="cuda") for _ in range(3)]
    for i, ids in enumerate(prompts):  # eager, then captured, then replayed
        calls.clear()
        got = graph_generate(model, ids, 12, prefill_chunk_size=128, max_cache_len=128)
        assert (len(calls) > 0) == (i < 2), (i, len(calls))
        assert (decoding._DECODERS[id(model)].prefill is not None) == (i >= 1), i
        assert torch.equal(got, transformers_loop(model, ids, max_new_tokens=12, min_new_tokens=12, **GREEDY)), i
    decoder = decoding._DECODERS[id(model)]
    replayed = decoder.start(prompts[0], None, 128, graph=True).clone()
    assert_close(replayed, decoder.fill(prompts[0], None, 128))
    decoding.release_decoders()


def test_new_weights_get_a_new_decoder():
    """A kept graph reads the parameters it captured: after model.half() (new storage) the decoder is rebuilt."""
    from modeling_alibi import alibi_decoding as decoding

    model = tiny_model(4, "sdpa")
    input_ids = torch.randint(3, 99, (1, 6))
    graph_generate(model, input_ids, 4)
    first = decoding._DECODERS[id(model)]
    model.double()
    out = graph_generate(model, input_ids, 4)
    assert decoding._DECODERS[id(model)] is not first and out.shape == (1, 10)


class _Doubled(torch.nn.Linear):
    """A projection with its own forward, as a LoRA or quantized layer has: twice the plain output."""

    def forward(self, x):
        return 2 * super().forward(x)


def _doubled(linear: torch.nn.Linear) -> _Doubled:
    doubled = _Doubled(linear.in_features, linear.out_features, bias=linear.bias is not None)
    doubled.load_state_dict(linear.state_dict())
    return doubled


def test_steps_use_the_stacked_projection_and_prefill_the_three():
    """Decode steps run one stacked q/k/v projection (`fused_qkv`), prefill the model's own three; nothing stays set."""
    from modeling_alibi import alibi_decoding as decoding

    model = tiny_model(4, "sdpa")
    attention = model.model.layers[0].self_attn
    calls = []
    attention.q_proj.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    input_ids, mask = prompts()
    out = graph_generate(model, input_ids, 8, attention_mask=mask, prefill_chunk_size=64)
    assert calls == [input_ids.shape[1]]  # the prompt only: the 7 steps did not call q_proj
    assert attention.fused_qkv is None and "fused_qkv" not in vars(attention)
    assert torch.equal(out, model.generate(input_ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                                           **GREEDY))
    decoding.release_decoders()


def test_the_stacked_projection_gives_the_model_s_logits():
    from modeling_alibi import alibi_decoding as decoding

    model = tiny_model(4, "sdpa")
    stacked = decoding._stacked_projections(model)
    assert len(stacked) == model.config.num_hidden_layers
    decoding._restack(stacked)
    input_ids = torch.randint(3, 99, (2, 9))
    expected = model(input_ids).logits
    with decoding._fused_projections(stacked):
        actual = model(input_ids).logits
    assert_close(actual, expected)


def test_weights_changed_in_place_reach_a_kept_decoder():
    """The stacked projection is copied from the weights at every call: an in-place update (an optimizer step)
    is seen by the next call, which reuses the decoder."""
    from modeling_alibi import alibi_decoding as decoding

    model = tiny_model(4, "sdpa")
    input_ids, mask = prompts()
    before = graph_generate(model, input_ids, 10, attention_mask=mask)
    decoder = decoding._DECODERS[id(model)]
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in model.model.layers:
            for projection in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.weight.normal_(0.0, 0.5)  # new values, same storage
                projection.bias.normal_(0.0, 0.5)
    after = graph_generate(model, input_ids, 10, attention_mask=mask)
    assert decoding._DECODERS[id(model)] is decoder and not torch.equal(after, before)
    expected = model.generate(input_ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, **GREEDY)
    assert torch.equal(after, expected)
    decoding.release_decoders()


def test_a_module_replaced_after_a_call_gets_a_new_decoder():
    """An adapter injected after a call (a projection replaced by a module with its own forward): the kept decoder,
    its stacked projections and its graph would run the old module, so the next call builds a new one."""
    from modeling_alibi import alibi_decoding as decoding

    model = tiny_model(4, "sdpa")
    input_ids, mask = prompts()
    graph_generate(model, input_ids, 10, attention_mask=mask)
    first = decoding._DECODERS[id(model)]
    attention = model.model.layers[0].self_attn
    attention.v_proj = _doubled(attention.v_proj)
    actual = graph_generate(model, input_ids, 10, attention_mask=mask)
    assert decoding._DECODERS[id(model)] is not first
    expected = model.generate(input_ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, **GREEDY)
    assert torch.equal(actual, expected)
    decoding.release_decoders()


def test_projections_that_are_not_plain_linear_keep_their_forward():
    """A wrapped projection (LoRA, quantized layers: a subclass with its own forward) is not stacked."""
    from modeling_alibi import alibi_decoding as decoding

    model = tiny_model(4, "sdpa")
    attention = model.model.layers[1].self_attn
    attention.q_proj = _doubled(attention.q_proj)
    assert decoding._stacked_projections(model) == []
    input_ids, mask = prompts()
    expected = model.generate(input_ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, **GREEDY)
    assert torch.equal(graph_generate(model, input_ids, 10, attention_mask=mask), expected)
    decoding.release_decoders()


# ------------------------------------------------------------------ generate()'s fast path: plain greedy calls


@pytest.fixture
def graph_calls(monkeypatch) -> list[dict]:
    """Lets plain greedy generate() take the graph path on the CPU too (as an ordinary loop), and records it."""
    from modeling_alibi import alibi_decoding, alibi_generation

    monkeypatch.setattr(alibi_decoding, "GRAPH_GENERATE_DEVICES", ("cuda", "cpu"))
    calls, original = [], alibi_generation.graph_generate_for

    def spy(model, call):
        calls.append(call)
        return original(model, call)

    monkeypatch.setattr(alibi_generation, "graph_generate_for", spy)
    yield calls
    decoding_release()


def decoding_release():
    from modeling_alibi.alibi_decoding import release_decoders

    release_decoders()


def transformers_loop(model, input_ids, **kwargs):
    return model.generate(input_ids, cache_implementation="dynamic", **kwargs)  # a cache kind: transformers' loop


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_new_tokens=30),
        dict(max_length=40),  # generate's other length rule: prompt + new = 40
        dict(max_new_tokens=30, eos_token_id="third"),  # rows end early, padded after their end token
        dict(max_new_tokens=30, eos_token_id="third-list"),  # one end token given as a list
        dict(max_new_tokens=30, no_mask=True),  # the pad token marks padding: generate infers the mask
        dict(max_new_tokens=30, ones_mask=True),  # unpadded rows with a mask of ones (pipelines pass one)
        dict(max_new_tokens=30, temperature=0.7, top_p=0.9),  # sampling warpers: ignored by greedy search
    ],
    ids=["new", "max_length", "eos", "eos_list", "inferred_mask", "ones_mask", "ignored_warpers"],
)
def test_plain_greedy_generate_is_graph_decoded_and_equals_transformers_loop(graph_calls, kwargs):
    model = tiny_model(4, "sdpa").eval()
    input_ids, mask = prompts()
    kwargs = dict(kwargs)
    if kwargs.pop("no_mask", False):
        mask = None
    elif kwargs.pop("ones_mask", False):
        input_ids = input_ids[:, -7:]  # the shortest row is 7 tokens: no padding left
        mask = kwargs["attention_mask"] = torch.ones_like(input_ids)
    else:
        kwargs["attention_mask"] = mask
    if "eos_token_id" in kwargs:
        free = model.generate(input_ids, attention_mask=mask, max_new_tokens=5)
        eos = int(free[0, input_ids.shape[1] + 2])  # row 0's third new token
        kwargs["eos_token_id"] = [eos] if kwargs["eos_token_id"] == "third-list" else eos
    graph_calls.clear()
    got = model.generate(input_ids, **kwargs)
    assert len(graph_calls) == 1
    expected = transformers_loop(model, input_ids, **kwargs)
    assert len(graph_calls) == 1  # the call with a cache kind ran transformers' loop
    assert torch.equal(got, expected)


def test_a_generation_config_object_takes_the_fast_path(graph_calls):
    """A GenerationConfig given whole, as pipelines pass it (they are tested in test_pipeline.py)."""
    from transformers import GenerationConfig

    model = tiny_model(4, "sdpa").eval()
    input_ids, mask = prompts()
    config = GenerationConfig(max_new_tokens=12, eos_token_id=2, pad_token_id=1, bos_token_id=0)
    got = model.generate(input_ids, attention_mask=mask, generation_config=config)
    assert len(graph_calls) == 1
    assert torch.equal(got, transformers_loop(model, input_ids, attention_mask=mask, generation_config=config))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(do_sample=True),
        dict(num_beams=2),
        dict(min_new_tokens=12),
        dict(repetition_penalty=1.3),
        dict(cache_implementation="static"),
        dict(output_scores=True, return_dict_in_generate=True),
        dict(eos_token_id=[2, 5]),
        dict(logits_processor="processor"),
        dict(stopping_criteria="criteria"),
        dict(train=True),
    ],
    ids=lambda kwargs: next(iter(kwargs)),
)
def test_other_generate_calls_run_transformers_loop(graph_calls, kwargs):
    from transformers import LogitsProcessorList, StoppingCriteriaList

    model = tiny_model(4, "sdpa").eval()
    input_ids, mask = prompts()
    kwargs = dict(kwargs)
    if kwargs.pop("train", False):
        model.train()
    if "logits_processor" in kwargs:
        kwargs["logits_processor"] = LogitsProcessorList()
    if "stopping_criteria" in kwargs:
        kwargs["stopping_criteria"] = StoppingCriteriaList()
    model.generate(input_ids, attention_mask=mask, max_new_tokens=12, **kwargs)
    assert graph_calls == []


def test_generate_cache_sizes_are_bucketed():
    from modeling_alibi.alibi_decoding import _cache_slots

    assert [_cache_slots(n) for n in (1, 256, 257, 2048 + 128, 65536 + 128)] == [256, 256, 512, 2304, 73728]
    for n in range(1, 20000, 37):
        assert 0 <= _cache_slots(n) - n < max(256, n / 8)  # at most an eighth unused, past 2,048 tokens


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_plain_generate_is_graph_decoded_and_equals_transformers_loop(dtype):
    """On CUDA with no extra argument: the compiled graph path, the same tokens as the dynamic-cache loop, padded
    rows and rows that end early included, on a first (compile, capture) and a second (replay) call."""
    from modeling_alibi import alibi_decoding

    model = tiny_model(4, "sdpa").to("cuda", dtype).eval()
    input_ids, mask = (t.cuda() for t in prompts())
    for ids, attention in ((input_ids, mask), (input_ids[:, 4:], mask[:, 4:])):
        got = model.generate(ids, attention_mask=attention, max_new_tokens=48)
        assert id(model) in alibi_decoding._DECODERS  # the graph path ran and kept its decoder
        assert torch.equal(got, transformers_loop(model, ids, attention_mask=attention, max_new_tokens=48))
    eos = int(got[1, ids.shape[1] + 3])
    got = model.generate(input_ids, attention_mask=mask, max_new_tokens=48, eos_token_id=eos)
    expected = transformers_loop(model, input_ids, attention_mask=mask, max_new_tokens=48, eos_token_id=eos)
    assert torch.equal(got, expected)
    alibi_decoding.release_decoders()
