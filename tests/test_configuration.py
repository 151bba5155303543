"""AlibiConfig: defaults, serialization and the validation errors users see."""

import pytest
import torch

from modeling_alibi import AlibiConfig, AlibiForCausalLM
from modeling_alibi.alibi_attention import flex_attention_forward
from modeling_alibi.alibi_mask import AlibiAttentionMask

from conftest import tiny_config


def test_round_trip_through_dict_and_json(tmp_path):
    config = tiny_config(6, adaptive_input=True, adaptive_input_cutoffs=[20, 60], adaptive_softmax_cutoffs=[20, 60],
                         tie_adaptive_weights=True, tie_adaptive_proj=True)
    config.save_pretrained(tmp_path)
    loaded = AlibiConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.adaptive_input_cutoffs == [20, 60]
    assert loaded.tie_word_embeddings is False  # adaptive layers tie through tie_adaptive_*


def test_train_seq_len_is_metadata_not_a_cap():
    config = tiny_config(train_seq_len=16)
    assert config.max_position_embeddings is None  # generate() would clamp max_length to it


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=30, num_attention_heads=4), "does not divide hidden_size"),
        (dict(attention_dropout=-0.1), "attention_dropout"),
        (dict(hidden_dropout=1.5), "hidden_dropout"),
        (dict(activation_function="tanhh"), "activation_function"),
        (dict(position_encoding="xpos"), "position_encoding"),
        (dict(alibi_bias_max=0), "alibi_bias_max"),
        (dict(position_encoding="learned"), "max_position_embeddings"),
        (dict(adaptive_input=True), "adaptive_input_cutoffs"),
        (dict(adaptive_input=True, adaptive_input_cutoffs=[60, 20]), "strictly increasing"),
        (dict(adaptive_softmax_cutoffs=[20, 200]), "below vocab_size"),
        (dict(tie_adaptive_weights=True), "tie_adaptive_weights needs"),
        (dict(tie_adaptive_proj=True), "tie_adaptive_proj needs"),
        (dict(input_embedding_size=16), "tie_word_embeddings needs"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_unknown_backend_at_load_names_the_choices():
    with pytest.raises(ValueError, match="Choose"):
        AlibiForCausalLM._from_config(tiny_config(), attn_implementation="turbo")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_flex_on_a_machine_without_cuda_names_the_fix():
    with pytest.raises(ValueError, match='use "sdpa"'):
        AlibiForCausalLM._from_config(tiny_config(), attn_implementation="flex_attention")


def test_attention_dropout_on_flex_names_the_fix():
    q = torch.randn(1, 4, 3, 8)
    mask = AlibiAttentionMask(torch.arange(3)[None], torch.arange(3)[None], None, torch.ones(4))
    with pytest.raises(ValueError, match="attention_dropout=0.0"):
        flex_attention_forward(torch.nn.Module(), q, q, q, mask, scaling=1.0, dropout=0.1)
