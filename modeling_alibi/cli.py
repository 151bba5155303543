"""The `alibi-lm` command: one subcommand per task, each implemented by a module's `main(argv)`."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import sys
from collections.abc import Iterator

from .errors import UserError

# subcommand -> (module, one-line help). Modules are imported only when their subcommand runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("modeling_alibi.demo", "train short, evaluate long, generate: the README's main job"),
    "export": ("modeling_alibi.hub", "write a Hub-ready folder (weights, remote code, card)"),
    "convert-fairseq": ("modeling_alibi.fairseq.conversion", "convert a fairseq ALiBi checkpoint"),
    "eval-ppl": ("modeling_alibi.evaluation.perplexity", "corpus perplexity with fairseq-eval-lm semantics"),
    "train": ("modeling_alibi.training.loop", "train with Accelerate (use `accelerate launch` for several GPUs)"),
    "extrapolate": ("modeling_alibi.evaluation.extrapolation", "perplexity against evaluation length, table and plot"),
    "finetune": ("modeling_alibi.training.finetuning", "fine-tune a saved model with transformers.Trainer"),
}


def usage() -> str:
    lines = ["usage: alibi-lm COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `alibi-lm COMMAND --help` for a command's options."]
    return "\n".join(lines)


GLOBAL_OPTIONS = """
global options (before COMMAND):
  --debug          show the traceback of errors the user can fix (internal errors always show it)
  -v, --verbose    show the libraries' logging and progress bars (transformers, datasets, accelerate)"""
# Errors of the user's files or machine, reported in one line like a UserError.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


class UsageError(UserError):
    """A command line argparse refused."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = verbose = False
    while argv and argv[0] in ("--debug", "-v", "--verbose"):
        debug, verbose = debug or argv[0] == "--debug", verbose or argv[0] != "--debug"
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage() + GLOBAL_OPTIONS)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"alibi-lm: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        with argparse_raises(), library_chatter(verbose):
            module = importlib.import_module(COMMANDS[command][0])
            return int(module.main(rest) or 0)
    except Exception as err:  # noqa: BLE001  (user errors are reported in one line; anything else re-raises)
        message = user_error_message(err)
        if message is None or debug:
            raise
        print(f"alibi-lm {command}: error: {message}", file=sys.stderr)
        return 2


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of an error the user can fix, or None for an internal error (shown as a traceback)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" while writing {err.filename}" if err.filename else ""
        return f"the disk is full{where}: free some space or choose an output on another disk."
    if isinstance(err, UsageError):
        return str(err)
    if not isinstance(err, (UserError, *USER_OS_ERRORS)):
        return None
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


@contextlib.contextmanager
def argparse_raises() -> Iterator[None]:
    """While a command runs, argparse errors raise UsageError (one line) instead of printing usage and exiting."""

    def error(parser: argparse.ArgumentParser, message: str) -> None:
        raise UsageError(f"{message} (see `{parser.prog} --help`)")

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


@contextlib.contextmanager
def library_chatter(verbose: bool) -> Iterator[None]:
    """Our own INFO lines always; the libraries' logging and progress bars only with -v. Restored afterwards."""
    import transformers
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    hf_logging = transformers.utils.logging
    saved = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    loggers = [logging.getLogger(name) for name in ("modeling_alibi", "accelerate", "datasets", "torch")]
    levels = [logger.level for logger in loggers]
    loggers[0].setLevel(logging.INFO)
    for logger in loggers[1:]:
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
    hf_logging.set_verbosity(hf_logging.INFO if verbose else hf_logging.ERROR)
    (hf_logging.enable_progress_bar if verbose else hf_logging.disable_progress_bar)()
    (enable_progress_bars if verbose else disable_progress_bars)()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "0" if verbose else "1")  # read at datasets' import
    try:
        yield
    finally:
        hf_logging.set_verbosity(saved[0])
        (hf_logging.enable_progress_bar if saved[1] else hf_logging.disable_progress_bar)()
        (disable_progress_bars if saved[2] else enable_progress_bars)()
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
