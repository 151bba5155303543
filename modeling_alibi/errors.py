"""Errors the user can fix. The `alibi-lm` command prints their one-line message and exits with status 2."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, files or environment; the message names it and says how to fix it."""


class InputError(UserError, ValueError):
    """An input file or folder that is missing, unreadable, or not what the command needs."""


class OutputExistsError(UserError, FileExistsError):
    """An output that exists and would be replaced without --overwrite."""


def check_output_free(path: str | os.PathLike, overwrite: bool, flag: str = "--output") -> Path:
    """Refuse an existing output without `overwrite`, and an output whose parent is a file; before any work."""
    path = Path(path)
    if path.exists() and not overwrite:
        kind = "folder" if path.is_dir() else "file"
        raise OutputExistsError(f"{flag} {path}: the {kind} exists; pass --overwrite to replace it, or choose another.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{flag} {path}: {parent} is a file, not a folder; choose another output.")
            break
    return path


def is_run_folder(path: str | os.PathLike) -> bool:
    """True for an `alibi-lm train`/`finetune` output folder: no config.json of its own, a saved model in final/."""
    path = Path(path)
    return path.is_dir() and not (path / "config.json").is_file() and (path / "final" / "config.json").is_file()


def check_not_run_folder(path: str | os.PathLike) -> None:
    """Raise for a training run folder, whose model is in RUN/final: loading the run folder itself fails far from
    the cause (transformers asks for sentencepiece or tiktoken)."""
    if is_run_folder(path):
        final = Path(path) / "final"
        raise InputError(f"{os.fspath(path)} is a training run folder; use {final} (the model it saved at the end).")


def check_model_folder(path: str | os.PathLike, flag: str = "model") -> None:
    """A path that looks local must be a saved model folder (config.json); a Hub id (`org/name`, `name`) passes."""
    check_not_run_folder(path)
    text = os.fspath(path)
    if Path(text).is_dir():
        if not Path(text, "config.json").is_file():
            raise InputError(f"{flag} {text}: the folder has no config.json, so it is not a saved model folder.")
        check_saved_config(text)
        return
    if Path(text).exists():
        raise InputError(f"{flag} {text}: a file, not a model folder (a folder written by save_pretrained or export).")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) or text.startswith("."):
        raise InputError(f"{flag} {text}: no such model folder; check the path (or give a Hub id as org/name).")


def check_saved_config(folder: str | os.PathLike) -> None:
    """A model folder's ALiBi config.json must parse and pass `AlibiConfig`'s checks: said now, not as a traceback
    from deep inside `from_pretrained`. No config.json, or another model type (a GPT-2 baseline), passes."""
    path = Path(folder, "config.json")
    if not path.is_file():
        return
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not a JSON file ({error}); re-save the model or restore the file.") from None
    if not isinstance(config, dict) or config.get("model_type") != "alibi":
        return
    from .configuration_alibi import AlibiConfig

    try:
        AlibiConfig.from_dict(config)
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: {error}") from None


def not_utf8(path: str | os.PathLike, err: UnicodeDecodeError) -> InputError:
    """The error for a file that is not UTF-8 text (binary, or Latin-1 and other legacy encodings)."""
    return InputError(
        f"{os.fspath(path)} is not UTF-8 text (byte {err.object[err.start:err.start + 1].hex()} at offset "
        f"{err.start} of a read block): convert it, e.g. `iconv -f latin1 -t utf-8`, or pass the right file."
    )


def check_input_file(path: str | os.PathLike, flag: str) -> None:
    """An input file must exist and be a file; said before any work starts."""
    if not Path(path).is_file():
        what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
        raise InputError(f"{flag} {os.fspath(path)}: the file {what}.")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `minimum`, so that argparse names the flag that got a bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse
