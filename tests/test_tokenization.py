"""fairseq dict.txt parsing/building and the fast word-level tokenizer (fairseq's encoding rules)."""

from __future__ import annotations

import bz2
import copy
import gzip
import json
import lzma
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
from transformers import AutoTokenizer

from modeling_alibi.fairseq import (
    FairseqDictionary,
    build_fairseq_dictionary,
    fairseq_tokenizer,
    write_fairseq_dictionary,
)
from modeling_alibi.tokenization import encode_file, encode_lines, read_lines, save_tokenizer, split_lines

WT103 = Path(__file__).resolve().parents[1] / "data" / "wikitext-103"


@pytest.fixture(scope="module")
def wt103_dict(tmp_path_factory) -> Path:
    """dict.txt built from the WikiText-103 train prefix with fairseq-preprocess's rules."""
    path = tmp_path_factory.mktemp("wt103") / "dict.txt"
    write_fairseq_dictionary(build_fairseq_dictionary(WT103 / "wiki.train.prefix.tokens"), path)
    return path


@pytest.fixture(scope="module")
def wt103_tokenizer(wt103_dict):
    return fairseq_tokenizer(wt103_dict)


def _dict(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dict.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_dictionary_ids_follow_fairseq(tmp_path) -> None:
    d = FairseqDictionary.load(_dict(tmp_path, "the 10\n, 7\nsome word 3\n"))
    assert d.symbols == ["<s>", "<pad>", "</s>", "<unk>", "the", ",", "some word"]
    assert (d.index("the"), d.index(","), d.index("nope"), d.index("<unk>"), d.index("</s>")) == (4, 5, 3, 3, 2)
    assert d.encode_line(" the  , zzz \n") == [4, 5, 3, 2]
    assert d.encode_line("   ") == [2]  # a blank line is a lone </s>


def test_overwrite_flag_gives_a_new_id(tmp_path) -> None:
    d = FairseqDictionary.load(_dict(tmp_path, "a 5\nb 4\na 3 #fairseq:overwrite\n"))
    assert len(d) == 7 and d.symbols[6] == "a"
    assert d.index("a") == 6  # the last definition wins, as in fairseq's add_symbol(overwrite=True)
    tok = fairseq_tokenizer(d)
    assert tok("a b")["input_ids"] == [6, 5, 2]


@pytest.mark.parametrize(
    "text, lineno, match",
    [
        ("a 5\nb 4\na 3\n", 3, "duplicate symbol 'a'"),
        ("a 5\nb\n", 2, "malformed"),
        ("a 5\nb x\n", 2, "malformed"),
        ("a 5\n\nb 4\n", 2, "malformed"),
        ("a 5\n<unk> 9\n", 2, "duplicate symbol '<unk>'"),
        ("<unk> 9 #fairseq:overwrite\n", 1, "special symbol"),
    ],
)
def test_bad_dictionary_lines(tmp_path, text: str, lineno: int, match: str) -> None:
    path = _dict(tmp_path, text)
    with pytest.raises(ValueError, match=match) as info:
        FairseqDictionary.load(path)
    assert f"{path}:{lineno}:" in str(info.value)


def test_build_rules_sort_ties_and_padding() -> None:
    lines = ["b a c a", "é z B <unk> <unk>", "", "a </s> c"]
    entries = build_fairseq_dictionary(lines=lines)
    # count descending, then code point: 'B' (66) < 'b' < 'z' < 'é'; specials counted but never written
    assert entries[:6] == [("a", 3), ("c", 2), ("B", 1), ("b", 1), ("z", 1), ("é", 1)]
    assert entries[6:] == [(f"madeupword{i:04d}", 0) for i in range(6)]  # 4 + 6 words + 6 = 16


def test_build_padding_skips_existing_madeupword() -> None:
    entries = build_fairseq_dictionary(lines=["madeupword0000 x"])
    assert [w for w, _ in entries] == ["madeupword0000", "x", "madeupword0001", "madeupword0002"]
    assert entries[2:] == [("madeupword0001", 0), ("madeupword0002", 0)]


def test_build_threshold_and_nwords() -> None:
    lines = ["a a a b b c"]
    assert [w for w, _ in build_fairseq_dictionary(lines=lines, threshold=2, padding_factor=1)] == ["a", "b"]
    assert [w for w, _ in build_fairseq_dictionary(lines=lines, nwords=5, padding_factor=1)] == ["a"]
    with pytest.raises(ValueError, match="needs `paths`"):
        build_fairseq_dictionary()


def test_wikitext103_token_counts_match_published(wt103_dict, wt103_tokenizer) -> None:
    """fairseq-preprocess on WikiText-103 gives 217,646 valid and 245,569 test tokens."""
    d = FairseqDictionary.load(wt103_dict)
    assert len(d) % 8 == 0
    for split, expected in (("valid", 217_646), ("test", 245_569)):
        stream = encode_file(wt103_tokenizer, WT103 / f"wiki.{split}.tokens")
        assert len(stream) == expected
        python_stream = [i for line in read_lines(WT103 / f"wiki.{split}.tokens") for i in d.encode_line(line)]
        assert stream == python_stream  # the fast tokenizer equals fairseq's Dictionary.encode_line


def test_tokenizer_round_trip_offline(tmp_path, wt103_tokenizer) -> None:
    wt103_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok(" = Valkyria Chronicles III = ")["input_ids"]
    assert ids[-1] == 2 and 3 not in ids
    assert tok.decode(ids) == "= Valkyria Chronicles III = </s>"
    assert tok.decode(ids, skip_special_tokens=True) == "= Valkyria Chronicles III ="
    assert tok("<unk> qqqzzzunseen")["input_ids"] == [3, 3, 2]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == len(wt103_tokenizer)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))["padding_side"] == "left"
    batch = tok(["the cat", "the"], padding=True)  # left padding, for batched generate()
    assert batch["input_ids"][1][0] == 1 and batch["attention_mask"][1] == [0, 1, 1]


def test_save_tokenizer_writes_left_padding_and_leaves_the_tokenizer_alone(tmp_path, wt103_tokenizer) -> None:
    """A tokenizer from elsewhere may pad on the right: what we save next to a model pads on the left."""
    for side in ("right", "left"):
        tokenizer = copy.deepcopy(wt103_tokenizer)
        tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = side
        save_tokenizer(tokenizer, tmp_path / side)
        assert (tokenizer.padding_side, tokenizer.init_kwargs["padding_side"]) == (side, side)
        assert json.loads((tmp_path / side / "tokenizer_config.json").read_text())["padding_side"] == "left"
        assert AutoTokenizer.from_pretrained(tmp_path / side).padding_side == "left"
    tokenizer = copy.deepcopy(wt103_tokenizer)
    del tokenizer.init_kwargs["padding_side"]  # transformers saves padding_side only when it is an init kwarg
    save_tokenizer(tokenizer, tmp_path / "no-kwarg")
    assert "padding_side" not in tokenizer.init_kwargs
    assert AutoTokenizer.from_pretrained(tmp_path / "no-kwarg").padding_side == "left"


def test_every_tokenizer_we_build_or_export_pads_on_the_left(tmp_path, wt103_tokenizer) -> None:
    from modeling_alibi.hub import export_for_hub
    from modeling_alibi.training import train_bpe_tokenizer, train_wordlevel_tokenizer

    from conftest import tiny_model

    lines = ["the cat sat", "on the mat", "the end"]
    bpe = train_bpe_tokenizer(lines, vocab_size=280)
    assert wt103_tokenizer.padding_side == bpe.padding_side == train_wordlevel_tokenizer(lines).padding_side == "left"
    bpe.padding_side = "right"  # as a Hub tokenizer might be
    out = export_for_hub(tiny_model(vocab_size=len(bpe)), tmp_path / "export", bpe)
    assert bpe.padding_side == "right"
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "left"


def test_encode_lines_fairseq_corner_cases(wt103_tokenizer) -> None:
    d_unk, eos = 3, 2
    the = wt103_tokenizer.convert_tokens_to_ids("the")
    # blank line -> lone </s>; \x1c-\x1f split words in Python (fairseq) but are not Unicode White_Space
    assert encode_lines(wt103_tokenizer, ["the\n", "", " \n", "the\x1cthe"]) == [the, eos, eos, eos, the, the, eos]
    # a special glued to a word is one unknown word for fairseq (the tokenizer alone would split it)
    assert encode_lines(wt103_tokenizer, ["the<unk> the"]) == [d_unk, the, eos]
    assert encode_lines(wt103_tokenizer, []) == []


def test_line_splitting_semantics(tmp_path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"a\r\nb\rc\n\nd\x0ce")
    assert list(read_lines(path)) == ["a", "b", "c", "", "d\x0ce"]  # universal newlines only, like readline
    assert split_lines("x\ny\n") == ["x", "y"]
    assert split_lines("") == [""]  # a Hugging Face wikitext row "" is one blank line


@pytest.mark.parametrize("suffix, compress", [(".xz", lzma.compress), (".gz", gzip.compress), (".bz2", bz2.compress)])
def test_compressed_files_read_like_plain_text(tmp_path, wt103_tokenizer, suffix: str, compress) -> None:
    raw = "a\r\nb\rc\n\nd\x0ce é\n".encode() + (WT103 / "wiki.valid.tokens").read_bytes()[:20_000]
    (tmp_path / "t.txt").write_bytes(raw)
    (tmp_path / f"t.txt{suffix}").write_bytes(compress(raw))
    plain = list(read_lines(tmp_path / "t.txt"))
    assert plain[:5] == ["a", "b", "c", "", "d\x0ce é"]
    assert list(read_lines(tmp_path / f"t.txt{suffix}")) == plain  # same universal-newline, UTF-8 reading
    assert encode_file(wt103_tokenizer, tmp_path / f"t.txt{suffix}") == encode_file(wt103_tokenizer, tmp_path / "t.txt")
    entries = build_fairseq_dictionary(tmp_path / f"t.txt{suffix}")
    assert entries == build_fairseq_dictionary(tmp_path / "t.txt")
