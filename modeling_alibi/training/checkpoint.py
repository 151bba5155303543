"""Training checkpoints in safe formats only (safetensors for tensors, JSON for the rest): resuming never unpickles.

`checkpoints/step_N/` holds `model.safetensors`, `optimizer.safetensors` + `optimizer.json`, `scheduler.json`,
`scaler.json` (fp16 only), `rng_<rank>.safetensors` + `rng_<rank>.json` per process, `progress.json` (the step and
the data position) and, written last, `complete.json` listing every file and its size. The folder is filled as a
hidden staging sibling and renamed into place. Accelerate's `save_state`/`load_state` are not used: its loader
unpickles registered objects with `weights_only=False`.

Under FSDP (FSDP2) the files are the same: torch's `get_state_dict` gathers the full model and optimizer states onto
the main process to save (the optimizer's keyed by parameter name, not number), and `set_model_state_dict` /
`set_optimizer_state_dict` shard what every process read back onto its parameters. DeepSpeed is refused.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..errors import UserError
from ..io_utils import atomic_write_bytes, atomic_write_text, cleanup_staging, publish_directory, staging_path

try:  # torch's full-state API for FSDP; a torch build without distributed has neither
    from torch.distributed.checkpoint import state_dict as dsd
except ImportError:  # pragma: no cover
    dsd = None

logger = logging.getLogger(__name__)

MARKER = "complete.json"
# What the data order of a resumed run depends on; a change in any of them means resuming cannot be exact.
POSITION_KEYS = ("num_processes", "per_device_train_batch_size", "gradient_accumulation_steps", "seq_len", "seed",
                 "batches_per_epoch")


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from (exactly): the message names the folder and the file or state."""


@dataclass
class TrainState:
    """What a checkpoint saves and restores, besides the RNGs: the prepared model, optimizer and scheduler, and the
    data position (`POSITION_KEYS`) the step count is read against."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    position: dict[str, int]


@dataclass
class _Loaded:
    """A checkpoint read into memory (nothing applied yet); `problems` names the states that cannot be restored."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    parts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def check_supported(accelerator: Accelerator) -> None:
    """DeepSpeed's engine keeps its states to itself and saves them in its own format, whose loader unpickles:
    refuse before training. DDP, FSDP and a single process are supported."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise CheckpointError("Checkpoints (save_every, resume) are not supported with DeepSpeed: its engine saves "
                              "its own checkpoint format, which unpickles on load. Train with DDP or FSDP, or set "
                              "save_every=0.")


def _sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def _torch_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's `AcceleratedOptimizer` (whose `step` also drives the grad scaler)."""
    return getattr(optimizer, "optimizer", optimizer)


# --------------------------------------------------------------------------- saving


def save_checkpoint(accelerator: Accelerator, args: Any, step: int, state: TrainState) -> Path:
    """Write `output_dir/checkpoints/step_<step>` (every process takes part) and return its path."""
    final = Path(args.output_dir, "checkpoints", f"step_{step}")
    staging = [staging_path(final) if accelerator.is_main_process else None]
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(broadcast_object_list(staging)[0])  # one staging folder, named by the main process
    if accelerator.is_main_process:
        staging.mkdir()
    accelerator.wait_for_everyone()
    try:
        _write_all(accelerator, staging, final, step, state)
    except BaseException:  # Ctrl-C too; a hard kill leaves the staging folder to the next run's cleanup_staging
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _write_all(accelerator: Accelerator, staging: Path, final: Path, step: int, state: TrainState) -> None:
    _write_rng(staging, accelerator.process_index)
    optimizer_state = None  # without FSDP, the main process reads it from the optimizer
    if _sharded(accelerator):  # every process takes part: full states on the main process's CPU, {} elsewhere
        options = dsd.StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optimizer_state = dsd.get_state_dict(state.model, _torch_optimizer(state.optimizer),
                                                          options=options)
    else:
        model_state = accelerator.get_state_dict(state.model)  # every process takes part
    if accelerator.is_main_process:
        _write_main(staging, accelerator, step, state, model_state, optimizer_state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
        atomic_write_text(staging / MARKER, json.dumps({"step": step, "files": files}, indent=1))
        publish_directory(staging, final, overwrite=True)  # a re-save of a step replaces it only once complete
    accelerator.wait_for_everyone()


def _write_main(staging: Path, accelerator: Accelerator, step: int, state: TrainState,
                model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any] | None) -> None:
    # Copies: safetensors refuses tensors that share memory (tied embeddings), and the file must not alias training.
    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model_state.items()}
    atomic_write_bytes(staging / "model.safetensors", save_safetensors(tensors))
    if optimizer_state is None:
        optimizer_state = state.optimizer.state_dict()
    optimizer_tensors, optimizer_meta = _split_optimizer(optimizer_state)
    atomic_write_bytes(staging / "optimizer.safetensors", save_safetensors(optimizer_tensors))
    atomic_write_text(staging / "optimizer.json", json.dumps(optimizer_meta))
    atomic_write_text(staging / "scheduler.json", json.dumps(state.scheduler.state_dict()))
    if accelerator.scaler is not None:
        atomic_write_text(staging / "scaler.json", json.dumps(accelerator.scaler.state_dict()))
    progress = {"step": step, "position": state.position}
    atomic_write_text(staging / "progress.json", json.dumps(progress, indent=1))  # the last file of the state


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict as safetensors tensors (`<param>.<name>`) plus JSON for everything else. Its
    parameters are numbers, or (from FSDP's `get_state_dict`) names, which hold dots: the state names do not."""
    tensors, state = {}, {}
    for param_id, entry in state_dict["state"].items():
        state[str(param_id)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                state[str(param_id)][name] = value
    return tensors, {"state": state, "param_groups": state_dict["param_groups"]}


def _write_rng(staging: Path, rank: int) -> None:
    """This process's Python, NumPy, torch (and CUDA) generator states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": [version, list(python_state), gauss],
              "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    atomic_write_bytes(staging / f"rng_{rank}.safetensors", save_safetensors(tensors))
    atomic_write_text(staging / f"rng_{rank}.json", json.dumps(states))


# --------------------------------------------------------------------------- resuming


def resume_from_checkpoint(accelerator: Accelerator, args: Any, state: TrainState) -> int:
    """Restore the checkpoint `args.resume` names (`latest`: the newest one that restores exactly) and return its
    step; 0 without `resume`, or with `latest` and no checkpoint yet.

    Every file is read with a safe loader before anything is applied. A checkpoint with an unreadable, missing or
    truncated file, or whose data position differs from this run, is skipped by `latest` with a warning naming the
    file; a named checkpoint like that is refused. `args.resume_inexact` accepts the newest checkpoint whose model
    and step can be read, restoring what it can, with a warning for each state it cannot restore.
    """
    if args.resume is None:
        return 0
    root = Path(args.output_dir, "checkpoints")
    if accelerator.is_main_process:
        cleanup_staging(root)  # what a killed save left behind
    if args.resume == "latest":
        paths = sorted(_step_folders(root), key=lambda p: -int(p.name.removeprefix("step_")))
        if not paths:
            logger.warning("resume=latest: no checkpoint in %s, starting from step 0", root)
            return 0
    else:
        paths = [Path(args.resume)]
    loaded = _choose(accelerator, paths, args, state)
    for problem in loaded.problems:
        logger.warning("resume_inexact: %s; continuing without it", problem)
    _apply(accelerator, state, loaded, args.gradient_accumulation_steps)
    logger.warning("Resumed from %s at step %d", loaded.path, loaded.step)
    return loaded.step


def _step_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
            and p.name.removeprefix("step_").isdigit()]


def _choose(accelerator: Accelerator, paths: list[Path], args: Any, state: TrainState) -> _Loaded:
    """The newest checkpoint every process can restore exactly (or, inexactly allowed, at least load)."""
    reasons = {}
    for exact_only in (True, False) if args.resume_inexact else (True,):
        for path in paths:
            loaded, reason = _try_read(accelerator, path, state)
            flags = torch.tensor([[loaded is not None and not loaded.problems, loaded is not None]],
                                 device=accelerator.device)
            exact, usable = accelerator.gather(flags).min(dim=0).values.tolist()
            if exact or (usable and not exact_only):
                return loaded
            problems = (loaded.problems if loaded else []) or ["another process could not restore it"]
            reasons.setdefault(path, reason or "; ".join(problems))
            if exact_only and len(paths) > 1:
                logger.warning("Skipping checkpoint %s: %s", path, reasons[path])
    listed = " | ".join(f"{path}: {reason}" for path, reason in reasons.items())
    if args.resume_inexact:
        raise CheckpointError(f"No checkpoint to resume from, even inexactly: {listed}.")
    raise CheckpointError(f"Cannot resume exactly: {listed}. Pass --resume_inexact to continue with what can be "
                          "restored, or fix or remove these checkpoints.")


def _try_read(accelerator: Accelerator, path: Path, state: TrainState) -> tuple[_Loaded | None, str | None]:
    try:
        return _read_checkpoint(path, accelerator.process_index, state.position, accelerator.scaler is not None), None
    except CheckpointError as error:
        return None, str(error)


def _read_checkpoint(path: Path, rank: int, position: dict[str, int], need_scaler: bool) -> _Loaded:
    """Read a checkpoint into memory with safe loaders only; a missing model or step raises `CheckpointError`."""
    flaws = _check_files(path)
    progress = _read(path / "progress.json", "json")
    if not isinstance(progress, dict) or not isinstance(progress.get("step"), int):
        raise _unsafe_file(path / "progress.json", ValueError("no integer 'step'"))
    loaded = _Loaded(path, progress["step"], _read(path / "model.safetensors", "safetensors"))
    readers = {"optimizer state": _read_optimizer, "scheduler state": _read_scheduler, "RNG state": _read_rng}
    if need_scaler:
        readers["grad scaler state"] = _read_scaler
    files = {"optimizer state": ["optimizer.safetensors", "optimizer.json"], "scheduler state": ["scheduler.json"],
             "RNG state": [f"rng_{rank}.safetensors", f"rng_{rank}.json"], "grad scaler state": ["scaler.json"]}
    for part, reader in readers.items():
        flaw = next((flaws[name] for name in files[part] if name in flaws), None)
        if flaw is not None:
            loaded.problems.append(f"{part}: {flaw}")
            continue
        try:
            loaded.parts[part] = reader(path, rank)
        except CheckpointError as error:
            loaded.problems.append(f"{part}: {error}")
    saved = progress.get("position") if isinstance(progress.get("position"), dict) else {}
    changed = [f"{key} {saved.get(key)} -> {position[key]}" for key in POSITION_KEYS if saved.get(key) != position[key]]
    if changed:
        loaded.problems.append(f"data position of {path}: this run differs ({', '.join(changed)})")
    return loaded


def _check_files(path: Path) -> dict[str, str]:
    """The marker exists, and every file it lists is there with its recorded size. A flaw in the model or the
    step raises `CheckpointError`; the flaws of other files are returned by file name."""
    marker = path / MARKER
    if not marker.is_file():
        raise CheckpointError(f"{path} is incomplete: {marker} is missing (its save was interrupted, or it is not "
                              "an alibi-lm checkpoint)")
    files = _read(marker, "json")
    files = files.get("files") if isinstance(files, dict) else None
    if not isinstance(files, dict) or not {"model.safetensors", "progress.json"} <= files.keys():
        raise _unsafe_file(marker, ValueError("no list of the checkpoint's files"))
    flaws = {}
    for name, size in files.items():
        file = path / Path(name).name
        if not file.is_file():
            flaws[name] = f"{file} is missing (listed in {marker})"
        elif file.stat().st_size != size:
            flaws[name] = f"{file} is truncated or changed: {file.stat().st_size} bytes, {marker} says {size}"
    for name in ("model.safetensors", "progress.json"):
        if name in flaws:
            raise CheckpointError(flaws[name])
    return flaws


def _unsafe_file(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"{path} cannot be read safely ({type(error).__name__}: {error}): it is corrupt, truncated "
                           "or not written by alibi-lm, and may be malicious. Nothing in it was run")


def _read(path: Path, kind: str) -> Any:
    """A checkpoint file through a safe loader, 'json' or 'safetensors': nothing is unpickled."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    try:
        return json.loads(data.decode("utf-8")) if kind == "json" else load_safetensors(data)
    except Exception as error:  # safetensors raises its own SafetensorError, JSON ValueError, UTF-8 decode errors
        raise _unsafe_file(path, error) from error


def _read_optimizer(path: Path, rank: int) -> dict[str, Any]:
    tensors, meta = _read(path / "optimizer.safetensors", "safetensors"), _read(path / "optimizer.json", "json")
    try:
        state = {_param_key(param): dict(entry) for param, entry in meta["state"].items()}
        for key, tensor in tensors.items():
            param, name = key.rsplit(".", 1)
            state[_param_key(param)][name] = tensor
        return {"state": state, "param_groups": list(meta["param_groups"])}
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise _unsafe_file(path / "optimizer.json", error) from error


def _param_key(key: str) -> int | str:
    """A parameter number (saved without FSDP) as the int torch's optimizer uses; a parameter name as it is."""
    return int(key) if key.isdecimal() else key


def _read_scheduler(path: Path, rank: int) -> dict[str, Any]:
    state = _read(path / "scheduler.json", "json")
    if not isinstance(state, dict) or not isinstance(state.get("last_epoch"), int):
        raise _unsafe_file(path / "scheduler.json", ValueError("not a scheduler state"))
    return state


def _read_scaler(path: Path, rank: int) -> dict[str, Any]:
    state = _read(path / "scaler.json", "json")
    if not isinstance(state, dict):
        raise _unsafe_file(path / "scaler.json", ValueError("not a grad scaler state"))
    return state


def _read_rng(path: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, states = _read(path / f"rng_{rank}.safetensors", "safetensors"), _read(path / f"rng_{rank}.json", "json")
    try:
        python, numpy = states["python"], states["numpy"]
        ok = "torch" in tensors and len(python) == 3 and len(numpy) == 5
    except (KeyError, TypeError) as error:
        raise _unsafe_file(path / f"rng_{rank}.json", error) from error
    if not ok:
        raise _unsafe_file(path / f"rng_{rank}.json", ValueError("not the RNG states of a process"))
    return tensors, states


def _apply(accelerator: Accelerator, state: TrainState, loaded: _Loaded, accumulation: int) -> None:
    """Load what was read into the model, optimizer, scheduler, scaler and generators."""
    parts = loaded.parts
    try:
        if _sharded(accelerator):  # every process passes the full state it read and keeps its shard
            full = dsd.StateDictOptions(full_state_dict=True)
            dsd.set_model_state_dict(state.model, _in_one_order(loaded.model), options=full)
        else:
            accelerator.unwrap_model(state.model).load_state_dict(loaded.model)
    except RuntimeError as error:
        raise CheckpointError(f"{loaded.path / 'model.safetensors'} does not fit this model: {error}") from error
    try:
        if "optimizer state" in parts:
            _load_optimizer(accelerator, state, parts["optimizer state"])
        if "scheduler state" in parts:
            state.scheduler.load_state_dict(parts["scheduler state"])
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        message = f"{loaded.path}: the optimizer or scheduler state does not fit this run: {error}"
        raise CheckpointError(message) from error
    if "grad scaler state" in parts:
        accelerator.scaler.load_state_dict(parts["grad scaler state"])
    if "RNG state" in parts:
        _set_rng(*parts["RNG state"])
    accelerator.step = loaded.step * accumulation  # Accelerate's micro-batch count (restored by its load_state too)


def _load_optimizer(accelerator: Accelerator, state: TrainState, saved: dict[str, Any]) -> None:
    if not _sharded(accelerator):
        state.optimizer.load_state_dict(saved)
        return
    optimizer = _torch_optimizer(state.optimizer)  # every process passes the full state it read, keeps its shard
    saved = _in_one_order(_keyed_by_name(state.model, optimizer, saved))
    dsd.set_optimizer_state_dict(state.model, optimizer, saved, options=dsd.StateDictOptions(full_state_dict=True))


def _in_one_order(state: dict[Any, Any]) -> dict[Any, Any]:
    """`state` with its keys (and those of the dicts in it) sorted. FSDP shards each tensor with a collective, in
    the dict's order, which must be the same on every process; safetensors loads its tensors in a random order."""
    return {key: _in_one_order(value) if isinstance(value, dict) else value
            for key, value in sorted(state.items(), key=lambda item: str(item[0]))}


def _keyed_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` with parameter names for its parameter numbers (a checkpoint saved without FSDP), as torch's
    `set_optimizer_state_dict` needs. The numbers follow the optimizer's parameter order, as `load_state_dict` reads
    them, and so do the names torch's `get_optimizer_state_dict` lists."""
    numbers = [number for group in saved["param_groups"] for number in group["params"]]
    if not all(isinstance(number, int) for number in [*numbers, *saved["state"]]):
        return saved
    current = dsd.get_optimizer_state_dict(model, optimizer)["param_groups"]  # this process's shards: no gathering
    names = [name for group in current for name in group["params"]]
    if len(names) != len(numbers):
        raise ValueError(f"the saved optimizer state holds {len(numbers)} parameters, this optimizer {len(names)}")
    name = dict(zip(numbers, names, strict=True))
    groups = [group | {"params": [name[number] for number in group["params"]]} for group in saved["param_groups"]]
    return {"state": {name[number]: entry for number, entry in saved["state"].items()}, "param_groups": groups}


def _set_rng(tensors: dict[str, torch.Tensor], states: dict[str, Any]) -> None:
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


__all__ = ["MARKER", "CheckpointError", "TrainState", "check_supported", "resume_from_checkpoint", "save_checkpoint"]
