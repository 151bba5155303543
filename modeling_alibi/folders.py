"""Where the tools expect a model folder: tell a training run folder (RUN/final, RUN/checkpoints) from a model."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


def is_run_folder(path: str | Path) -> bool:
    """True for an `alibi-lm train`/`finetune` output folder: no config.json of its own, a saved model in final/."""
    path = Path(path)
    return path.is_dir() and not (path / "config.json").is_file() and (path / "final" / "config.json").is_file()


def require_model_folder(path: str | Path) -> None:
    """Raise UserError when `path` is a training run folder, whose model is in RUN/final.

    Loading the run folder itself fails far from the cause (transformers asks for sentencepiece or tiktoken),
    so the tools check first. Hub ids and anything else pass through to `from_pretrained` unchanged.
    """
    if is_run_folder(path):
        final = Path(path) / "final"
        raise UserError(f"{path} is a training run folder; use {final} (the model it saved at the end).")


__all__ = ["is_run_folder", "require_model_folder"]
