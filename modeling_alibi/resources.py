"""The files the package ships beside its code: model and training presets, accelerate configs, the demo corpus.

`configuration/` and `data/` at the repository's top level are the only copy. A wheel carries them inside the
package as `modeling_alibi/configuration/` and `modeling_alibi/data/` (pyproject.toml maps them there); a checkout
or an editable install reads them where they are. Every lookup of a shipped file goes through `resource_path`.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def resource_path(*parts: str) -> Path:
    """The path of a shipped file or folder, e.g. `resource_path("configuration", "models", "tiny.json")`.

    The installed package's copy wins; a source checkout (editable install, PYTHONPATH) falls back to the
    repository's top-level folder. Raises FileNotFoundError naming both places when neither has it.
    """
    parts = tuple(piece for part in parts for piece in str(part).split("/"))
    packaged = importlib.resources.files(__package__).joinpath(*parts)
    if isinstance(packaged, Path) and packaged.exists():  # a zip import gives a Traversable, never a Path
        return packaged
    checkout = CHECKOUT.joinpath(*parts)
    if checkout.exists():
        return checkout
    raise FileNotFoundError(f"{'/'.join(parts)} is not shipped with this installation (looked in {packaged} and "
                            f"{checkout}); reinstall alibi-lm from its repository.")


def local_or_shipped(path: str | Path) -> str:
    """`path` itself when it exists or cannot name a shipped file, else the shipped file of that relative path.

    So `--config configuration/train/tiny-cpu.yaml` and the presets' `data/gutenberg-tiny/train.txt` work from any
    working directory; a local file of the same name wins. Globs, absolute paths and `..` are left alone.
    """
    local = Path(path)
    if local.exists() or local.is_absolute() or ".." in local.parts or any(c in str(path) for c in "*?["):
        return str(path)
    try:
        return str(resource_path(*local.parts))
    except FileNotFoundError:
        return str(path)


def preset_names(kind: str) -> list[str]:
    """Names of the shipped presets of one kind: "models" (JSON), "train" or "accelerate" (YAML)."""
    try:
        folder = resource_path("configuration", kind)
    except FileNotFoundError:
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix in (".json", ".yaml"))


__all__ = ["local_or_shipped", "preset_names", "resource_path"]
