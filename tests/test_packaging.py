"""The package as users install it: a non-editable wheel carries every module, preset, config and the demo corpus.

The wheel test builds the wheel from this checkout, installs it with `pip install --no-deps --target` on top of the
test environment, and runs `alibi-lm` with only the installed copy importable, from a folder outside the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from modeling_alibi.resources import local_or_shipped, preset_names, resource_path

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject() -> None:
    """pyproject.toml lists packages by hand (package-dir needs it): a new subpackage must be added there."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "modeling_alibi").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert {"modeling_alibi.configuration", "modeling_alibi.data"} <= listed


def test_resources_are_found_in_a_checkout() -> None:
    assert resource_path("configuration", "models", "tiny.json") == REPO / "configuration" / "models" / "tiny.json"
    assert resource_path("configuration/train/demo-cpu.yaml").is_file()
    assert {"tiny", "demo-cpu"} <= set(preset_names("models"))
    assert {"tiny-cpu", "demo-cpu"} <= set(preset_names("train"))
    assert {"cpu", "single_gpu"} <= set(preset_names("accelerate"))
    with pytest.raises(FileNotFoundError, match="not shipped"):
        resource_path("configuration", "models", "no-such-preset.json")


def test_local_files_win_over_shipped_ones(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = local_or_shipped("data/gutenberg-tiny/train.txt")
    assert shipped == str(REPO / "data" / "gutenberg-tiny" / "train.txt")
    (tmp_path / "data" / "gutenberg-tiny").mkdir(parents=True)
    (tmp_path / "data" / "gutenberg-tiny" / "train.txt").write_text("mine\n", encoding="utf-8")
    assert local_or_shipped("data/gutenberg-tiny/train.txt") == "data/gutenberg-tiny/train.txt"
    assert local_or_shipped("missing/file.txt") == "missing/file.txt"  # the caller's own error names it
    assert local_or_shipped("data/*.txt") == "data/*.txt"  # globs are the data loader's business


def _missing_build_requirements() -> list[str]:
    """pyproject's [build-system] requires that this environment does not satisfy (building offline uses these)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    requires = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]["requires"]
    missing = []
    for text in requires:
        requirement = Requirement(text)
        try:
            if not requirement.specifier.contains(version(requirement.name), prereleases=True):
                missing.append(text)
        except PackageNotFoundError:
            missing.append(text)
    return missing


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """Build the wheel without build isolation (offline) and install only it into a fresh --target folder."""
    missing = _missing_build_requirements()
    if missing:  # e.g. a venv with an old setuptools: pip would need the network to build in isolation
        pytest.skip(f"this environment lacks the build requirements {missing}")
    root = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=300)
    wheel = next((root / "dist").glob("alibi_lm-*.whl"))
    target = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return target


def _run_installed(target: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`alibi-lm ARGS` through the console script pip wrote, with only the wheel's copy on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="200")
    return subprocess.run([sys.executable, str(target / "bin" / "alibi-lm"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_wheel_carries_every_module_and_shipped_file(installed_wheel) -> None:
    wheel = next(installed_wheel.parent.glob("dist/alibi_lm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "modeling_alibi").rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    shipped = [p for folder in ("models", "train", "accelerate") for p in (REPO / "configuration" / folder).iterdir()]
    shipped += list((REPO / "data" / "gutenberg-tiny").iterdir())
    expected = {"modeling_alibi/" + p.relative_to(REPO).as_posix() for p in shipped}
    assert expected <= names, sorted(expected - names)  # a new preset with an unlisted suffix would be left out
    assert not any("wikitext-103" in name for name in names)  # the tests' slice stays out of the wheel
    assert wheel.stat().st_size < 2_000_000


def test_installed_wheel_commands_start_outside_the_checkout(installed_wheel, tmp_path) -> None:
    """The issue's failure: `demo` looked for site-packages/configuration/ and stopped with FileNotFoundError."""
    demo = _run_installed(installed_wheel, tmp_path, "demo", "--help")
    assert demo.returncode == 0, demo.stderr
    assert "usage: alibi-lm demo" in demo.stdout
    help_text = _run_installed(installed_wheel, tmp_path, "train", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "tiny-cpu" in help_text.stdout  # the shipped presets are named in --config's help


@pytest.mark.slow  # about 40-90 s on 2 shared cores: a BPE tokenizer is trained on the shipped corpus
def test_installed_wheel_trains_from_its_presets(installed_wheel, tmp_path) -> None:
    """The issue's failure: `train --model tiny` found no presets. Here the preset, model preset and corpus all
    come from the wheel."""
    run = _run_installed(installed_wheel, tmp_path, "train", "--config", "tiny-cpu", "--max_steps", "2",
                         "--vocab_size", "300", "--per_device_train_batch_size", "2", "--seq_len", "32",
                         "--eval_batches", "1", "--save_every", "0", "--report_to", "none", "--output_dir", "run")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    site = str(installed_wheel / "modeling_alibi")
    assert site in run.stderr and str(REPO) not in run.stderr  # the wheel's files ran, not the checkout's


def test_presets_are_named_from_any_folder(tmp_path, monkeypatch) -> None:
    """`--config tiny-cpu` and the preset's data/gutenberg-tiny paths resolve to the shipped files anywhere."""
    from modeling_alibi.training import parse_args, train_bpe_tokenizer
    from modeling_alibi.training.loop import build_model

    monkeypatch.chdir(tmp_path)
    for config in ("tiny-cpu", "configuration/train/tiny-cpu.yaml"):
        args = parse_args(["--config", config])
        assert args.train_files == [str(REPO / "data" / "gutenberg-tiny" / "train.txt")]
        assert args.validation_files == [str(REPO / "data" / "gutenberg-tiny" / "valid.txt")]
    args.model = "no-such-preset"
    with pytest.raises(ValueError, match=r"shipped presets \[.*'tiny'"):
        build_model(args, train_bpe_tokenizer(["a few words of text"], vocab_size=300))
