"""Sanity of the independent fairseq reference forward and of the fairseq-layout fixtures."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from tests.fairseq_fixtures import (
    ARCHS,
    CFG_SECTIONS,
    LEGACY_TOP_LEVEL_KEYS,
    TOP_LEVEL_KEYS,
    WT103_VOCAB_SIZE,
    fairseq_state_dict_layout,
    make_fairseq_checkpoint,
    wt103_model_cfg,
)
from tests.fairseq_reference import get_slopes, reference_log_probs

CASES = [
    pytest.param(arch, heads, id=f"{arch}-h{heads}")
    for arch in ARCHS
    for heads in (4, 6)
]


def _ids(batch: int, length: int, vocab: int = 104, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (batch, length), generator=gen)  # never <pad>


@pytest.mark.parametrize(
    "heads, expected",
    [
        (4, [1 / 4, 1 / 16, 1 / 64, 1 / 256]),
        (6, [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]),
        (8, [2.0**-k for k in range(1, 9)]),
        (12, [2.0**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]),
        (16, [2 ** (-0.5 * k) for k in range(1, 17)]),
    ],
)
def test_slopes_match_spec(heads: int, expected: list[float]) -> None:
    assert get_slopes(heads) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("arch, heads", CASES)
def test_reference_normalised_and_causal(arch: str, heads: int) -> None:
    state = make_fairseq_checkpoint(arch, heads=heads)
    sd, cfg = state["model"], state["cfg"]["model"]
    ids = _ids(2, 24)  # longer than tokens_per_sample=16: no length cap
    lp = reference_log_probs(sd, cfg, ids)
    assert lp.shape == (2, 24, 104)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(2, 24, dtype=torch.float64), atol=1e-10, rtol=0)
    changed = ids.clone()
    changed[:, 15] = 7
    lp2 = reference_log_probs(sd, cfg, changed)
    torch.testing.assert_close(lp2[:, :15], lp[:, :15], atol=1e-12, rtol=0)
    assert (lp2[:, 15:] - lp[:, 15:]).abs().max() > 1e-6  # the change is visible later on
    assert lp.std() > 0.1  # non-trivial predictions, not a flat distribution


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_fp32_close_to_fp64(arch: str) -> None:
    state = make_fairseq_checkpoint(arch, heads=6)
    ids = _ids(2, 20)
    lp64 = reference_log_probs(state["model"], state["cfg"]["model"], ids)
    lp32 = reference_log_probs(state["model"], state["cfg"]["model"], ids, dtype=torch.float32)
    assert lp32.dtype == torch.float32
    torch.testing.assert_close(lp32.double(), lp64, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_right_padding_leaves_rows_unchanged(arch: str) -> None:
    state = make_fairseq_checkpoint(arch, heads=4)
    sd, cfg = state["model"], state["cfg"]["model"]
    a, b = _ids(1, 12, seed=1), _ids(1, 7, seed=2)
    batch = torch.full((2, 12), 1)
    batch[0], batch[1, :7] = a[0], b[0]
    lp = reference_log_probs(sd, cfg, batch)
    torch.testing.assert_close(lp[0], reference_log_probs(sd, cfg, a)[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(lp[1, :7], reference_log_probs(sd, cfg, b)[0], atol=1e-12, rtol=0)


def test_alibi_absolute_form_equals_relative_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork's +m*j bias differs from the paper's -m*(i-j) by a per-row constant: same softmax."""
    state = make_fairseq_checkpoint("transformer_lm_big", heads=6)
    sd, cfg = state["model"], state["cfg"]["model"]
    ids = _ids(1, 10)
    import tests.fairseq_reference as ref

    def relative(heads: int, length: int, dtype: torch.dtype) -> torch.Tensor:
        slopes = torch.tensor(get_slopes(heads), dtype=dtype)
        pos = torch.arange(length, dtype=dtype)
        dist = pos[:, None] - pos[None, :]  # (q, k)
        bias = -slopes[:, None, None] * dist
        return bias.masked_fill(dist < 0, float("-inf"))

    expected = reference_log_probs(sd, cfg, ids)
    monkeypatch.setattr(ref, "_alibi_causal_mask", relative)
    got = reference_log_probs(sd, cfg, ids)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


def test_fixture_top_level_layout() -> None:
    state = make_fairseq_checkpoint()
    assert tuple(state) == TOP_LEVEL_KEYS
    assert state["args"] is None and state["criterion"] is None
    assert tuple(state["cfg"]) == CFG_SECTIONS
    model = state["cfg"]["model"]
    assert model["_name"] == "transformer_lm_wiki103"
    assert model["adaptive_input_cutoff"] == "20,60" and model["adaptive_softmax_factor"] == 4.0
    assert model["max_target_positions"] == model["tokens_per_sample"] == 16
    legacy = make_fairseq_checkpoint(legacy=True)
    assert tuple(legacy) == LEGACY_TOP_LEVEL_KEYS and legacy["args"].arch == "transformer_lm_wiki103"


def test_fixture_key_order_and_buffers() -> None:
    sd = make_fairseq_checkpoint(layers=1)["model"]
    keys = list(sd)
    assert keys[:4] == [
        "decoder.version",
        "decoder.embed_tokens._float_tensor",
        "decoder.embed_tokens.embeddings.0.0.weight",
        "decoder.embed_tokens.embeddings.0.1.weight",
    ]
    attn = [k.split(".")[4] for k in keys if ".self_attn." in k and k.endswith("weight")]
    assert attn == ["k_proj", "v_proj", "q_proj", "out_proj"]
    assert sd["decoder.version"].dtype == torch.float32 and sd["decoder.adaptive_softmax.version"].dtype == torch.int64
    garbage = [v for k, v in sd.items() if k.endswith("_float_tensor")]
    assert len(garbage) == 3 and all(not torch.isfinite(g).all() for g in garbage)


@pytest.mark.parametrize("variant", ["fp32", "fp16_trained", "float16"])
def test_fixture_tie_variants_survive_torch_save(tmp_path, variant: str) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(make_fairseq_checkpoint(variant=variant), path)
    sd = torch.load(path, weights_only=True)["model"]
    word = sd["decoder.adaptive_softmax.head.word_proj.weight"]
    emb = sd["decoder.embed_tokens.embeddings.0.0.weight"]
    proj = sd["decoder.adaptive_softmax.tail.0.0.weight"]
    emb_proj = sd["decoder.embed_tokens.embeddings.1.1.weight"]
    torch.testing.assert_close(word, emb, atol=0, rtol=0)
    torch.testing.assert_close(proj, emb_proj, atol=0, rtol=0)
    shared = word.untyped_storage().data_ptr() == emb.untyped_storage().data_ptr()
    assert shared == (variant != "fp16_trained")
    assert emb.dtype == (torch.float16 if variant == "float16" else torch.float32)
    if variant == "fp16_trained":  # float32 holding fp16-rounded values
        torch.testing.assert_close(emb.half().float(), emb, atol=0, rtol=0)


@pytest.mark.parametrize("share", [False, True])
def test_fixture_plain_transformer_lm_projections(share: bool) -> None:
    state = make_fairseq_checkpoint("transformer_lm", share_input_output_embed=share)
    sd, cfg = state["model"], state["cfg"]["model"]
    assert cfg["decoder_normalize_before"] is False and "decoder.layer_norm.weight" not in sd
    assert sd["decoder.project_in_dim.weight"].shape == (32, 24)
    assert sd["decoder.project_out_dim.weight"].shape == (24, 32)
    assert (sd["decoder.output_projection.weight"] is sd["decoder.embed_tokens.weight"]) == share
    big = make_fairseq_checkpoint("transformer_lm_big")["model"]
    assert "decoder.layer_norm.weight" in big and "decoder.project_in_dim.weight" not in big


def test_full_size_wt103_layout_matches_spec() -> None:
    """At the released size the layout has the spec's 273 keys and 246,933,504 unique parameters."""
    layout = fairseq_state_dict_layout(wt103_model_cfg(), WT103_VOCAB_SIZE)
    assert len(layout) == 273
    unique = sum(torch.Size(shape).numel() for key, shape, tied in layout if tied is None)
    assert unique == 246_933_504
    bands = {key: shape for key, shape, _ in layout if ".embeddings." in key}
    assert bands["decoder.embed_tokens.embeddings.2.0.weight"] == (207_744, 64)
    assert bands["decoder.embed_tokens.embeddings.0.1.weight"] == (1024, 1024)
