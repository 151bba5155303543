"""A saved model + tokenizer folder is ready for batched generation: padded batches give the one-at-a-time text.

The folder is written the way users get one (`export_for_hub` with a BPE tokenizer trained by the project's own
helper on data/gutenberg-tiny) and read back only through transformers' Auto classes and `pipeline`. Batching pads
the shorter prompts; a decoder-only model continues the last position of each row, so this only works when the
saved tokenizer pads on the left.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from modeling_alibi.hub import export_for_hub
from modeling_alibi.training import train_bpe_tokenizer

from conftest import tiny_model

REPO = Path(__file__).resolve().parents[1]
NEW_TOKENS = 10
# Five prompts of different lengths, so batch_size=3 makes two padded batches (3 + 2).
PROMPTS = [
    "It was",
    "The rain fell in torrents, and the",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse,",
    "the sea",
    "= Second Book =\nThe king said that",
]
# Greedy and exactly NEW_TOKENS new tokens per row: an early end-of-sequence cannot make the rows differ in length.
GREEDY = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    text = (REPO / "data" / "gutenberg-tiny" / "train.txt").read_text(encoding="utf-8")[:20_000]
    tokenizer = train_bpe_tokenizer(text.splitlines(), vocab_size=320)
    model = tiny_model(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return export_for_hub(model, tmp_path_factory.mktemp("pipeline") / "model", tokenizer)


def test_saved_tokenizer_pads_on_the_left(folder: Path) -> None:
    assert json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))["padding_side"] == "left"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["the sea", "It"], padding=True)
    assert batch["attention_mask"][1][0] == 0 and batch["attention_mask"][1][-1] == 1


def test_batched_pipeline_equals_one_prompt_at_a_time(folder: Path) -> None:
    generator = pipeline("text-generation", model=str(folder), tokenizer=str(folder))
    single = [generator(prompt, **GREEDY)[0]["generated_text"] for prompt in PROMPTS]
    batched = [out[0]["generated_text"] for out in generator(PROMPTS, batch_size=3, **GREEDY)]
    pairs = zip(single, PROMPTS, strict=True)
    assert all(text.startswith(prompt) and len(text) > len(prompt) for text, prompt in pairs)
    assert batched == single


def test_pipeline_takes_generates_fast_path_with_the_same_text(folder: Path, monkeypatch) -> None:
    """The greedy path a CUDA user gets (enabled on the CPU here, as a plain loop): batched and one at a time, the
    text transformers' own loop gives."""
    from modeling_alibi import alibi_decoding, alibi_generation

    monkeypatch.setattr(alibi_decoding, "GRAPH_GENERATE_DEVICES", ("cpu",))
    calls, original = [], alibi_generation.graph_generate_for
    monkeypatch.setattr(alibi_generation, "graph_generate_for", lambda *a: calls.append(1) or original(*a))
    generator = pipeline("text-generation", model=str(folder), tokenizer=str(folder))
    plain = dict(do_sample=False, max_new_tokens=NEW_TOKENS)
    fast = [out[0]["generated_text"] for out in generator(PROMPTS, batch_size=3, **plain)]
    assert len(calls) == 2  # two batches
    loop = [out[0]["generated_text"] for out in generator(PROMPTS, batch_size=3, cache_implementation="dynamic",
                                                          **plain)]
    assert len(calls) == 2 and fast == loop
    alibi_decoding.release_decoders()


def test_batched_generate_rows_equal_unbatched_generate(folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    padding = (batch["attention_mask"] == 0).sum(dim=1)
    assert padding.min() == 0 and padding.max() > 0  # the batch really is padded
    with torch.no_grad():
        rows = model.generate(**batch, **GREEDY)
        for i, prompt in enumerate(PROMPTS):
            alone = model.generate(**tokenizer(prompt, return_tensors="pt"), **GREEDY)[0]
            assert (rows[i, : padding[i]] == tokenizer.pad_token_id).all()
            assert rows[i, padding[i] :].tolist() == alone.tolist(), f"row {i} ({prompt!r})"


def test_tokenizer_loads_without_the_package_or_remote_code(folder: Path) -> None:
    """The tokenizer is a standard transformers class: where `modeling_alibi` cannot be imported, AutoTokenizer
    loads it from the folder without `trust_remote_code` (only the model needs the remote code).

    AutoTokenizer reads config.json first, and its `auto_map` makes transformers ask "Do you wish to run the custom
    code?" on stdin (waiting up to 15 s); with no answer (stdin closed here) it reads the tokenizer config alone.
    """
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "modeling_alibi":
                    raise ImportError("modeling_alibi is hidden in this process")
        sys.meta_path.insert(0, Hide())
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
        print("\\nRESULT", json.dumps({"padding_side": tokenizer.padding_side,
                                      "ids": tokenizer("the sea")["input_ids"]}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script, str(folder)], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.rsplit("\nRESULT ", 1)[1])
    assert loaded == {"padding_side": "left", "ids": AutoTokenizer.from_pretrained(folder)("the sea")["input_ids"]}
