"""Reliability of training (issue #11, training side): no code runs from a checkpoint, resume is exact or refused,
one run per folder, atomic writes under kills and full disks, NaN stops training, and final/ is verified.

One short run (checkpoints step_2 and step_4) is trained once per module; each test works on a copy of it and
calls the loop's pieces directly where a whole run would add nothing.
"""

import contextlib
import errno
import json
import logging
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from transformers import get_scheduler

from modeling_alibi import alibi_loss, io_utils
from modeling_alibi.errors import UserError
from modeling_alibi.io_utils import DirectoryLockedError, DiskFullError, atomic_write_text, cleanup_staging
from modeling_alibi.training import checkpoint, loop, train
from modeling_alibi.training.checkpoint import MARKER, CheckpointError, TrainState, resume_from_checkpoint
from tests.test_training import (
    REPO,
    launch_two_cpu_processes,
    metrics,
    reset_accelerate,
    run_args,
    write_corpus,
)

STATE_FILES = ["model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_0.safetensors",
               "rng_0.json", "progress.json"]
# Names Accelerate's save_state/load_state use: we never read them, so a payload there must stay inert.
ACCELERATE_FILES = ["random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin",
                    "pytorch_model.bin", "sampler.bin", "scaler.pt"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    reset_accelerate()
    yield
    reset_accelerate()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("reliability"))


def args_for(corpus: Path, output: Path, **overrides):
    return run_args(corpus, str(output), **({"max_steps": 4, "save_every": 2, "eval_batches": 1} | overrides))


@pytest.fixture(scope="module")
def trained(corpus: Path) -> Path:
    """A finished run: checkpoints/step_2, checkpoints/step_4, metrics.jsonl, final/."""
    reset_accelerate()
    train(args_for(corpus, corpus / "base"))
    reset_accelerate()
    return corpus / "base"


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def build_state(corpus: Path, output: Path, **overrides):
    """What `loop._train` builds before resuming, without training: (accelerator, args, state, tokenizer)."""
    args = args_for(corpus, output, **({"resume": "latest"} | overrides))
    accelerator = loop.make_accelerator(args)
    set_seed(args.seed)
    tokenizer = loop.get_tokenizer(accelerator, args)
    train_loader, _ = loop.get_dataloaders(accelerator, args, tokenizer)
    model = loop.build_model(args, tokenizer)
    optimizer = loop.build_optimizer(model, args, accelerator.device)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.warmup_steps, args.max_steps)
    state = TrainState(model, optimizer, scheduler, loop._position(accelerator, args, len(train_loader)))
    return accelerator, args, state, tokenizer


def resume(corpus: Path, output: Path, **overrides) -> tuple[int, TrainState]:
    accelerator, args, state, _ = build_state(corpus, output, **overrides)
    return resume_from_checkpoint(accelerator, args, state), state


def assert_weights_of(state: TrainState, folder: Path) -> None:
    saved = load_file(folder / "model.safetensors")
    for name, tensor in state.model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0, msg=name)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


class _Payload:
    """Unpickling this writes the marker file: proof that code from the checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "pwned"))


def poison(path: Path, marker: Path, update_marker: bool = True) -> None:
    """Replace `path` by a pickle payload; like an attacker, fix its size in complete.json too."""
    path.write_bytes(pickle.dumps({"state": _Payload(marker)}))
    listing = path.parent / MARKER
    if update_marker and path.name != MARKER:
        info = json.loads(listing.read_text())
        if path.name in info["files"]:
            info["files"][path.name] = path.stat().st_size
            listing.write_text(json.dumps(info))


# --------------------------------------------------------------------------- no code from data


def test_the_payload_is_live(tmp_path: Path):
    """The payload does run when unpickled, so the tests below would see it if the loader unpickled it."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("name", [*STATE_FILES, MARKER, *ACCELERATE_FILES])
def test_payload_in_any_checkpoint_file_never_runs(corpus: Path, run: Path, tmp_path: Path, caplog, name: str):
    marker = tmp_path / "marker"
    poison(run / "checkpoints" / "step_4" / name, marker)
    with caplog.at_level(logging.WARNING):
        step, state = resume(corpus, run)
    assert not marker.exists()
    if name in ACCELERATE_FILES:  # not listed, never opened: the checkpoint resumes as it is
        assert step == 4
        return
    assert step == 2  # fell back to the previous complete checkpoint
    assert_weights_of(state, run / "checkpoints" / "step_2")
    warned = caplog.text
    assert str(run / "checkpoints" / "step_4" / name) in warned and "may be malicious" in warned
    assert "weights_only" not in warned


@pytest.mark.parametrize("name", [*STATE_FILES, MARKER])
def test_named_poisoned_checkpoint_is_refused(corpus: Path, run: Path, tmp_path: Path, name: str):
    marker = tmp_path / "marker"
    poison(run / "checkpoints" / "step_4" / name, marker)
    with pytest.raises(CheckpointError) as info:
        resume(corpus, run, resume=str(run / "checkpoints" / "step_4"))
    message = str(info.value)
    assert str(run / "checkpoints" / "step_4" / name) in message and "may be malicious" in message
    assert "weights_only" not in message and "--resume_inexact" in message
    assert not marker.exists() and isinstance(info.value, UserError)


# --------------------------------------------------------------------------- broken checkpoints


@pytest.mark.parametrize("damage", ["zero", "half", "missing"])
@pytest.mark.parametrize("name", [*STATE_FILES, MARKER])
def test_damaged_latest_falls_back_naming_the_file(corpus: Path, run: Path, caplog, name: str, damage: str):
    path = run / "checkpoints" / "step_4" / name
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if damage == "half" else b"")
    with caplog.at_level(logging.WARNING):
        step, state = resume(corpus, run)
    assert step == 2
    assert_weights_of(state, run / "checkpoints" / "step_2")
    assert "Skipping checkpoint" in caplog.text and str(path) in caplog.text


def test_every_checkpoint_broken_is_refused_naming_each(corpus: Path, run: Path):
    for step in (2, 4):
        run.joinpath("checkpoints", f"step_{step}", "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        resume(corpus, run)
    for step in (2, 4):
        assert str(run / "checkpoints" / f"step_{step}" / "optimizer.safetensors") in str(info.value)


def test_no_loadable_model_is_refused_even_inexactly(corpus: Path, run: Path):
    for step in (2, 4):
        run.joinpath("checkpoints", f"step_{step}", "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="No checkpoint to resume from, even inexactly") as info:
        resume(corpus, run, resume_inexact=True)
    for step in (2, 4):
        assert str(run / "checkpoints" / f"step_{step}" / "model.safetensors") in str(info.value)


def test_missing_rng_state_needs_resume_inexact(corpus: Path, run: Path, caplog):
    for step in (2, 4):
        run.joinpath("checkpoints", f"step_{step}", "rng_0.json").unlink()
    with pytest.raises(CheckpointError, match="RNG state: .*rng_0.json is missing"):
        resume(corpus, run)
    reset_accelerate()
    with caplog.at_level(logging.WARNING):
        step, state = resume(corpus, run, resume_inexact=True)
    assert step == 4 and "resume_inexact: RNG state" in caplog.text
    assert_weights_of(state, run / "checkpoints" / "step_4")


def test_changed_data_position_is_refused_or_inexact(corpus: Path, run: Path):
    with pytest.raises(CheckpointError, match=r"data position .*per_device_train_batch_size 4 -> 2"):
        resume(corpus, run, per_device_train_batch_size=2)
    reset_accelerate()
    step, _ = resume(corpus, run, per_device_train_batch_size=2, resume_inexact=True)
    assert step == 4


def test_legacy_accelerate_checkpoint_is_not_loaded(corpus: Path, run: Path, tmp_path: Path, caplog):
    """A checkpoint without complete.json (Accelerate's old layout, or a save cut short) is skipped, unread."""
    legacy = run / "checkpoints" / "step_6"
    legacy.mkdir()
    marker = tmp_path / "marker"
    for name in ACCELERATE_FILES:
        poison(legacy / name, marker, update_marker=False)
    with caplog.at_level(logging.WARNING):
        step, _ = resume(corpus, run)
    assert step == 4 and not marker.exists()
    assert f"{legacy} is incomplete: {legacy / MARKER} is missing" in caplog.text


# --------------------------------------------------------------------------- kills and full disks


def _failing_write(monkeypatch, fail_at: int, error: BaseException) -> list[int]:
    """os.write that writes half of call number `fail_at` (0-based) and then raises `error`."""
    real, calls = os.write, []

    def write(fd: int, data) -> int:
        calls.append(fd)
        if len(calls) - 1 == fail_at:
            real(fd, bytes(data)[: len(data) // 2])
            raise error
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return calls


@pytest.mark.parametrize("fail_at", range(8))  # every file a checkpoint save writes, marker last
def test_kill_during_resave_keeps_the_old_checkpoint(corpus: Path, run: Path, monkeypatch, fail_at: int):
    accelerator, args, state, _ = build_state(corpus, run)
    assert resume_from_checkpoint(accelerator, args, state) == 4
    before = folder_bytes(run / "checkpoints" / "step_4")
    calls = _failing_write(monkeypatch, fail_at, KeyboardInterrupt("killed"))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(accelerator, args, 4, state)
    monkeypatch.undo()
    assert len(calls) == fail_at + 1
    assert folder_bytes(run / "checkpoints" / "step_4") == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_4"]  # no staging left


def test_completed_save_writes_eight_files(corpus: Path, run: Path, monkeypatch):
    """The kill points above cover every write: a save makes exactly 8 os.write calls on this model."""
    accelerator, args, state, _ = build_state(corpus, run)
    resume_from_checkpoint(accelerator, args, state)
    calls = _failing_write(monkeypatch, 10**9, RuntimeError("unused"))
    checkpoint.save_checkpoint(accelerator, args, 6, state)
    monkeypatch.undo()
    assert len(calls) == 8 and run.joinpath("checkpoints", "step_6", MARKER).is_file()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_kill_between_the_renames_of_a_resave_is_repaired(corpus: Path, run: Path, monkeypatch):
    accelerator, args, state, _ = build_state(corpus, run)
    resume_from_checkpoint(accelerator, args, state)
    before = folder_bytes(run / "checkpoints" / "step_4")
    real, renames = os.rename, []

    def rename(src, dst):
        renames.append(dst)
        if len(renames) == 2:  # the old folder is aside, the new one not yet in place
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(io_utils.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(accelerator, args, 4, state)
    monkeypatch.undo()
    (aside,) = (run / "checkpoints").glob(".step_4.old-*")
    # The killed process is gone by the next run: give the leftover a dead writer's PID.
    aside.rename(aside.with_name(f".step_4.old-{_dead_pid()}-{aside.name[-8:]}"))
    reset_accelerate()
    step, _ = resume(corpus, run)
    assert step == 4 and folder_bytes(run / "checkpoints" / "step_4") == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_4"]


def test_staging_left_by_a_killed_run_is_cleaned(corpus: Path, run: Path):
    pid = _dead_pid()
    leftovers = [run / "checkpoints" / f".step_6.tmp-{pid}-0123abcd", run / f".final.tmp-{pid}-89abcdef"]
    for path in leftovers:
        path.mkdir()
        path.joinpath("model.safetensors").write_bytes(b"half")
    live = run / "checkpoints" / f".step_8.tmp-{os.getpid()}-00000000"  # a live writer's: kept
    live.mkdir()
    resume(corpus, run)
    assert not any(p.exists() for p in leftovers[:1]) and live.exists()
    assert cleanup_staging(run) == [leftovers[1]]


def test_full_disk_during_a_save_says_so_and_keeps_the_old_state(corpus: Path, run: Path, monkeypatch):
    accelerator, args, state, _ = build_state(corpus, run)
    resume_from_checkpoint(accelerator, args, state)
    _failing_write(monkeypatch, 0, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(DiskFullError, match=r"^The disk is full: no space left while writing .*step_6"):
        checkpoint.save_checkpoint(accelerator, args, 6, state)
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_4"]


def test_full_disk_during_final_export_leaves_no_final(corpus: Path, run: Path, monkeypatch):
    accelerator, args, state, tokenizer = build_state(corpus, run)
    shutil.rmtree(run / "final")
    real = loop.save_tokenizer

    def save_then_fill_the_disk(tok, directory):
        real(tok, directory)
        path = Path(directory, "tokenizer.json")
        path.write_bytes(path.read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loop, "save_tokenizer", save_then_fill_the_disk)
    with pytest.raises(DiskFullError, match="The disk is full"):
        loop.export_model(accelerator, state.model, tokenizer, run / "final")
    assert not (run / "final").exists() and not list(run.glob(".final.*"))


def test_kill_during_an_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "progress.json"
    path.write_text('{"step": 2}')
    _failing_write(monkeypatch, 0, KeyboardInterrupt("killed"))
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, '{"step": 4}' * 1000)
    monkeypatch.undo()
    assert path.read_text() == '{"step": 2}' and os.listdir(tmp_path) == ["progress.json"]


def test_metrics_line_cut_by_a_kill_is_dropped_on_resume(corpus: Path, run: Path):
    accelerator, args, _, _ = build_state(corpus, run)
    path = run / "metrics.jsonl"
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows) + '\n{"step": 5, "train/lo')
    loop._trim_metrics(accelerator, args, 2)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept and all(row["step"] <= 2 for row in kept) and len(kept) < len(rows)


# --------------------------------------------------------------------------- one run, one directory


def test_fresh_run_into_a_used_folder_is_refused(corpus: Path, run: Path):
    before = run.joinpath("metrics.jsonl").read_bytes()
    with pytest.raises(loop.OutputDirInUseError, match=r"already holds a run .*--resume latest.*--overwrite"):
        train(args_for(corpus, run))
    assert run.joinpath("metrics.jsonl").read_bytes() == before and not run.joinpath(".lock").exists()


def test_overwrite_moves_the_old_run_aside_whole(corpus: Path, run: Path):
    run.joinpath("notes.txt").write_text("mine")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with contextlib.ExitStack() as stack:
        loop.claim_output_dir(args_for(corpus, run, overwrite=True), stack)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    (aside,) = run.parent.glob("run.replaced-*")
    assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == before
    assert not run.joinpath(".lock").exists()


def test_second_run_into_a_locked_folder_is_refused(corpus: Path, tmp_path: Path, caplog):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom modeling_alibi.io_utils import lock_directory\n"
         "with lock_directory(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryLockedError, match=f"in use by process {holder.pid}"):
            train(args_for(corpus, out))
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind with a dead PID
        holder.wait()
    assert out.joinpath(".lock").read_text().strip() == str(holder.pid)
    with caplog.at_level(logging.WARNING), contextlib.ExitStack() as stack:
        loop.claim_output_dir(args_for(corpus, out), stack)
        assert out.joinpath(".lock").read_text().strip() == str(os.getpid())
    assert f"stale lock {out / '.lock'} of process {holder.pid}" in caplog.text


def test_finetune_refuses_an_existing_final_before_any_work(tmp_path: Path):
    from modeling_alibi.training import finetuning

    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    final.joinpath("model.safetensors").write_bytes(b"earlier result")
    argv = [str(tmp_path / "no-such-model"), "--train-files", "x.txt", "--output", str(tmp_path / "run")]
    with pytest.raises(loop.OutputDirInUseError, match=r"final already exists\. Pass --overwrite"):
        finetuning.main(argv)
    assert final.joinpath("model.safetensors").read_bytes() == b"earlier result"
    with pytest.raises(OSError, match="no-such-model"):  # with --overwrite it goes on, to load the model
        finetuning.main([*argv, "--overwrite"])
    assert final.joinpath("model.safetensors").read_bytes() == b"earlier result"


def test_resume_and_overwrite_together_are_refused(corpus: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="resume and overwrite contradict"):
        args_for(corpus, tmp_path, resume="latest", overwrite=True)


# --------------------------------------------------------------------------- NaN and final/


def test_non_finite_loss_stops_training_at_that_step(corpus: Path, tmp_path: Path, monkeypatch):
    """A NaN loss (here: the third training batch's cross-entropy, which the loop computes with the head fused into
    the loss) stops training naming the step, and nothing from that step on is saved."""
    real, calls = alibi_loss.linear_cross_entropy, []

    def cross_entropy(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss  # the third training batch: step 3

    monkeypatch.setattr(alibi_loss, "linear_cross_entropy", cross_entropy)
    out = tmp_path / "nan"
    with pytest.raises(loop.NonFiniteLossError, match=r"The training loss is nan at step 3; stopped"):
        train(args_for(corpus, out, save_every=1, validation_files=[]))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2"]
    assert not (out / "final").exists() and sorted(metrics(out)) == [1, 2]


def test_a_batch_without_valid_labels_does_not_stop_training(corpus: Path, tmp_path: Path, monkeypatch):
    """The model defines that loss as 0 with a warning (its gradient is 0): training goes on past that batch."""
    real, calls = loop.collate_blocks, []

    def collate(examples):
        batch = real(examples)
        calls.append(1)
        if len(calls) == 3:  # the third training batch: step 3
            batch["labels"][:] = -100
        return batch

    monkeypatch.setattr(loop, "collate_blocks", collate)
    out = tmp_path / "ignored"
    train(args_for(corpus, out, save_every=1, validation_files=[]))
    assert (out / "final" / "config.json").is_file() and 3 in metrics(out)


def test_export_that_does_not_load_back_is_refused(corpus: Path, run: Path, monkeypatch):
    accelerator, _, state, tokenizer = build_state(corpus, run)
    shutil.rmtree(run / "final")
    real = loop.save_tokenizer

    def truncated_tokenizer(tok, directory):  # a write that silently came out short
        real(tok, directory)
        path = Path(directory, "tokenizer.json")
        path.write_bytes(path.read_bytes()[:200])

    monkeypatch.setattr(loop, "save_tokenizer", truncated_tokenizer)
    with pytest.raises(loop.ExportVerificationError, match="the tokenizer does not load"):
        loop.export_model(accelerator, state.model, tokenizer, run / "final")
    assert not (run / "final").exists() and not list(run.glob(".final.*"))


def test_export_with_a_wrong_tensor_is_refused(corpus: Path, run: Path, monkeypatch):
    accelerator, _, state, tokenizer = build_state(corpus, run)
    model_class = type(accelerator.unwrap_model(state.model))
    real = model_class.save_pretrained

    def save_perturbed(self, directory, state_dict=None, **kwargs):
        state_dict = dict(state_dict)
        state_dict["model.norm.weight"] = state_dict["model.norm.weight"] + 1
        return real(self, directory, state_dict=state_dict, **kwargs)

    monkeypatch.setattr(model_class, "save_pretrained", save_perturbed)
    before = folder_bytes(run / "final")
    with pytest.raises(loop.ExportVerificationError, match="model.norm.weight: differs"):
        loop.export_model(accelerator, state.model, tokenizer, run / "final")
    assert folder_bytes(run / "final") == before  # the previous final/ is untouched


# --------------------------------------------------------------------------- several processes


@pytest.mark.slow
def test_two_process_resume_reproduces_the_uninterrupted_run(corpus: Path, tmp_path: Path):
    """Each process saves and restores its own RNG state (rng_0, rng_1); the resumed curve is the same (~70 s)."""
    whole = args_for(corpus, tmp_path / "whole", max_steps=6, per_device_train_batch_size=2)
    result = launch_two_cpu_processes(whole)
    assert result.returncode == 0, result.stderr[-4000:]
    step_6 = tmp_path / "whole" / "checkpoints" / "step_6"
    assert {"rng_0.json", "rng_1.json", "rng_0.safetensors", "rng_1.safetensors"} <= set(os.listdir(step_6))
    cut = Path(shutil.copytree(tmp_path / "whole", tmp_path / "cut"))  # as if killed right after step 4's save
    shutil.rmtree(cut / "checkpoints" / "step_6")
    shutil.rmtree(cut / "final")
    resumed = args_for(corpus, cut, max_steps=6, per_device_train_batch_size=2, resume="latest")
    result = launch_two_cpu_processes(resumed)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Resumed from" in result.stderr and "step_4 at step 4" in result.stderr
    expected, actual = metrics(tmp_path / "whole"), metrics(cut)
    assert list(actual) == list(range(1, 7))
    torch.testing.assert_close(torch.tensor(list(actual.values())), torch.tensor(list(expected.values())),
                               rtol=0, atol=1e-6)
