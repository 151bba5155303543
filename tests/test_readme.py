"""README.md's Python snippets run, in order, against a tiny trained folder at the path they name.

A block preceded by `<!-- not run: REASON -->` is skipped (the Hub upload, CUDA-only code); every other ```python
block runs, in one interpreter and in order, as a reader pasting them would, from a folder laid out like the
repository root after `alibi-lm demo`.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from modeling_alibi.hub import export_for_hub
from modeling_alibi.training import train_bpe_tokenizer

from conftest import tiny_model

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:<!-- not run: (?P<reason>[^>]+?) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL)
MODEL_DIR = "outputs/demo/alibi/final"  # the folder the README's snippets load


def readme_blocks() -> list[tuple[str | None, str]]:
    """(reason it is not run or None, code) for each ```python block of README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [(m["reason"], m["code"]) for m in BLOCK.finditer(text)]


def test_readme_marks_only_what_cannot_run_here() -> None:
    blocks = readme_blocks()
    skipped = [reason for reason, _ in blocks if reason]
    assert skipped == ["needs the Hub and a token (`hf auth login`)", "needs CUDA"]
    assert sum(reason is None for reason, _ in blocks) >= 5
    assert any("upload_folder(" in code for reason, code in blocks if reason)  # the upload step is shown
    assert all(MODEL_DIR in code for reason, code in blocks[:1])  # the quickstart starts from a trained folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder laid out as the snippets expect: the demo's model folder and the corpus they read."""
    root = tmp_path_factory.mktemp("readme")
    (root / "data" / "gutenberg-tiny").mkdir(parents=True)
    test_text = (REPO / "data" / "gutenberg-tiny" / "test.txt").read_text(encoding="utf-8")[:60_000]
    (root / "data" / "gutenberg-tiny" / "test.txt").write_text(test_text, encoding="utf-8")
    text = (REPO / "data" / "gutenberg-tiny" / "train.txt").read_text(encoding="utf-8")[:20_000]
    tokenizer = train_bpe_tokenizer(text.splitlines(), vocab_size=320)
    model = tiny_model(vocab_size=len(tokenizer), train_seq_len=16, bos_token_id=tokenizer.bos_token_id,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    export_for_hub(model, root / MODEL_DIR, tokenizer)
    return root


def test_readme_snippets_run(workdir) -> None:
    code = "\n".join(code for reason, code in readme_blocks() if reason is None)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-4000:]
    lines = run.stdout.splitlines()
    assert lines[0] == "48 prompt tokens; training length 16"  # 3x L: past the training length
    assert len(lines[1:]) >= 1 and any(line.startswith("'The old house stood") for line in lines)
    ppl = [float(m[1]) for m in re.finditer(r"perplexity at \d+ tokens: ([\d.]+)", run.stdout)]
    assert len(ppl) == 2 and all(1 < p < 1000 for p in ppl)  # a 320-token vocabulary bounds a sane model's score
    card = ModelCard.load(workdir / "hub" / "alibi-demo" / "README.md")
    assert card.data.datasets == ["gutenberg-tiny"]
    assert (workdir / "my-alibi" / "config.json").is_file()
    shutil.rmtree(workdir / "hub")
