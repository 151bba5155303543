"""Safe loading of fairseq checkpoints: malicious pickles are refused without running anything."""

from __future__ import annotations

import builtins
import os
import pathlib

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from modeling_alibi.fairseq.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    fairseq_model_field,
    load_fairseq_checkpoint,
    parse_cutoffs,
    resolved_model_config,
)
from tests.fairseq_fixtures import make_fairseq_checkpoint, save_fairseq_checkpoint


class _WritesMarkerWithOpen:
    """Unpickling this calls open(marker, "w"), creating the marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


class _WritesMarkerWithPath:
    """Unpickling this calls Path.write_text(marker, "pwned")."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("payload", [_WritesMarkerWithOpen, _WritesMarkerWithPath], ids=["open", "write_text"])
@pytest.mark.parametrize("where", ["extra_state", "args"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, where: str) -> None:
    marker = tmp_path / "marker.txt"
    state = make_fairseq_checkpoint()
    state[where] = payload(marker)
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    assert not marker.exists()  # saving did not run the payload either
    with pytest.raises(UnsafeCheckpointError) as info:
        load_fairseq_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "Nothing was executed" in message
    assert ("io.open" in message) if payload is _WritesMarkerWithOpen else ("pathlib.Path" in message)
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path) -> None:
    good = tmp_path / "good.pt"
    save_fairseq_checkpoint(good)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            load_fairseq_checkpoint(bad)
        assert str(bad) in str(info.value)


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint at all\n" * 40, bytes(range(256)) * 8], ids=["empty", "text", "bytes"]
)
def test_garbage_file(tmp_path, content: bytes) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_fairseq_checkpoint(bad)
    assert str(bad) in str(info.value)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_fairseq_checkpoint(tmp_path / "nope.pt")


def test_not_a_fairseq_checkpoint(tmp_path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="'model' state dict"):
        load_fairseq_checkpoint(path)
    torch.save({"model": {"w": torch.ones(2)}, "args": None}, path)
    with pytest.raises(CheckpointError, match="no model configuration"):
        load_fairseq_checkpoint(path)


@pytest.mark.parametrize("variant", ["fp32", "fp16_trained", "float16"])
def test_cfg_checkpoint_loads(tmp_path, variant: str) -> None:
    path = tmp_path / "ckpt.pt"
    saved = save_fairseq_checkpoint(path, variant=variant)
    loaded = load_fairseq_checkpoint(path)
    assert loaded["legacy"] is False
    assert loaded["model_cfg"] == saved["cfg"]["model"]
    assert list(loaded["state_dict"]) == list(saved["model"])
    assert loaded["cfg"]["task"]["_name"] == "language_modeling"
    for key, tensor in saved["model"].items():
        torch.testing.assert_close(loaded["state_dict"][key], tensor, atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize("legacy_zip", [True, False], ids=["zip", "legacy-serialization"])
def test_legacy_namespace_checkpoint_loads(tmp_path, legacy_zip: bool) -> None:
    path = tmp_path / "legacy.pt"
    state = make_fairseq_checkpoint("transformer_lm_big", legacy=True)
    torch.save(state, path, _use_new_zipfile_serialization=legacy_zip)
    loaded = load_fairseq_checkpoint(path)
    assert loaded["legacy"] is True
    cfg = loaded["model_cfg"]
    assert cfg["_name"] == cfg["arch"] == "transformer_lm_big"
    assert cfg["decoder_attention_heads"] == 4
    assert list(loaded["state_dict"]) == list(state["model"])


def test_model_fields_with_fairseq_defaults() -> None:
    cfg = make_fairseq_checkpoint()["cfg"]["model"]
    assert fairseq_model_field(cfg, "adaptive_input_cutoff") == [20, 60]
    assert fairseq_model_field(cfg, "adaptive_softmax_factor") == 4.0
    assert fairseq_model_field({}, "decoder_normalize_before") is False  # raw dataclass default
    assert fairseq_model_field({"decoder_embed_dim": 64}, "decoder_input_dim") == 64
    # pre-2019 checkpoints: --no-tie-adaptive-proj existed and the final norm was always off
    old = {"no_tie_adaptive_proj": False}
    assert fairseq_model_field(old, "no_decoder_final_norm") is True
    assert fairseq_model_field(old, "tie_adaptive_proj") is True
    assert fairseq_model_field({"decoder_final_norm": True}, "no_decoder_final_norm") is False
    resolved = resolved_model_config(cfg)
    assert resolved["_name"] == "transformer_lm_wiki103" and resolved["adaptive_softmax_cutoff"] == [20, 60]
    with pytest.raises(KeyError, match="no_such_option"):
        fairseq_model_field(cfg, "no_such_option")


def test_parse_cutoffs() -> None:
    assert parse_cutoffs("20000,60000") == [20000, 60000]
    assert parse_cutoffs([5, 9]) == [5, 9]
    assert parse_cutoffs(None) is None
    with pytest.raises(ValueError, match="comma-separated"):
        parse_cutoffs("20000;60000")
