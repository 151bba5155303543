"""graph_generate: the static-cache, one-CUDA-graph-per-token decoder, against generate()."""

import pytest
import torch

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
    import modeling_alibi.generation.decoding as decoding

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


def test_new_weights_get_a_new_decoder():
    """A kept graph reads the parameters it captured: after model.half() (new storage) the decoder is rebuilt."""
    import modeling_alibi.generation.decoding as decoding

    model = tiny_model(4, "sdpa")
    input_ids = torch.randint(3, 99, (1, 6))
    graph_generate(model, input_ids, 4)
    first = decoding._DECODERS[id(model)]
    model.double()
    out = graph_generate(model, input_ids, 4)
    assert decoding._DECODERS[id(model)] is not first and out.shape == (1, 10)
