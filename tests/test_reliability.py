"""Issue #11's threats to export, conversion, reports, config, model inputs and the CLI, each with its exact outcome:
nothing executed, nothing lost, one line on stderr and exit code 2 for every user error. docs/reliability.md maps
each threat to its test here. (Training's resume, checkpoints and run locks are tested by the training side.)"""

from __future__ import annotations

import errno
import math
import os
import pickle
import subprocess
import sys
import types
import warnings
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_alibi import AlibiConfig, AlibiForCausalLM, io_utils
from modeling_alibi import hub as hub_module
from modeling_alibi.cli import main
from modeling_alibi.errors import InputError, UserError
from modeling_alibi.fairseq import FairseqDictionary, fairseq_tokenizer
from modeling_alibi.hub import export_for_hub
from tests.conftest import tiny_model
from tests.fairseq_fixtures import make_fairseq_checkpoint, write_fixture_dict

VOCAB = 104  # the fixture dict.txt's ids


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()  # drop what the test's own setup printed
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_user_error(code: int, err: str, command: str, *needles: str) -> None:
    """Exit 2, exactly one line `alibi-lm COMMAND: error: ...` naming every needle, and no traceback."""
    assert code == 2, err
    assert err.startswith(f"alibi-lm {command}: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.fixture
def saved(tmp_path) -> Path:
    """A saved model folder with a fairseq-rule tokenizer (vocabulary of the fixture dict.txt)."""
    write_fixture_dict(tmp_path / "dict.txt", VOCAB)
    tokenizer = fairseq_tokenizer(FairseqDictionary.load(tmp_path / "dict.txt"))
    return export_for_hub(tiny_model(vocab_size=VOCAB), tmp_path / "src", tokenizer)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- 3. verified outputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["renamed-key", "missing-key", "junk-header"])
def test_export_refuses_weights_that_do_not_match_the_config(saved, tmp_path, capsys, damage) -> None:
    """Issue #11, 2: export used to print "Hub-ready folder" and exit 0 with randomly initialised weights."""
    weights = saved / "model.safetensors"
    if damage == "junk-header":
        weights.write_bytes(b"\xff" * 64 + weights.read_bytes()[64:])
    else:
        tensors = load_file(weights)
        key = "model.layers.0.mlp.fc1.weight"
        value = tensors.pop(key)
        if damage == "renamed-key":
            tensors["model.layers.0.mlp.fc_one.weight"] = value
        save_file(tensors, weights, metadata={"format": "pt"})
    out = tmp_path / "out"
    code, err = run_cli(capsys, "export", saved, "--output", out)
    assert_user_error(code, err, "export", str(saved))
    if damage != "junk-header":
        assert "model.layers.0.mlp.fc1.weight: missing" in err and "random" in err
    assert not out.exists() and not [n for n in siblings(out) if n.startswith(".out")]


def test_export_verifies_what_it_wrote(saved, tmp_path, monkeypatch, capsys) -> None:
    """A writer that corrupts one tensor on disk: the load-back comparison catches it; nothing is published."""
    write = hub_module._write_folder

    def corrupting(model, staging, *args):
        write(model, staging, *args)
        tensors = load_file(staging / "model.safetensors")
        tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(hub_module, "_write_folder", corrupting)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "export", saved, "--output", out)
    assert_user_error(code, err, "export", "model.norm.weight: differs", "nothing was written")
    assert not out.exists() and not [n for n in siblings(out) if n.startswith(".out")]


def test_export_verifies_the_tokenizer_loads(saved, tmp_path, monkeypatch, capsys) -> None:
    write = hub_module._write_folder

    def truncating(model, staging, *args):
        write(model, staging, *args)
        data = (staging / "tokenizer.json").read_bytes()
        (staging / "tokenizer.json").write_bytes(data[: len(data) // 2])  # the full-disk symptom

    monkeypatch.setattr(hub_module, "_write_folder", truncating)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "export", saved, "--output", out)
    assert_user_error(code, err, "export", "tokenizer does not load")
    assert not out.exists()


def test_export_success_is_verified_and_readable_by_others(saved, tmp_path, capsys) -> None:
    old_umask = os.umask(0o077)  # mkdtemp-like private modes must not leak into the published folder
    try:
        code, _ = run_cli(capsys, "export", saved, "--output", tmp_path / "out")
    finally:
        os.umask(old_umask)
    assert code == 0
    out = tmp_path / "out"
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
    reloaded = AlibiForCausalLM.from_pretrained(out)
    source = AlibiForCausalLM.from_pretrained(saved)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    assert siblings(out) == ["dict.txt", "out", "src"]  # no lock file, no staging


# ---- 4/5. one writer, atomic, --overwrite swaps by rename ---------------------------------------------------


def test_concurrent_export_is_refused_while_the_lock_is_held(saved, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    with io_utils.lock_directory(tmp_path, ".out.lock"):
        code, err = run_cli(capsys, "export", saved, "--output", out)
    assert_user_error(code, err, "export", "in use by process", str(os.getpid()))
    assert not out.exists()


def test_stale_lock_is_taken_over(saved, tmp_path, capsys) -> None:
    (tmp_path / ".out.lock").write_text(f"{dead_pid()}\n")
    code, _ = run_cli(capsys, "export", saved, "--output", tmp_path / "out")
    assert code == 0 and (tmp_path / "out" / "model.safetensors").exists()
    assert not (tmp_path / ".out.lock").exists()


def test_staging_left_by_a_killed_export_is_cleaned_but_nothing_else(saved, tmp_path, capsys) -> None:
    pid = dead_pid()
    left = tmp_path / f".out.tmp-{pid}-0123abcd"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    unrelated = [tmp_path / ".out.tmp-notes", tmp_path / ".hidden", tmp_path / f".out.tmp-{os.getpid()}-89abcdef"]
    for path in unrelated:
        path.write_text("keep")
    code, _ = run_cli(capsys, "export", saved, "--output", tmp_path / "out")
    assert code == 0 and not left.exists()
    assert all(path.read_text() == "keep" for path in unrelated)


def test_overwrite_without_flag_is_refused_before_loading(saved, tmp_path, monkeypatch, capsys) -> None:
    out = export_for_hub(tiny_model(vocab_size=VOCAB, seed=1), tmp_path / "out")

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(hub_module, "load_checked", fail)
    code, err = run_cli(capsys, "export", saved, "--output", out)
    assert_user_error(code, err, "export", "exists", "--overwrite")


def test_overwrite_never_deletes_files_export_did_not_write(saved, tmp_path, capsys) -> None:
    out = export_for_hub(tiny_model(vocab_size=VOCAB, seed=1), tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    code, err = run_cli(capsys, "export", saved, "--output", out, "--overwrite")
    assert_user_error(code, err, "export", "notes.txt", "would delete them")
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").exists()


def _weights(folder: Path) -> torch.Tensor:
    return load_file(folder / "model.safetensors")["model.layers.0.mlp.fc1.weight"]


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_every_kill_point_of_overwrite_leaves_old_or_new(saved, tmp_path, monkeypatch, capsys, fail_at) -> None:
    """os.rename k fails (1: old aside, 2: new in, 3: never reached -> rmtree of old fails instead)."""
    old_model = tiny_model(vocab_size=VOCAB, seed=1)
    out = export_for_hub(old_model, tmp_path / "out")
    old, new = _weights(out), _weights(saved)
    calls = {"rename": 0}
    rename, rmtree = os.rename, io_utils.shutil.rmtree

    def killed_rename(src, dst):
        calls["rename"] += 1
        if calls["rename"] == fail_at:
            raise KeyboardInterrupt("killed")  # a BaseException, as a signal would be
        return rename(src, dst)

    def killed_rmtree(path, *args, **kwargs):
        if fail_at == 3 and ".old-" in str(path):
            raise KeyboardInterrupt("killed")
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(io_utils.os, "rename", killed_rename)
    monkeypatch.setattr(io_utils.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        main(["export", str(saved), "--output", str(out), "--overwrite"])
    monkeypatch.undo()
    now = _weights(out)
    assert torch.equal(now, old) or torch.equal(now, new)
    assert torch.equal(now, new) == (fail_at == 3)  # only after the new folder moved in
    AlibiForCausalLM.from_pretrained(out)  # complete, not half a folder


def test_killed_between_the_renames_the_next_export_restores_the_old_folder(saved, tmp_path, capsys) -> None:
    """A real kill between `out -> .out.old-PID-x` and `staging -> out`: the next export puts the old one back."""
    out = export_for_hub(tiny_model(vocab_size=VOCAB, seed=1), tmp_path / "out")
    old = _weights(out)
    os.rename(out, tmp_path / f".out.old-{dead_pid()}-0123abcd")
    (tmp_path / "elsewhere").mkdir()
    code, err = run_cli(capsys, "export", saved, "--output", out)  # no --overwrite: the old folder is back
    assert_user_error(code, err, "export", "exists")
    assert torch.equal(_weights(out), old)


def test_writer_failing_partway_leaves_the_old_folder(saved, tmp_path, monkeypatch, capsys) -> None:
    out = export_for_hub(tiny_model(vocab_size=VOCAB, seed=1), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def partial_card(model, directory, *args):
        Path(directory, "README.md").write_text("# half")
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(hub_module, "write_model_card", partial_card)
    with pytest.raises(OSError, match="I/O error"):
        main(["export", str(saved), "--output", str(out), "--overwrite"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert siblings(out) == ["dict.txt", "out", "src"]


def test_disk_full_says_the_disk_is_full(saved, tmp_path, monkeypatch, capsys) -> None:
    def full(model, directory, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory, "README.md")))

    monkeypatch.setattr(hub_module, "write_model_card", full)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "export", saved, "--output", out)
    assert_user_error(code, err, "export", "disk is full")
    assert not out.exists() and siblings(out) == ["dict.txt", "src"]


# ---- 3. the converter refuses other architectures; 1. no code from data --------------------------------------


def _write_checkpoint(path: Path, edit) -> Path:
    state = make_fairseq_checkpoint("transformer_lm_wiki103", vocab_size=VOCAB)
    edit(state)
    torch.save(state, path)
    return path


def _learned_weights(state) -> None:
    state["model"]["decoder.embed_positions.weight"] = torch.randn(514, 32)


def _no_fork_marker(state) -> None:
    del state["cfg"]["model"]["max_tokens"]


@pytest.mark.parametrize(
    "edit, field",
    [
        (_learned_weights, "decoder.embed_positions.weight"),
        (lambda state: state["cfg"]["model"].update(decoder_learned_pos=True), "decoder_learned_pos=True"),
        (_no_fork_marker, "no_token_positional_embeddings=False"),
    ],
    ids=["learned-weights", "decoder_learned_pos", "sinusoidal-upstream"],
)
def test_converter_refuses_position_encodings_that_are_not_alibi(tmp_path, capsys, edit, field) -> None:
    checkpoint = _write_checkpoint(tmp_path / "lm.pt", edit)
    write_fixture_dict(tmp_path / "dict.txt", VOCAB)
    out = tmp_path / "hf"
    code, err = run_cli(capsys, "convert-fairseq", checkpoint, "--dict", tmp_path / "dict.txt", "--output", out,
                        "--verify")
    assert_user_error(code, err, "convert-fairseq", field, "not ALiBi" if "upstream" in err else "not an ALiBi")
    assert not out.exists()


def test_key_mapping_never_drops_a_position_table() -> None:
    """Below the converter's check, the key mapping itself refuses a trained position table rather than drop it."""
    from modeling_alibi.fairseq import alibi_config_from_fairseq, convert_state_dict

    state = make_fairseq_checkpoint("transformer_lm_wiki103", vocab_size=VOCAB)
    _learned_weights(state)
    config = alibi_config_from_fairseq(state["cfg"]["model"], VOCAB)
    with pytest.raises(UserError, match=r"Unknown fairseq keys .*decoder\.embed_positions\.weight"):
        convert_state_dict(state["model"], config)


def test_converter_still_converts_the_forks_checkpoints(tmp_path, capsys) -> None:
    checkpoint = _write_checkpoint(tmp_path / "lm.pt", lambda state: None)
    write_fixture_dict(tmp_path / "dict.txt", VOCAB)
    code, err = run_cli(capsys, "convert-fairseq", checkpoint, "--dict", tmp_path / "dict.txt",
                        "--output", tmp_path / "hf", "--verify")
    assert code == 0, err
    assert (tmp_path / "hf" / "model.safetensors").exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """A crafted pickle in every place a fairseq checkpoint holds objects, in each file format torch reads."""
    files = {}
    for slot in ("cfg", "model", "args", "extra_state", "last_optimizer_state"):
        state = make_fairseq_checkpoint("transformer_lm_wiki103", vocab_size=VOCAB)
        if slot == "model":
            state["model"]["decoder.layers.0.fc1.weight"] = _Payload(marker)
        else:
            state[slot] = _Payload(marker)
        torch.save(state, tmp_path / f"{slot}.pt")
        files[slot] = tmp_path / f"{slot}.pt"
    legacy = make_fairseq_checkpoint("transformer_lm_wiki103", vocab_size=VOCAB)
    legacy["cfg"] = _Payload(marker)
    torch.save(legacy, tmp_path / "legacy-format.pt", _use_new_zipfile_serialization=False)
    files["legacy-format"] = tmp_path / "legacy-format.pt"
    (tmp_path / "raw-pickle.pt").write_bytes(pickle.dumps({"model": _Payload(marker)}))
    files["raw-pickle"] = tmp_path / "raw-pickle.pt"
    return files


def test_no_pickle_payload_executes_in_the_convert_path(tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    write_fixture_dict(tmp_path / "dict.txt", VOCAB)
    for name, path in _payload_files(tmp_path, marker).items():
        out = tmp_path / f"hf-{name}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on the raw pickle's protocol
            code, err = run_cli(capsys, "convert-fairseq", path, "--dict", tmp_path / "dict.txt", "--output", out)
        assert_user_error(code, err, "convert-fairseq", str(path), "malicious", "Nothing was executed"
                          if "global" in err else "nothing was executed")
        assert "weights_only=False" not in err and "weights_only" not in err, err
        assert not marker.exists(), name
        assert not out.exists()


# ---- 4. reports refuse to overwrite, before the work -------------------------------------------------------


def test_eval_ppl_json_refuses_to_overwrite_before_evaluating(saved, tmp_path, monkeypatch, capsys) -> None:
    from modeling_alibi.evaluation import perplexity

    data = tmp_path / "valid.txt"
    data.write_text("w0001 w0002 w0003\n" * 20)
    report = tmp_path / "ppl.json"
    report.write_text('{"earlier": true}\n')
    monkeypatch.setattr(perplexity, "evaluate_perplexity", lambda *a, **k: pytest.fail("evaluated first"))
    code, err = run_cli(capsys, "eval-ppl", saved, "--data", data, "--tokens-per-sample", 8, "--json", report)
    assert_user_error(code, err, "eval-ppl", "--json", "exists", "--overwrite")
    assert report.read_text() == '{"earlier": true}\n'
    monkeypatch.undo()
    code, _ = run_cli(capsys, "eval-ppl", saved, "--data", data, "--tokens-per-sample", 8, "--json", report,
                      "--overwrite", "--no-progress")
    assert code == 0 and '"perplexity"' in report.read_text()


def test_extrapolate_refuses_to_overwrite_before_evaluating(saved, tmp_path, monkeypatch, capsys) -> None:
    from modeling_alibi.evaluation import extrapolation

    data = tmp_path / "valid.txt"
    data.write_text("w0001 w0002\n" * 20)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "extrapolation.json").write_text("[]\n")
    monkeypatch.setattr(extrapolation, "evaluate_lengths", lambda *a, **k: pytest.fail("evaluated first"))
    code, err = run_cli(capsys, "extrapolate", saved, "--data", data, "--lengths", "8",
                        "--output", tmp_path / "report")
    assert_user_error(code, err, "extrapolate", "extrapolation.json", "--overwrite")
    assert (tmp_path / "report" / "extrapolation.json").read_text() == "[]\n"


# ---- 8. CLI errors: one line, exit 2, the right flag, before expensive work ---------------------------------


def test_missing_model_folder_says_so(tmp_path, capsys) -> None:
    data = tmp_path / "valid.txt"
    data.write_text("a b\n")
    for argv in (["export", tmp_path / "nope", "--output", tmp_path / "out"],
                 ["eval-ppl", tmp_path / "nope", "--data", data, "--tokens-per-sample", 8]):
        code, err = run_cli(capsys, *argv)
        assert_user_error(code, err, argv[0], "no such model folder", str(tmp_path / "nope"))
        assert "Repo id" not in err


def test_negative_tokens_per_sample_blames_that_flag(saved, tmp_path, capsys) -> None:
    data = tmp_path / "valid.txt"
    data.write_text("a b\n")
    code, err = run_cli(capsys, "eval-ppl", saved, "--data", data, "--tokens-per-sample", "-5")
    assert_user_error(code, err, "eval-ppl", "--tokens-per-sample", "'-5'")
    assert "--context-window" not in err


def test_missing_argument_is_one_line(capsys) -> None:
    code, err = run_cli(capsys, "export")
    assert_user_error(code, err, "export", "--output", "alibi-lm export --help")


@pytest.mark.parametrize("content", [b"caf\xe9 na\xefve\n", bytes(range(256))], ids=["latin-1", "binary"])
def test_encoding_errors_name_the_file(saved, tmp_path, capsys, content) -> None:
    data = tmp_path / "valid.txt"
    data.write_bytes(content)
    code, err = run_cli(capsys, "eval-ppl", saved, "--data", data, "--tokens-per-sample", 8, "--no-progress")
    assert_user_error(code, err, "eval-ppl", str(data), "not UTF-8")


def test_latin1_dict_names_the_file(tmp_path, capsys) -> None:
    checkpoint = _write_checkpoint(tmp_path / "lm.pt", lambda state: None)
    (tmp_path / "dict.txt").write_bytes(b"caf\xe9 10\n")
    code, err = run_cli(capsys, "convert-fairseq", checkpoint, "--dict", tmp_path / "dict.txt",
                        "--output", tmp_path / "hf")
    assert_user_error(code, err, "convert-fairseq", str(tmp_path / "dict.txt"), "not UTF-8")


def test_debug_shows_the_traceback_and_internal_bugs_always_do(tmp_path, monkeypatch) -> None:
    with pytest.raises(InputError, match="no such model folder"):  # a user error, raised as is under --debug
        main(["--debug", "export", str(tmp_path / "nope"), "--output", str(tmp_path / "out")])
    fake = types.ModuleType("fake_command")
    fake.main = lambda argv: [][1]  # an internal bug: IndexError
    monkeypatch.setitem(sys.modules, "fake_command", fake)
    monkeypatch.setitem(__import__("modeling_alibi.cli").cli.COMMANDS, "export", ("fake_command", ""))
    with pytest.raises(IndexError):
        main(["export"])


def test_library_chatter_is_quiet_unless_verbose(monkeypatch) -> None:
    import transformers

    seen = []
    fake = types.ModuleType("fake_command")
    fake.main = lambda argv: seen.append(transformers.utils.logging.get_verbosity()) or 0
    monkeypatch.setitem(sys.modules, "fake_command", fake)
    monkeypatch.setitem(__import__("modeling_alibi.cli").cli.COMMANDS, "export", ("fake_command", ""))
    before = transformers.utils.logging.get_verbosity()
    assert main(["export"]) == 0 and main(["-v", "export"]) == 0
    assert seen == [transformers.logging.ERROR, transformers.logging.INFO]
    assert transformers.utils.logging.get_verbosity() == before  # restored for whoever called main()


def test_disk_full_in_a_report_says_the_disk_is_full(tmp_path, monkeypatch) -> None:
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.os, "write", full)
    with pytest.raises(io_utils.DiskFullError, match="disk is full"):
        io_utils.atomic_write_text(tmp_path / "report.json", "{}")
    assert list(tmp_path.iterdir()) == []


# ---- 6. validated numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("alibi_bias_max", math.nan, "(0, inf)"),
        ("alibi_bias_max", 0.0, "(0, inf)"),
        ("layer_norm_eps", 0.0, "(0, inf)"),
        ("layer_norm_eps", -1e-5, "(0, inf)"),
        ("layer_norm_eps", math.nan, "(0, inf)"),
        ("rope_theta", 0.0, "(0, inf)"),
        ("rope_theta", math.inf, "(0, inf)"),
        ("hidden_dropout", 1.0, "[0, 1)"),
        ("attention_dropout", -0.1, "[0, 1)"),
        ("activation_dropout", math.nan, "[0, 1)"),
        ("adaptive_softmax_dropout", 1.5, "[0, 1)"),
        ("initializer_range", -0.02, "[0, inf)"),
        ("adaptive_input_factor", 0.0, "(0, inf)"),
        ("adaptive_softmax_factor", math.nan, "(0, inf)"),
        ("alibi_bias_max", "8", "(0, inf)"),
    ],
)
def test_config_rejects_non_finite_and_out_of_range_numbers(field, value, allowed) -> None:
    with pytest.raises(ValueError) as info:
        AlibiConfig(**{field: value})
    assert field in str(info.value) and allowed in str(info.value)


@pytest.mark.parametrize(
    "field, value", [("alibi_truncation", math.nan), ("alibi_truncation", math.inf), ("train_seq_len", 0),
                     ("input_embedding_size", -4), ("max_position_embeddings", 1.5), ("num_hidden_layers", True)]
)
def test_config_rejects_bad_sizes(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        AlibiConfig(**{field: value})


def test_loss_without_a_valid_label_is_zero_with_a_warning() -> None:
    model = tiny_model(vocab_size=VOCAB).train()
    ids = torch.randint(4, VOCAB, (2, 7))
    with pytest.warns(UserWarning, match="No label counts toward the loss"):
        loss = model(ids, labels=torch.full_like(ids, -100)).loss
    assert loss.item() == 0.0
    loss.backward()  # a finite, zero gradient: one empty batch does not poison training
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---- 8. model inputs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"input_ids": torch.tensor([[1, 2, VOCAB]])}, "vocab_size=104"),
        ({"input_ids": torch.tensor([[1, -3, 2]])}, "vocab_size=104"),
        ({"input_ids": torch.tensor([1, 2, 3])}, "input_ids[None]"),
        ({"input_ids": torch.tensor([[1.0, 2.0]])}, ".long()"),
        ({"input_ids": torch.zeros(1, 0, dtype=torch.long)}, "at least one token"),
        ({"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.tensor([[1, 2]])}, "only 0 (padding) and 1"),
        ({"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.tensor([[1.0, 0.5]])}, "only 0 (padding)"),
        ({"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.tensor([[1, 1, 1]])}, "shape (batch"),
    ],
    ids=["id-too-large", "negative-id", "1-d", "float-ids", "empty", "mask-2", "mask-half", "mask-shape"],
)
def test_model_inputs_are_checked_with_the_fix(inputs, message) -> None:
    model = tiny_model(vocab_size=VOCAB)
    with pytest.raises(ValueError) as info:
        model(**inputs)
    assert message in str(info.value)


@pytest.mark.slow
def test_two_concurrent_export_processes_one_wins_the_other_exits_2(saved, tmp_path) -> None:
    """Real processes: exactly one publishes; the other is refused (lock held, or the folder exists by then)."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "modeling_alibi.cli", "export", str(saved), "--output", str(out)]
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((run.wait(timeout=300), run.stderr.read()) for run in runs)
    assert [code for code, _ in results] == [0, 2], results
    last_line = results[1][1].strip().splitlines()[-1]
    assert last_line.startswith("alibi-lm export: error: ") and ("in use by process" in last_line or "exists" in
                                                                   last_line), last_line
    AlibiForCausalLM.from_pretrained(out)
    assert siblings(out) == ["dict.txt", "out", "src"]
