"""Cached decoding equals the full forward far past the training length; padded batches equal single rows."""

import pytest
import torch
from torch.testing import assert_close

from modeling_alibi.modeling_alibi import output_cache

from conftest import tiny_model

HEADS = [pytest.param(4, id="h4"), pytest.param(6, id="h6")]
BACKENDS = ["eager", "sdpa"]
TRAIN_LEN = 16  # tiny_config's train_seq_len


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize("num_heads", HEADS)
def test_token_by_token_decoding_equals_full_forward_to_8x_train_len(num_heads, implementation):
    model = tiny_model(num_heads, implementation)
    length = 8 * TRAIN_LEN
    input_ids = torch.randint(3, 99, (2, length))
    full = model(input_ids).logits
    out = model(input_ids[:, :1], use_cache=True)
    steps = [out.logits]
    for t in range(1, length):
        out = model(input_ids[:, t : t + 1], cache=output_cache(out), use_cache=True)
        steps.append(out.logits)
    assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoding", ["sinusoidal", "rotary", "learned", "none"])
def test_baselines_decode_with_the_cache_too(encoding):
    model = tiny_model(4, position_encoding=encoding, max_position_embeddings=64)
    input_ids = torch.randint(3, 99, (2, 40))
    mask = torch.ones_like(input_ids)
    mask[1, :6] = 0
    full = model(input_ids, attention_mask=mask).logits
    out = model(input_ids[:, :25], attention_mask=mask[:, :25], use_cache=True)
    steps = [out.logits]
    for t in range(25, 40):
        out = model(input_ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=output_cache(out))
        steps.append(out.logits)
    assert_close(torch.cat(steps, 1)[mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)


def left_padded(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), 1)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq) :] = seq
        mask[row, width - len(seq) :] = 1
    return input_ids, mask


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize("num_heads", HEADS)
def test_left_padded_rows_equal_single_sequences(num_heads, implementation):
    model = tiny_model(num_heads, implementation)
    sequences = [torch.randint(3, 99, (n,)) for n in (37, 20, 5)]
    input_ids, mask = left_padded(sequences)
    batched = model(input_ids, attention_mask=mask).logits
    for row, seq in enumerate(sequences):
        single = model(seq[None]).logits[0]
        assert_close(batched[row, -len(seq) :], single, atol=1e-5, rtol=1e-5)


GENERATE_MODES = {
    "greedy": dict(do_sample=False),
    "sampling-top1": dict(do_sample=True, top_k=1),  # sampling machinery, deterministic outcome
    "beam": dict(do_sample=False, num_beams=3),
}


@pytest.mark.parametrize("mode", GENERATE_MODES)
@pytest.mark.parametrize("implementation", BACKENDS)
def test_batched_generate_equals_per_sequence_generate(implementation, mode):
    model = tiny_model(6, implementation)
    sequences = [torch.randint(3, 99, (n,)) for n in (23, 9, 14)]
    input_ids, mask = left_padded(sequences)
    kwargs = dict(max_new_tokens=40, min_new_tokens=40, pad_token_id=1, **GENERATE_MODES[mode])
    batched = model.generate(input_ids, attention_mask=mask, **kwargs)
    for row, seq in enumerate(sequences):
        single = model.generate(seq[None], attention_mask=torch.ones(1, len(seq), dtype=torch.long), **kwargs)
        assert torch.equal(batched[row, input_ids.shape[1] :], single[0, len(seq) :]), row


def test_generation_runs_far_past_train_len_with_no_cap():
    """Prompt 3x the training length, output to 20x: greedy tokens are the full forward's argmax."""
    model = tiny_model(4, "sdpa")
    prompt = torch.randint(3, 99, (1, 3 * TRAIN_LEN))
    generated = model.generate(prompt, max_length=20 * TRAIN_LEN, min_length=20 * TRAIN_LEN, do_sample=False)
    assert generated.shape == (1, 20 * TRAIN_LEN)
    logits = model(generated).logits
    assert torch.equal(logits[0, prompt.shape[1] - 1 : -1].argmax(-1), generated[0, prompt.shape[1] :])


def test_sampling_generate_runs_on_a_padded_batch():
    model = tiny_model(4, "sdpa")
    input_ids, mask = left_padded([torch.randint(3, 99, (n,)) for n in (30, 3)])
    torch.manual_seed(0)
    out = model.generate(input_ids, attention_mask=mask, do_sample=True, temperature=0.9, top_p=0.9,
                         max_new_tokens=50, min_new_tokens=50, pad_token_id=1)
    assert out.shape == (2, 80)
