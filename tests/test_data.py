"""Data pipeline: reading txt/xz/jsonl, tokenizer training, eos placement, exact packing and the on-disk cache."""

import json
import lzma
import os
import stat
from itertools import pairwise
from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from modeling_alibi.errors import InputError
from modeling_alibi.tokenization import encode_file
from modeling_alibi.training import data
from modeling_alibi.training.data import (
    TextSource,
    build_lm_dataset,
    collate_blocks,
    encode_corpus,
    expand_files,
    load_or_train_tokenizer,
    pack_blocks,
    read_records,
    tokenize_records,
    train_bpe_tokenizer,
    train_wordlevel_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
# Two documents (blank-line separated), a paragraph per line, as in data/gutenberg-tiny.
TEXT = (
    "= First Book =\nIt was a dark and stormy night; the rain fell in torrents.\nThe end, said the king.\n"
    "\n"
    "= Second Book =\nCall me Ishmael. Some years ago -- never mind how long precisely --\nthe sea, the sea!\n"
)


@pytest.fixture(scope="module")
def corpus() -> str:
    """About 20 KB of real text, cut at a line boundary, for tokenizer training."""
    text = (REPO / "data" / "gutenberg-tiny" / "train.txt").read_text(encoding="utf-8")[:20_000]
    return text[: text.rindex("\n") + 1]


@pytest.fixture(scope="module")
def bpe(corpus: str):
    return train_bpe_tokenizer(corpus.split("\n"), vocab_size=400)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def stream_of(blocks: datasets.Dataset) -> list[int]:
    return np.asarray(blocks["input_ids"]).reshape(-1).tolist()


def test_read_records_txt_xz_and_jsonl_agree(tmp_path: Path):
    txt = write(tmp_path / "a.txt", TEXT)
    with lzma.open(tmp_path / "a.txt.xz", "wt", encoding="utf-8") as f:
        f.write(TEXT)
    documents = TEXT.strip("\n").split("\n\n")
    jsonl = write(
        tmp_path / "a.jsonl", "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(documents))
    )

    lines = list(read_records([txt], "line"))
    assert lines == TEXT.split("\n")[:-1]  # every line, the blank separator included
    assert list(read_records([tmp_path / "a.txt.xz"], "line")) == lines
    assert list(read_records([txt], "document")) == documents
    assert list(read_records([tmp_path / "a.txt.xz"], "document")) == documents
    assert list(read_records([jsonl], "line")) == documents  # JSON Lines: one record per object, any text_mode


def test_jsonl_without_text_field_names_the_line(tmp_path: Path):
    bad = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 .*'text'"):
        list(read_records([bad]))


def test_unreadable_training_text_names_the_file(tmp_path: Path):
    """Latin-1 or binary text, broken JSON and a corrupt archive each stop with an InputError naming the file."""
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    write(tmp_path / "broken.jsonl", '{"text": "ok"}\n{"text": \n')
    (tmp_path / "junk.txt.gz").write_bytes(b"not gzip at all")
    cases = [("latin1.txt", r"latin1.txt is not UTF-8 text \(byte e9 .*iconv"),
             ("broken.jsonl", r"broken.jsonl:2 is not valid JSON"),
             ("junk.txt.gz", r"junk.txt.gz is not a readable .gz file")]
    for name, message in cases:
        with pytest.raises(InputError, match=message):
            list(read_records([tmp_path / name]))


def test_expand_files_sorts_globs_and_rejects_empty_patterns(tmp_path: Path):
    for name in ("b.txt", "a.txt", "c.md"):
        write(tmp_path / name, "x\n")
    assert expand_files([str(tmp_path / "*.txt")]) == (str(tmp_path / "a.txt"), str(tmp_path / "b.txt"))
    with pytest.raises(ValueError, match="No file matches"):
        expand_files([str(tmp_path / "*.jsonl")])


def test_pack_blocks_is_the_stream_cut_into_blocks():
    rows = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
    stream = [t for row in rows for t in row]  # 18 tokens
    tokenized = datasets.Dataset.from_dict({"input_ids": rows})
    for block_size in (1, 4, 5, 18):
        blocks = pack_blocks(tokenized, block_size)
        n = len(stream) // block_size
        assert blocks["input_ids"] == [stream[i * block_size : (i + 1) * block_size] for i in range(n)]
    # A shuffled (index-mapped) dataset packs in its visible order.
    shuffled = tokenized.select([5, 0, 3, 1, 4, 2])
    assert stream_of(pack_blocks(shuffled, 6)) == [t for i in [5, 0, 3, 1, 4, 2] for t in rows[i]]
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_blocks(tokenized, 19)


def test_line_mode_matches_fairseq_encoding(tmp_path: Path):
    """Word level, line mode: each line's words then </s>, a blank line a lone </s> (fairseq's stream)."""
    path = write(tmp_path / "wiki.txt", " = Title = \n the cat sat \n \n on the mat <unk> \n")
    tokenizer = train_wordlevel_tokenizer(read_records([path]))
    blocks = build_lm_dataset(TextSource(files=(str(path),)), tokenizer, 3, tmp_path / "cache")
    expected = encode_file(tokenizer, path)
    eos = tokenizer.eos_token_id
    assert expected.count(eos) == 4 and expected[-1] == eos
    assert stream_of(blocks) == expected[: len(expected) // 3 * 3]


def test_document_mode_puts_one_eos_after_each_document(tmp_path: Path, bpe):
    path = write(tmp_path / "books.txt", "\n".join([TEXT] * 3))  # a blank line between the copies
    tokenized = tokenize_records(TextSource(files=(str(path),), text_mode="document").load(tmp_path / "x"), bpe)
    stream = [t for row in tokenized["input_ids"] for t in row]
    eos_positions = [i for i, t in enumerate(stream) if t == bpe.eos_token_id]
    assert len(eos_positions) == 6 and eos_positions[-1] == len(stream) - 1
    # Byte-level BPE is lossless: the tokens between two eos decode to exactly one document, newlines included.
    documents = [bpe.decode(stream[a + 1 : b]) for a, b in pairwise([-1] + eos_positions)]
    assert documents == TEXT.strip("\n").split("\n\n") * 3


def test_encode_corpus_is_the_training_stream_before_packing(tmp_path: Path, bpe):
    """Evaluation reads text as training does: the unpacked stream equals encode_corpus, in both modes."""
    path = write(tmp_path / "books.txt", "\n".join([TEXT] * 3))
    for mode in ("line", "document"):
        tokenized = tokenize_records(TextSource(files=(str(path),), text_mode=mode).load(tmp_path / mode), bpe)
        assert encode_corpus([path], bpe, mode, batch_size=2) == [t for row in tokenized["input_ids"] for t in row]


def test_tokenize_records_multiprocess_equals_single(corpus: str, bpe):
    records = datasets.Dataset.from_dict({"text": corpus.split("\n")})
    one = tokenize_records(records, bpe, num_proc=1)["input_ids"]
    assert tokenize_records(records, bpe, num_proc=2)["input_ids"] == one


def test_cache_is_deterministic_and_keyed_by_content(tmp_path: Path, bpe, monkeypatch):
    path = write(tmp_path / "train.txt", TEXT * 4)
    source = TextSource(files=(str(path),))
    first = build_lm_dataset(source, bpe, 8, tmp_path / "cache")
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 1 and entries[0].startswith("blocks-train-L8-")

    def fail(*args, **kwargs):
        raise AssertionError("a cache hit must not tokenize again")

    monkeypatch.setattr(data, "tokenize_records", fail)
    again = build_lm_dataset(TextSource(files=(str(path),)), bpe, 8, tmp_path / "cache")
    assert again["input_ids"] == first["input_ids"]
    monkeypatch.undo()

    build_lm_dataset(source, bpe, 16, tmp_path / "cache")  # another L
    write(path, TEXT * 5)  # other contents under the same name
    changed = build_lm_dataset(TextSource(files=(str(path),)), bpe, 8, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 3
    assert len(changed) > len(first)


def test_xz_and_txt_give_the_same_blocks(tmp_path: Path, bpe):
    write(tmp_path / "t.txt", TEXT * 4)
    with lzma.open(tmp_path / "t.txt.xz", "wt", encoding="utf-8") as f:
        f.write(TEXT * 4)
    plain = build_lm_dataset(TextSource(files=(str(tmp_path / "t.txt"),)), bpe, 8, tmp_path / "c")
    packed = build_lm_dataset(TextSource(files=(str(tmp_path / "t.txt.xz"),)), bpe, 8, tmp_path / "c")
    assert packed["input_ids"] == plain["input_ids"]


def test_bpe_tokenizer_round_trip(tmp_path: Path, corpus: str, bpe):
    assert len(bpe) == 400
    assert [bpe.bos_token_id, bpe.pad_token_id, bpe.eos_token_id, bpe.unk_token_id] == [0, 1, 2, 3]
    bpe.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    sample = "Über the naïve café -- 'twas 1922!\nNew paragraph."
    ids = loaded(sample, add_special_tokens=False)["input_ids"]
    assert ids == bpe(sample, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == sample  # byte level: any text, no unknown tokens
    assert 3 not in ids


def test_wordlevel_tokenizer_follows_fairseq_order(tmp_path: Path):
    texts = ["b a c a", "c a <unk> b", "", "d"]  # a:3, b:2, c:2, d:1; "<unk>" counts as the special
    tokenizer = train_wordlevel_tokenizer(texts)
    vocab = tokenizer.get_vocab()
    assert [vocab[w] for w in ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "c", "d"]] == list(range(8))
    assert len(tokenizer) == 8  # already a multiple of 8: no madeupword padding
    tokenizer.save_pretrained(tmp_path / "wl")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "wl")
    assert loaded("a  zebra d", add_special_tokens=False)["input_ids"] == [4, 3, 7]
    assert loaded.decode([4, 5, 6]) == "a b c"
    capped = train_wordlevel_tokenizer(texts + ["e f g h i"], vocab_size=6)
    assert len(capped) == 8 and "madeupword0000" in capped.get_vocab()  # 4 specials + a, b, then padding


def test_tokenizer_cache_trains_once(tmp_path: Path, monkeypatch):
    path = write(tmp_path / "t.txt", TEXT * 4)
    source = TextSource(files=(str(path),))
    first = load_or_train_tokenizer(source, "bpe", 300, tmp_path / "cache")
    monkeypatch.setattr(data, "train_bpe_tokenizer", lambda *a: pytest.fail("trained twice"))
    second = load_or_train_tokenizer(source, "bpe", 300, tmp_path / "cache")
    assert second.get_vocab() == first.get_vocab()


def test_collate_blocks_labels_are_inputs(bpe, tmp_path: Path):
    blocks = build_lm_dataset(TextSource(files=(str(write(tmp_path / "t.txt", TEXT)),)), bpe, 4, tmp_path / "c")
    batch = collate_blocks([blocks.with_format("torch")[i] for i in range(2)])
    assert batch["input_ids"].shape == (2, 4) and batch["input_ids"].dtype.is_floating_point is False
    assert batch["labels"].tolist() == batch["input_ids"].tolist()
    assert batch["labels"].data_ptr() != batch["input_ids"].data_ptr()


def test_text_source_needs_exactly_one_origin():
    with pytest.raises(ValueError, match="either local files or a Hub dataset"):
        TextSource()
    with pytest.raises(ValueError, match="either local files or a Hub dataset"):
        TextSource(files=("a.txt",), hub_name="wikitext")


def test_cache_folders_get_the_default_permissions(tmp_path):
    """Cache entries are staged in a sibling folder and renamed: they end with the umask's mode, not mkdtemp's 0700."""
    with data._atomic_dir(tmp_path / "entry") as staging:
        (staging / "file").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "entry").stat().st_mode) == 0o777 & ~umask


def test_a_cache_entry_finished_first_by_another_process_is_kept(tmp_path, monkeypatch):
    """Two runs sharing a cache may build the same entry at once. The first rename wins; the second writer's copy
    is discarded without an error, even when the other rename lands just before this one (no check-then-act)."""
    entry = tmp_path / "entry"

    def other_process_first(real):
        def rename(source, target):
            if not entry.exists():  # the other writer's rename lands between any check and this one
                entry.mkdir()
                (entry / "file").write_text("first")
            return real(source, target)

        return rename

    monkeypatch.setattr(data.os, "rename", other_process_first(os.rename))
    monkeypatch.setattr(data.os, "replace", other_process_first(os.replace))
    with data._atomic_dir(entry) as staging:
        (staging / "file").write_text("second")
    assert (entry / "file").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no staging folder left behind


def test_a_failed_cache_write_is_not_hidden_by_an_existing_entry(tmp_path):
    """Only the final rename may lose to another writer: an error while writing still raises, entry or not."""
    entry = tmp_path / "entry"
    entry.mkdir()
    with pytest.raises(OSError, match="disk trouble"), data._atomic_dir(entry):
        raise OSError("disk trouble")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # the staging folder was removed
