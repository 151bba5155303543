"""Forward-pass semantics: loss, logits_to_keep, outputs, save/load, init, checkpointing, adaptive heads."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.testing import assert_close
from transformers import AutoModel, AutoModelForCausalLM

from modeling_alibi import AlibiForCausalLM, AlibiModel

from conftest import tiny_config, tiny_model

ADAPTIVE = dict(adaptive_input=True, adaptive_input_cutoffs=[20, 60], adaptive_softmax_cutoffs=[20, 60],
                tie_adaptive_weights=True, tie_adaptive_proj=True)
UNTIED_ADAPTIVE = dict(adaptive_softmax_cutoffs=[20, 60], tie_word_embeddings=False)


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = tiny_model()
    input_ids = torch.randint(3, 99, (2, 9))
    labels = input_ids.clone()
    labels[0, 4] = -100
    out = model(input_ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 99), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert_close(out.loss, expected)


def test_logits_to_keep_int_and_tensor():
    model = tiny_model()
    input_ids = torch.randint(3, 99, (2, 9))
    full = model(input_ids).logits
    assert_close(model(input_ids, logits_to_keep=1).logits, full[:, -1:])
    assert_close(model(input_ids, logits_to_keep=torch.tensor([0, 4])).logits, full[:, [0, 4]])


def test_hidden_states_and_attentions_are_returned():
    model = tiny_model()
    out = model(torch.randint(3, 99, (2, 5)), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 4, 5, 5)


def test_auto_classes_resolve_to_ours(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is AlibiForCausalLM
    assert type(AutoModel.from_pretrained(tmp_path)) is AlibiModel


@pytest.mark.parametrize(
    "overrides", [{}, ADAPTIVE, UNTIED_ADAPTIVE], ids=["plain", "adaptive-tied", "adaptive-untied"]
)
def test_save_load_round_trip_is_exact(tmp_path, overrides):
    model = tiny_model(6, **overrides)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AlibiForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    input_ids = torch.randint(3, 99, (2, 40))
    assert torch.equal(model(input_ids).logits, loaded(input_ids).logits)
    stored = load_file(tmp_path / "model.safetensors")
    if overrides is ADAPTIVE:  # tied tensors are stored once
        assert not any(key.startswith("lm_head.tails") or key == "lm_head.head.weight" for key in stored)


def test_post_init_weights():
    model = AlibiForCausalLM(tiny_config(initializer_range=0.02))
    embed = model.model.embed_tokens.weight
    assert torch.all(embed[1] == 0)  # padding row
    assert 0.015 < embed.std().item() < 0.025
    assert torch.all(model.model.layers[0].final_layer_norm.weight == 1)
    assert model.lm_head.weight is embed  # tied


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    input_ids = torch.randint(3, 99, (2, 12))
    results, calls = [], []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            # transformers 5.24 renamed it (the old name warns); 5.17 has only the old name.
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        calls.clear()
        model.model.layers[0].self_attn.register_forward_hook(lambda *args: calls.append(1))
        loss = model(input_ids, labels=input_ids).loss
        loss.backward()
        results.append((loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
        assert len(calls) == (2 if checkpointing else 1)  # the backward pass recomputed the layer
    assert_close(results[0][0], results[1][0])
    assert_close(results[0][1], results[1][1])


@pytest.mark.parametrize("overrides", [ADAPTIVE, UNTIED_ADAPTIVE], ids=["tied", "untied"])
def test_adaptive_softmax_log_probs_are_normalized_and_match_the_loss(overrides):
    model = tiny_model(4, **overrides)
    input_ids = torch.randint(0, 99, (2, 11))
    log_probs = model(input_ids).logits  # (b, q, V) full-vocabulary log-probabilities
    assert_close(log_probs.logsumexp(-1), torch.zeros(2, 11), atol=1e-5, rtol=0)
    out = model(input_ids, labels=input_ids)
    assert out.logits is None  # the loss path never builds (q, V)
    expected = -log_probs[:, :-1].gather(-1, input_ids[:, 1:, None]).mean()
    assert_close(out.loss, expected)
    scores = model.token_log_probs(input_ids[:, :-1], input_ids[:, 1:])
    assert_close(scores, log_probs[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1))


def test_adaptive_input_embeds_each_band_through_its_projection():
    model = tiny_model(4, **ADAPTIVE)
    embed = model.model.embed_tokens
    ids = torch.tensor([[5, 25, 70]])
    out = embed(ids)
    assert_close(out[0, 1], embed.projections[1](embed.embeddings[1].weight[25 - 20]))
    assert_close(out[0, 2], embed.projections[2](embed.embeddings[2].weight[70 - 60]))
    assert [e.weight.shape[1] for e in embed.embeddings] == [32, 8, 2]


def test_token_log_probs_match_logits_and_ignore_minus_100():
    model = tiny_model()
    input_ids = torch.randint(3, 99, (2, 9))
    targets = torch.randint(3, 99, (2, 9))
    targets[1, 3] = -100
    scores = model.token_log_probs(input_ids, targets)
    expected = model(input_ids).logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    expected[1, 3] = 0.0
    assert_close(scores, expected)


@pytest.mark.parametrize("encoding", ["sinusoidal", "rotary", "learned", "none"])
def test_position_encoding_baselines_run_and_differ_from_alibi(encoding):
    model = tiny_model(4, position_encoding=encoding, max_position_embeddings=64)
    input_ids = torch.randint(3, 99, (1, 20))
    out = model(input_ids, labels=input_ids)
    assert torch.isfinite(out.loss)
    assert not torch.allclose(out.logits, tiny_model(4)(input_ids).logits)


def test_learned_positions_refuse_lengths_past_their_table():
    model = tiny_model(4, position_encoding="learned", max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(torch.randint(3, 99, (1, 9)))


def test_plain_transformer_lm_shape_with_projections_and_post_norm():
    """fairseq's raw transformer_lm: post-norm, input/output dims differ from the model width, untied."""
    model = tiny_model(4, normalize_before=False, final_layer_norm=False, input_embedding_size=16,
                       output_embedding_size=16, tie_word_embeddings=True)
    assert model.model.project_in.weight.shape == (32, 16)
    assert model.model.project_out.weight.shape == (16, 32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model(torch.randint(3, 99, (1, 6))).logits.shape == (1, 6, 99)


def test_bad_attention_mask_shape_names_the_fix():
    model = tiny_model()
    with pytest.raises(ValueError, match="whole sequence so far"):
        model(torch.randint(3, 99, (2, 5)), attention_mask=torch.ones(2, 4))
