"""The exported folder as the Hub and a user without the package see it: the card's metadata and text, the tokenizer."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import AutoTokenizer

from modeling_alibi.evaluation import ExtrapolationPoint, write_report
from modeling_alibi.hub import export_for_hub
from modeling_alibi.training import train_bpe_tokenizer

from conftest import tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    text = (REPO / "data" / "gutenberg-tiny" / "train.txt").read_text(encoding="utf-8")[:20_000]
    return train_bpe_tokenizer(text.splitlines(), vocab_size=320)


def _run_with_results(tmp_path: Path, tokenizer) -> Path:
    """A run folder as training and `alibi-lm extrapolate` leave it: RUN/final and RUN/extrapolation/."""
    model = tiny_model(vocab_size=len(tokenizer), train_seq_len=16)
    model.save_pretrained(tmp_path / "run" / "final")
    points = [ExtrapolationPoint("alibi", 16, 16 * k, 16 * k, 1000, 3.0 + k / 100, 20.0 + k) for k in (1, 2, 3, 4, 8)]
    points.append(ExtrapolationPoint("sinusoidal", 16, 32, 32, 1000, 5.0, 148.4))
    write_report(points, tmp_path / "run" / "extrapolation", "test")
    return tmp_path / "run" / "final"


def test_card_is_built_from_the_run(tmp_path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_run_with_results(tmp_path, tokenizer))  # remembers its folder
    out = export_for_hub(model, tmp_path / "hub", tokenizer, name="alibi-tiny", datasets=["gutenberg-tiny"])
    card = ModelCard.load(out / "README.md")  # the Hub's own parser
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-generation"
    assert card.data.datasets == ["gutenberg-tiny"]
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "alibi-tiny"
    assert [(r.metric_type, r.metric_value, r.metric_config) for r in results] == [
        ("perplexity", 21.0, "length=16"), ("perplexity", 22.0, "length=32"), ("perplexity", 24.0, "length=64"),
        ("perplexity", 28.0, "length=128")]  # 3x L is not a power-of-two multiple: left out
    text = card.text
    assert "| training length L | 16 tokens (not a length cap) |" in text
    assert f"| parameters | {model.num_parameters():,} |" in text
    assert "| alibi | 128 | 8× | 28.00 |" in text and "| sinusoidal | 32 | 2× | 148.40 |" in text
    assert "Datasets: `gutenberg-tiny`. Trained on sequences of L = 16 tokens." in text
    assert 'pipeline("text-generation"' in text and "## Limitations" in text and "Apache License 2.0" in text
    assert "pads on the left" in text and "holds no tokenizer" not in text
    assert "pip install alibi-lm" not in text and "not on PyPI" in text


def test_card_without_results_says_so(tmp_path) -> None:
    out = export_for_hub(tiny_model(), tmp_path / "hub", name="bare")
    card = ModelCard.load(out / "README.md")
    assert "eval_results" not in card.data.to_dict() and "model-index" not in card.data.to_dict()
    assert "No evaluation results were found" in card.text and "Not recorded with this export" in card.text
    assert "This folder holds no tokenizer" in card.text and "pads on the left" not in card.text


def test_card_python_example_runs(tmp_path, tokenizer) -> None:
    """The card's code block, pointed at the exported folder, generates text."""
    model = tiny_model(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    out = export_for_hub(model, tmp_path / "hub", tokenizer, name="alibi-tiny")
    code = ModelCard.load(out / "README.md").text.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"alibi-tiny"', repr(str(out)))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("The old house stood") and len(run.stdout) > len("The old house stood") + 5


# Runs with the package unimportable: the venv's editable finder is removed and `find_spec` proves it.
# stdin is closed, so transformers' "Do you wish to run the custom code?" prompt, if reached, fails or prints.
LOAD_TOKENIZER = textwrap.dedent(
    """
    import importlib.util, json, sys
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
    sys.path_importer_cache.clear()
    assert importlib.util.find_spec("modeling_alibi") is None, "the package is importable"
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    loaded = {"standard": PreTrainedTokenizerFast.from_pretrained(sys.argv[1]),
              "auto": AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=False)}
    print("RESULT", json.dumps({k: [type(t).__name__, t.padding_side, t("the sea")["input_ids"]]
                                for k, t in loaded.items()}))
    """
)


def test_tokenizer_loads_without_the_package_and_without_a_prompt(tmp_path, tokenizer) -> None:
    out = export_for_hub(tiny_model(vocab_size=len(tokenizer)), tmp_path / "hub", tokenizer)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    run = subprocess.run([sys.executable, "-I", "-c", LOAD_TOKENIZER, str(out)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL, env={"HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Do you wish to run the custom code" not in run.stdout + run.stderr
    loaded = json.loads(run.stdout.rsplit("RESULT ", 1)[1])
    ids = AutoTokenizer.from_pretrained(out)("the sea")["input_ids"]
    for kind in ("standard", "auto"):
        assert loaded[kind][1:] == ["left", ids], kind
