"""`alibi-lm extrapolate`: the report files, and numbers equal to `evaluate_perplexity` at each length."""

from __future__ import annotations

import csv
import json
import lzma
import os
import re
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from modeling_alibi import AlibiConfig, AlibiForCausalLM
from modeling_alibi.cli import main as cli_main
from modeling_alibi.evaluation import evaluate_lengths, evaluate_perplexity
from modeling_alibi.evaluation.extrapolation import unique_labels
from modeling_alibi.fairseq import build_fairseq_dictionary, fairseq_tokenizer, write_fairseq_dictionary
from modeling_alibi.tokenization import encode_lines, read_lines

WT103_VALID = Path(__file__).resolve().parents[1] / "data" / "wikitext-103" / "wiki.valid.tokens"
MAX_TOKENS = 300  # not a multiple of any length: the last window of each is short
LENGTHS = [16, 32, 64]  # the models train on 16: 2x and 4x is extrapolation
BATCH = 8  # windows per forward, in the command and in the direct calls alike
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Two tiny saved AlibiForCausalLM folders sharing a word-level tokenizer; the corpus as .txt.xz."""
    root = tmp_path_factory.mktemp("extrapolation")
    lines = list(read_lines(WT103_VALID))[:40]
    write_fairseq_dictionary(build_fairseq_dictionary(lines=lines), root / "dict.txt")
    tokenizer = fairseq_tokenizer(root / "dict.txt")
    with lzma.open(root / "data.txt.xz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    models = {}
    for name, seed in (("small", 0), ("other", 1)):
        torch.manual_seed(seed)
        config = AlibiConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, train_seq_len=16)
        AlibiForCausalLM(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        models[name] = root / name
    stream = encode_lines(tokenizer, lines)
    assert len(stream) > MAX_TOKENS
    return {"root": root, "data": root / "data.txt.xz", "models": models, "stream": stream[:MAX_TOKENS]}


def _run(setup: dict, out: Path, *extra: str) -> int:
    argv = ["extrapolate", *(f"{name}={path}" for name, path in setup["models"].items()), "--data", str(setup["data"]),
            "--lengths", ",".join(map(str, reversed(LENGTHS))), "--max-tokens", str(MAX_TOKENS), "--device", "cpu",
            "--batch-size", str(BATCH), "--output", str(out), "--no-progress", *extra]
    return cli_main(argv)


@pytest.mark.parametrize(
    "extra, stride", [((), None), (("--sliding", "--stride", "8"), 8)], ids=["nonoverlapping", "sliding-s8"]
)
def test_report_files_and_numbers(setup, tmp_path, capsys, extra, stride) -> None:
    assert _run(setup, tmp_path, *extra) == 0
    printed = capsys.readouterr().out

    # JSON: one point per (model, length), equal to evaluate_perplexity run directly
    points = json.loads((tmp_path / "extrapolation.json").read_text())
    assert [(p["model"], p["length"]) for p in points] == [(m, n) for m in ("small", "other") for n in LENGTHS]
    for name, folder in setup["models"].items():
        model = AlibiForCausalLM.from_pretrained(folder).eval()
        for point in (p for p in points if p["model"] == name):
            context = 0 if stride is None else point["length"] - stride
            expected = evaluate_perplexity(model, setup["stream"], point["length"], context, batch_size=BATCH,
                                           progress=False)
            assert point["context_window"] == context and point["train_seq_len"] == 16
            assert point["num_tokens"] == expected.num_tokens == MAX_TOKENS
            assert point["perplexity"] == pytest.approx(expected.perplexity, rel=1e-9)
            assert point["loss_nats"] == pytest.approx(expected.loss_nats, rel=1e-9)

    # CSV: the same rows
    with (tmp_path / "extrapolation.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], int(r["length"]), float(r["perplexity"])) for r in rows] == [
        (p["model"], p["length"], p["perplexity"]) for p in points
    ]

    # Markdown: caption, header with the lengths, one row per model; printed as well
    table = (tmp_path / "extrapolation.md").read_text()
    mode = "nonoverlapping windows" if stride is None else f"sliding windows, stride {stride}"
    assert table.startswith(f"Perplexity on data.txt.xz ({MAX_TOKENS} tokens), {mode}, text mode fairseq\n\n")
    assert "| model | trained on | 16 | 32 | 64 |" in table
    rows_md = [line for line in table.splitlines() if line.startswith(("| small ", "| other "))]
    assert len(rows_md) == 2
    ppl = {(p["model"], p["length"]): p["perplexity"] for p in points}
    assert rows_md[0] == "| small | 16 | " + " | ".join(f"{ppl['small', n]:.2f}" for n in LENGTHS) + " |"
    assert table.strip() in printed

    # PNG: a real image
    png = (tmp_path / "extrapolation.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1024
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(tmp_path / "extrapolation.png").shape
    assert (width, height) == (840, 540)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lengths", "16,abc"], "comma-separated positive integers"),
        (["--lengths", "0,16"], "comma-separated positive integers"),
        (["--lengths", "16,,32"], "comma-separated positive integers"),
        (["--lengths", "16,32", "--sliding", "--stride", "32"], "--stride 32 is larger than the smallest length 16"),
        (["--lengths", "16", "--stride", "4"], "add --sliding"),
        (["--lengths", "16", "--max-tokens", "-3"], "positive integer"),
    ],
    ids=["not-a-number", "zero", "empty-item", "stride-too-large", "stride-without-sliding", "max-tokens"],
)
def test_bad_arguments_exit_2_with_a_clear_message(setup, tmp_path, capsys, args, message) -> None:
    argv = ["extrapolate", str(setup["models"]["small"]), "--data", str(setup["data"]), "--output", str(tmp_path),
            *args]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("alibi-lm extrapolate: error: ") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_two_run_folders_ending_in_final_are_labelled_by_their_runs(setup, tmp_path, capsys) -> None:
    """`alibi-lm extrapolate runs/alibi/final runs/sinusoidal/final`: labels `alibi` and `sinusoidal`, no error."""
    runs = tmp_path / "runs"
    for run, name in (("alibi", "small"), ("sinusoidal", "other")):
        shutil.copytree(setup["models"][name], runs / run / "final")
    argv = ["extrapolate", str(runs / "alibi" / "final"), str(runs / "sinusoidal" / "final"), "--data",
            str(setup["data"]), "--lengths", "16", "--max-tokens", "64", "--device", "cpu", "--output",
            str(tmp_path / "out"), "--no-progress"]
    assert cli_main(argv) == 0
    points = json.loads((tmp_path / "out" / "extrapolation.json").read_text())
    assert [p["model"] for p in points] == ["alibi", "sinusoidal"]
    assert "| alibi | 16 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "specs, labels",
    [
        ([(None, "runs/alibi/final"), (None, "runs/sinusoidal/final")], ["alibi", "sinusoidal"]),
        ([(None, "a/run/final"), (None, "b/run/final")], ["a/run", "b/run"]),
        ([(None, "a/run"), (None, "a/run")], ["run", "run-2"]),
        ([("run", "x/y"), (None, "a/run")], ["run", "a/run"]),
        ([("mine", "a/run"), (None, "b/other")], ["mine", "other"]),
    ],
    ids=["final-by-run", "same-run-name", "same-folder", "bare-against-named", "named"],
)
def test_unique_labels(specs, labels) -> None:
    assert unique_labels(specs) == labels


def test_same_explicit_name_twice_is_refused(setup, tmp_path, capsys) -> None:
    folder = str(setup["models"]["small"])
    argv = ["extrapolate", f"m={folder}", f"m={folder}", "--data", str(setup["data"]), "--lengths", "16",
            "--output", str(tmp_path)]
    assert cli_main(argv) == 2
    assert "the same NAME" in capsys.readouterr().err


def test_a_run_folder_says_use_run_final(setup, tmp_path, capsys) -> None:
    """A training run folder holds its model in final/: the error says so instead of failing in the tokenizer."""
    shutil.copytree(setup["models"]["small"], tmp_path / "run" / "final")
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    argv = ["extrapolate", str(tmp_path / "run"), "--data", str(setup["data"]), "--lengths", "16",
            "--output", str(tmp_path / "out"), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"run is a training run folder; use .*run/final", err) and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_evaluate_lengths_checks_stride(setup) -> None:
    model = AlibiForCausalLM.from_pretrained(setup["models"]["small"])
    with pytest.raises(ValueError, match="stride=0 must be between 1 and the smallest length"):
        evaluate_lengths("small", model, setup["stream"], [16, 32], stride=0, progress=False)


def test_document_text_mode_scores_the_training_stream(setup, tmp_path) -> None:
    """--text-mode document reads the data as training did: one end-of-sequence per blank-line-separated record."""
    from transformers import AutoTokenizer

    from modeling_alibi.training import encode_corpus

    argv = ["extrapolate", f"small={setup['models']['small']}", "--data", str(setup["data"]), "--lengths", "32",
            "--text-mode", "document", "--device", "cpu", "--output", str(tmp_path), "--no-progress"]
    assert cli_main(argv) == 0
    point = json.loads((tmp_path / "extrapolation.json").read_text())[0]
    tokenizer = AutoTokenizer.from_pretrained(setup["models"]["small"])
    stream = encode_corpus([setup["data"]], tokenizer, "document")
    assert stream.count(tokenizer.eos_token_id) < len(list(read_lines(setup["data"])))  # fewer ends than lines
    expected = evaluate_perplexity(AlibiForCausalLM.from_pretrained(setup["models"]["small"]).eval(), stream, 32,
                                   progress=False)
    assert point["num_tokens"] == len(stream)
    assert point["perplexity"] == pytest.approx(expected.perplexity, rel=1e-9)
