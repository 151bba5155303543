"""transformers' model contracts, on whichever release is installed (CI runs the floor and the newest).

Every generation path is checked against a full forward without a cache: at each generated step, the logits
generate() reports (`output_logits=True`) equal the no-cache forward's logits at that position. A cache that
is silently ignored (transformers 5.24 renamed `past_key_values` to `cache`) fails these at the second token.
"""

import pytest
import torch
from torch.testing import assert_close
from transformers import AttentionInterface, StaticCache

from modeling_alibi.generation import graph_generate
from modeling_alibi.modeling_alibi import CACHE_NAME, output_cache

from conftest import tiny_model
from test_generation import left_padded

NEW = 24  # new tokens: past the training length (16) with the prompts below


def padded_prompts(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return left_padded([torch.randint(3, 99, (n,)) for n in (20, 13, 7)])


def full_forward_logits(model, sequences: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """Logits that predicted each generated token, from one forward without a cache: (b, new, vocab)."""
    new = sequences.shape[1] - prompt_mask.shape[1]
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], new)], dim=1)
    logits = model(sequences, attention_mask=mask, use_cache=False).logits
    return logits[:, prompt_mask.shape[1] - 1 : -1]


def generated_logits(out) -> torch.Tensor:
    """generate()'s per-step logits of the returned rows: (b, new, vocab); beams follow `beam_indices`."""
    steps = torch.stack(out.logits, dim=1)  # (b * beams, new, vocab)
    if getattr(out, "beam_indices", None) is None:
        return steps
    return torch.stack([steps[out.beam_indices[:, t], t] for t in range(steps.shape[1])], dim=1)


MODES = {
    "greedy-dynamic": dict(),
    "greedy-static": dict(cache_implementation="static"),
    "chunked-prefill": dict(prefill_chunk_size=5),
    "beam": dict(num_beams=3),
    "sampling": dict(do_sample=True, temperature=0.9, top_k=20),
}


@pytest.mark.parametrize("window", [None, 12], ids=["full", "window12"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_every_generated_step_equals_a_full_forward(implementation, mode, window):
    """Left-padded batch, past the training length and (windowed) past the window, every cache kind."""
    model = tiny_model(4, implementation, attention_window=window)
    input_ids, mask = padded_prompts()
    torch.manual_seed(0)
    out = model.generate(
        input_ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=1,
        output_logits=True, return_dict_in_generate=True, **MODES[mode],
    )
    assert out.sequences.shape == (3, input_ids.shape[1] + NEW)
    assert_close(generated_logits(out), full_forward_logits(model, out.sequences, mask), atol=2e-5, rtol=2e-5)


def test_unpadded_generate_equals_a_full_forward():
    """No padding: generate() drops an all-ones mask and passes position_ids instead."""
    model = tiny_model(6, "sdpa")
    input_ids = torch.randint(3, 99, (2, 9))
    out = model.generate(input_ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    assert_close(generated_logits(out), full_forward_logits(model, out.sequences, torch.ones_like(input_ids)),
                 atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("window", [None, 12], ids=["full", "window12"])
def test_graph_generate_tokens_are_the_full_forward_argmax(window):
    model = tiny_model(4, "sdpa", attention_window=window)
    input_ids, mask = padded_prompts()
    sequences = graph_generate(model, input_ids, NEW, attention_mask=mask, prefill_chunk_size=6)
    expected = full_forward_logits(model, sequences, mask).argmax(-1)
    assert torch.equal(sequences[:, input_ids.shape[1] :], expected)


def test_forward_returns_the_cache_under_the_installed_name_and_takes_either_name():
    model = tiny_model(4, "sdpa")
    ids = torch.randint(3, 99, (1, 8))
    first = model(ids[:, :5], use_cache=True)
    cache = output_cache(first)
    assert cache is not None and cache.get_seq_length() == 5
    assert CACHE_NAME in first.keys()
    by_new_name = model(ids[:, 5:6], cache=cache).logits
    assert_close(by_new_name, model(ids[:, :6]).logits[:, -1:], atol=1e-5, rtol=1e-5)
    cache = output_cache(model(ids[:, :5], use_cache=True))
    if CACHE_NAME == "cache":  # transformers 5.24: the old name still works, and warns as in-tree models do
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
            by_old_name = model(ids[:, 5:6], past_key_values=cache).logits
    else:
        by_old_name = model(ids[:, 5:6], past_key_values=cache).logits
    assert_close(by_old_name, by_new_name, atol=0, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        model(ids[:, 5:6], cache=cache, past_key_values=cache)


def test_unknown_forward_keywords_raise():
    model = tiny_model(4, "sdpa")
    ids = torch.randint(3, 99, (1, 8))
    with pytest.raises(TypeError, match="cache_positon"):
        model(ids, cache_positon=torch.arange(8))
    with pytest.raises(TypeError, match="num_items_in_batch"):
        model.model(ids, num_items_in_batch=4)  # a loss keyword: the base model computes no loss


def test_set_attn_implementation_switches_the_backend_at_runtime():
    model = tiny_model(4, "sdpa")
    ids = torch.randint(3, 99, (2, 12))
    reference = model(ids).logits
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    assert model.model.layers[0].self_attn.config._attn_implementation == "eager"
    out = model(ids, output_attentions=True)
    assert out.attentions is not None
    assert_close(out.logits, reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot apply ALiBi"):
        model.set_attn_implementation("flash_attention_3")
    with pytest.raises(ValueError, match='`attn_implementation="flash_attention_9"` is not supported'):
        model.set_attn_implementation("flash_attention_9")


def test_a_backend_registered_with_attention_interface_computes_alibi():
    """A function registered from outside gets the additive mask, bias included, and must match eager."""
    calls = []

    def plain_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        calls.append(tuple(attention_mask.shape))
        scores = query @ key.transpose(2, 3) * scaling + attention_mask  # (b, h, q, k)
        return (scores.softmax(-1) @ value).transpose(1, 2), None  # (b, q, h, d)

    AttentionInterface.register("alibi_test_plain", plain_attention)
    reference = tiny_model(6, "eager")
    custom = tiny_model(6, "alibi_test_plain")
    input_ids, mask = padded_prompts()
    assert_close(custom(input_ids, attention_mask=mask).logits, reference(input_ids, attention_mask=mask).logits,
                 atol=1e-5, rtol=1e-5)
    assert calls and calls[0][1] == 6  # the bias is per head


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_packed_rows_equal_their_documents_run_alone(implementation):
    """Padding-free rows (position_ids restarting per document, no attention_mask) as
    DataCollatorWithFlattening makes them: each document's logits and loss equal its own forward."""
    from transformers import DataCollatorWithFlattening

    model = tiny_model(4, implementation)
    documents = [torch.randint(3, 99, (n,)) for n in (11, 5, 17)]
    batch = DataCollatorWithFlattening()([{"input_ids": d.tolist()} for d in documents])
    assert "attention_mask" not in batch
    packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"])
    start, nll, count = 0, 0.0, 0
    for document in documents:
        alone = model(document[None], labels=document[None])
        assert_close(packed.logits[0, start : start + len(document)], alone.logits[0], atol=1e-5, rtol=1e-5)
        nll, count = nll + alone.loss * (len(document) - 1), count + len(document) - 1
        start += len(document)
    assert_close(packed.loss, nll / count, atol=1e-5, rtol=1e-5)


def test_position_ids_in_one_document_change_nothing_for_alibi():
    model = tiny_model(4, "sdpa")
    ids = torch.randint(3, 99, (2, 10))
    assert_close(model(ids, position_ids=torch.arange(10)[None] + 7).logits, model(ids).logits, atol=1e-6, rtol=0)


def test_shift_labels_are_used_as_given():
    """Trainer under context parallelism passes targets already shifted: they replace the shifted labels."""
    model = tiny_model(4, "sdpa")
    ids = torch.randint(3, 99, (2, 10))
    labels = ids.clone()
    labels[0, :3] = -100
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    by_labels = model(ids, labels=labels).loss
    assert_close(model(ids, shift_labels=shifted).loss, by_labels, atol=1e-6, rtol=0)
    # Given both, shift_labels wins, as in transformers' ForCausalLMLoss.
    assert_close(model(ids, labels=torch.full_like(ids, -100), shift_labels=shifted).loss, by_labels, atol=1e-6, rtol=0)


@pytest.mark.parametrize("adaptive", [False, True], ids=["softmax", "adaptive"])
def test_num_items_in_batch_sums_and_divides_as_transformers_does(adaptive):
    """Gradient accumulation: summing each micro-batch's loss (divided by the batch-wide count) gives the mean
    over all targets, however unevenly they are spread."""
    overrides = dict(adaptive_input=True, adaptive_input_cutoffs=[20, 60], adaptive_softmax_cutoffs=[20, 60],
                     tie_word_embeddings=False) if adaptive else {}
    model = tiny_model(4, "sdpa", **overrides)
    ids = torch.randint(3, 99, (4, 12))
    labels = ids.clone()
    labels[:2, :9] = -100  # the first micro-batch has far fewer targets
    total = (labels[:, 1:] != -100).sum()
    accumulated = sum(model(ids[i : i + 2], labels=labels[i : i + 2], num_items_in_batch=total).loss for i in (0, 2))
    assert_close(accumulated, model(ids, labels=labels).loss, atol=1e-6, rtol=1e-6)


def test_torch_export_with_an_attention_mask():
    model = tiny_model(4, "sdpa")
    input_ids, mask = padded_prompts()
    exported = torch.export.export(model, (input_ids,), {"attention_mask": mask, "use_cache": False})
    assert_close(exported.module()(input_ids, attention_mask=mask, use_cache=False).logits,
                 model(input_ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)


def test_transformers_decoder_only_export_wrapper_decodes_like_the_model():
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model = tiny_model(4, "sdpa")
    model.generation_config.cache_implementation = "static"
    wrapper = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=32)
    prompt = torch.randint(3, 99, (1, 6))
    exported = wrapper.export(input_ids=prompt[:, :1], cache_position=torch.tensor([0]))
    step = exported.module()
    for position in range(prompt.shape[1]):  # one token per call, as the wrapper's own generate feeds it
        logits = step(input_ids=prompt[:, position : position + 1], cache_position=torch.tensor([position]))
        assert_close(logits[:, -1], model(prompt[:, : position + 1]).logits[:, -1], atol=1e-5, rtol=1e-5)


def test_a_static_cache_decode_step_traces_as_one_graph():
    """What `_can_compile_fullgraph = True` promises: compiled static-cache decoding has no graph break."""
    model = tiny_model(4, "sdpa")
    input_ids, mask = padded_prompts()
    cache = StaticCache(config=model.config, max_cache_len=input_ids.shape[1] + 4)
    model(input_ids, attention_mask=mask, cache=cache)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    step_mask = torch.nn.functional.pad(mask, (0, 4))
    step_mask[:, input_ids.shape[1]] = 1
    token = torch.randint(3, 99, (3, 1))
    got = compiled(token, attention_mask=step_mask, cache=cache).logits
    full = model(torch.cat([input_ids, token], 1), attention_mask=step_mask[:, : input_ids.shape[1] + 1]).logits
    assert_close(got[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True, "dynamic"], ids=["eager_step", "compiled", "compiled_dynamic"])
@pytest.mark.parametrize("implementation", ["flex_attention", "sdpa"])
def test_gpu_packed_rows_train_like_eager(implementation, compiled):
    """Padding-free training on the GPU backends (flex: a per-row document mask and position score_mod): loss
    and every gradient equal fp32 eager's on the same packed batch, compiled or not. `dynamic` compiles with
    symbolic lengths, as Dynamo does from the second length a compiled model sees (packed batches vary)."""
    from conftest import model_pair

    reference, fast = model_pair(4, implementation)
    lengths = (150, 40, 300, 22)  # documents of 512 tokens, cut across flex's 128-token blocks
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].cuda()  # (1, 512)
    input_ids = torch.randint(3, 99, (1, sum(lengths)), device="cuda")
    step = torch.compile(fast, dynamic=compiled == "dynamic") if compiled else fast
    losses = []
    for model in (reference.train(), step.train()):
        out = model(input_ids=input_ids, position_ids=position_ids, labels=input_ids)
        out.loss.backward()
        losses.append(out.loss)
    assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for (name, expected), actual in zip(reference.named_parameters(), fast.parameters(), strict=True):
        assert_close(actual.grad, expected.grad, atol=1e-4, rtol=1e-3, msg=name)
