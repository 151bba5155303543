"""The `alibi-lm` command: usage, dispatch, and the fairseq pipeline (convert-fairseq, then eval-ppl) end to end."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_alibi import AlibiForCausalLM
from modeling_alibi.cli import COMMANDS, main
from modeling_alibi.evaluation import evaluate_perplexity
from modeling_alibi.tokenization import encode_lines
from tests.fairseq_fixtures import save_fairseq_checkpoint, write_fixture_dict
from tests.fairseq_reference import reference_log_probs

OPENERS = {".txt": open, ".txt.xz": lzma.open, ".txt.gz": gzip.open, ".txt.bz2": bz2.open}


def test_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: alibi-lm COMMAND")
    for command in ("demo", "export", "convert-fairseq", "eval-ppl", "train", "extrapolate", "finetune"):
        assert f"\n  {command} " in out
    assert set(COMMANDS) == {"demo", "export", "convert-fairseq", "eval-ppl", "train", "extrapolate", "finetune"}
    assert main([]) == 0 and capsys.readouterr().out == out  # no command: the same usage


def test_unknown_command_exits_2_with_usage(capsys) -> None:
    assert main(["frobnicate", "--x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("alibi-lm: unknown command 'frobnicate'")
    assert "usage: alibi-lm COMMAND" in captured.err


def test_console_script_is_installed() -> None:
    """The `alibi-lm` entry point of pyproject.toml, run as a real process."""
    script = shutil.which("alibi-lm", path=str(Path(sys.executable).parent)) or shutil.which("alibi-lm")
    assert script, "the alibi-lm console script is not installed: pip install -e ."
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: alibi-lm COMMAND" in done.stdout and "convert-fairseq" in done.stdout


# ---- convert-fairseq, then eval-ppl on the converted folder ------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """A fairseq transformer_lm_wiki103 fixture (adaptive input/softmax, tied) converted through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    checkpoint = root / "checkpoint_best.pt"
    state = save_fairseq_checkpoint(checkpoint, "transformer_lm_wiki103", heads=4, tokens_per_sample=16)
    words = write_fixture_dict(root / "dict.txt", 104)
    argv = ["convert-fairseq", str(root / "checkpoint_best.pt"), "--dict", str(root / "dict.txt"),
            "--output", str(root / "hf"), "--verify"]
    assert main(argv) == 0
    return {"root": root, "state": state, "words": words, "folder": root / "hf"}


def test_convert_fairseq_folder_loads_with_auto_classes(converted, capsys) -> None:
    model = AutoModelForCausalLM.from_pretrained(converted["folder"]).eval()
    assert isinstance(model, AlibiForCausalLM)
    assert model.config.vocab_size == 104 and model.config.train_seq_len == 16
    tokenizer = AutoTokenizer.from_pretrained(converted["folder"])
    ids = tokenizer("w0000 w0007 unseen w0099")["input_ids"]
    assert ids == [4, 11, 3, 103, 2]
    # the folder computes what fairseq computes, 3x past the training length
    sample = torch.tensor([[2] + [4 + (7 * t) % 100 for t in range(47)]])
    with torch.no_grad():
        ours = model(sample).logits.float().log_softmax(-1)
    expected = reference_log_probs(converted["state"]["model"], converted["state"]["cfg"]["model"], sample)
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", list(OPENERS))
def test_eval_ppl_prints_table_and_writes_json(converted, tmp_path, capsys, suffix) -> None:
    rng = random.Random(0)
    words = converted["words"] + ["unseen"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(30)]
    data = tmp_path / f"test{suffix}"
    with OPENERS[suffix](data, "wt", encoding="utf-8") as f:  # blank lines included: each is a lone </s>
        f.write("\n".join(lines) + "\n")
    out = tmp_path / "result.json"
    argv = ["eval-ppl", str(converted["folder"]), "--data", str(data), "--tokens-per-sample", "32",
            "--context-window", "16", "--batch-size", "4", "--device", "cpu", "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out

    model = AutoModelForCausalLM.from_pretrained(converted["folder"])
    stream = encode_lines(AutoTokenizer.from_pretrained(converted["folder"]), lines)
    expected = evaluate_perplexity(model, stream, 32, 16, batch_size=4, progress=False)
    written = json.loads(out.read_text())
    assert written["num_tokens"] == expected.num_tokens == len(stream) == sum(len(line.split()) + 1 for line in lines)
    for key in ("nll_sum", "loss_base2", "loss_nats", "perplexity"):
        assert written[key] == pytest.approx(getattr(expected, key), rel=1e-9), key
    assert (written["tokens_per_sample"], written["context_window"], written["batch_size"]) == (32, 16, 4)
    assert re.search(rf"^tokens scored +{expected.num_tokens:,}$", printed, re.M)
    assert re.search(rf"^perplexity +{expected.perplexity:.2f}$", printed, re.M)
    assert re.search(rf"^data +{re.escape(str(data))}$", printed, re.M)
