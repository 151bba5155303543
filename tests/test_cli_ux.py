"""The `alibi-lm` commands read well: each --help names its own program, and a training run folder given where a
model folder belongs is named as such (with the folder to use) before anything loads."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_alibi.cli import COMMANDS, main
from modeling_alibi.errors import is_run_folder

from conftest import tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_names_its_program(command, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: alibi-lm {command} ")


@pytest.mark.parametrize("script", ["train.py", "finetune_trainer.py"])
def test_scripts_help_names_the_script(script) -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: scripts/{script} ")


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """What `alibi-lm train` leaves: RUN/final (model, no tokenizer needed here), RUN/metrics.jsonl."""
    tiny_model().save_pretrained(tmp_path / "run" / "final")
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    return tmp_path / "run"


COMMANDS_ON_A_MODEL = [
    ["eval-ppl", "{run}", "--data", "{data}", "--tokens-per-sample", "16"],
    ["extrapolate", "{run}", "--data", "{data}", "--lengths", "16", "--output", "{tmp}/out"],
    ["finetune", "{run}", "--train-files", "{data}", "--output", "{tmp}/out"],
    ["export", "{run}", "--output", "{tmp}/out"],
]


@pytest.mark.parametrize(
    "argv",
    [
        ["eval-ppl", "{run}", "--data", "{data}", "--tokens-per-sample", "16"],
        ["extrapolate", "{run}", "--data", "{data}", "--lengths", "16", "--output", "{tmp}/out"],
        ["finetune", "{run}", "--train-files", "{data}", "--output", "{tmp}/out"],
        ["export", "{run}", "--output", "{tmp}/out"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_run_folder_says_use_run_final(run_folder, argv, capsys) -> None:
    data = REPO / "data" / "gutenberg-tiny" / "valid.txt"
    argv = [arg.format(run=run_folder, data=data, tmp=run_folder.parent) for arg in argv]
    assert main(argv) == 2  # a UserError: one line on stderr, exit status 2
    message = f"{run_folder} is a training run folder; use {run_folder / 'final'} (the model it saved at the end)."
    assert capsys.readouterr().err == f"alibi-lm {argv[0]}: error: {message}\n"
    assert not (run_folder.parent / "out").exists()


def test_a_model_folder_is_not_a_run_folder(run_folder) -> None:
    assert is_run_folder(run_folder)
    assert not is_run_folder(run_folder / "final")
    assert not is_run_folder(run_folder / "missing") and not is_run_folder("org/hub-model")


@pytest.mark.parametrize("damage", ["nan", "not-json"])
@pytest.mark.parametrize("argv", COMMANDS_ON_A_MODEL, ids=lambda argv: argv[0])
def test_a_broken_config_is_one_line_naming_the_file(run_folder, argv, damage, capsys) -> None:
    """A config.json that does not parse, or holds a value AlibiConfig refuses, is said before anything loads."""
    config = run_folder / "final" / "config.json"
    text = config.read_text()
    config.write_text(json.dumps({**json.loads(text), "alibi_bias_max": math.nan}) if damage == "nan" else text[:40])
    data = REPO / "data" / "gutenberg-tiny" / "valid.txt"
    argv = [arg.format(run=run_folder / "final", data=data, tmp=run_folder.parent) for arg in argv]
    assert main(argv) == 2
    reason = "alibi_bias_max=nan must be a finite number in (0, inf)." if damage == "nan" else "is not a JSON file"
    err = capsys.readouterr().err
    assert err.startswith(f"alibi-lm {argv[0]}: error: {config}") and reason in err and err.count("\n") == 1, err
    assert not (run_folder.parent / "out").exists()
