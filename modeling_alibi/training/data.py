"""Language-model data: read text, train or load a tokenizer, and pack token streams into blocks of L tokens.

Packing follows fairseq's `--sample-break-mode none`: every record (a line, a document or a JSON object) is
tokenized, gets one end-of-sequence token, and the concatenated stream is cut into blocks of exactly L tokens;
only the final remainder is dropped. Labels equal the inputs (the model shifts them). Packed datasets are
cached on disk under a key made from the file contents, the tokenizer and L.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import json
import logging
import lzma
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import datasets
import numpy as np
import pyarrow as pa
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..errors import InputError, not_utf8
from ..fairseq.dictionary import SPECIAL_SYMBOLS, FairseqDictionary, build_fairseq_dictionary, fairseq_tokenizer
from ..io_utils import atomic_directory
from ..tokenization import PADDING_SIDE, save_tokenizer

logger = logging.getLogger(__name__)

TextMode = Literal["line", "document"]
TokenizerKind = Literal["bpe", "wordlevel"]
# fairseq Dictionary order (ids 0-3), so AlibiConfig's default bos/pad/eos ids (0/1/2) hold for both kinds.
SPECIAL_TOKENS = dict(zip(("bos_token", "pad_token", "eos_token", "unk_token"), SPECIAL_SYMBOLS, strict=True))
CACHE_VERSION = 1  # bump when the packing or the cache layout changes, so stale caches are not reused
MIN_BYTES_PER_PROCESS = 4 << 20  # below this much text per worker, process start-up costs more than it saves


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _is_jsonl(path: Path) -> bool:
    return path.name.removesuffix(".xz").removesuffix(".gz").endswith(".jsonl")


def read_records(paths: Sequence[str | Path], text_mode: TextMode = "line") -> Iterator[str]:
    """Yield the records of local text files; each record later gets one end-of-sequence token.

    Args:
        paths: `.txt`, `.jsonl` (one JSON object with a "text" field per line) or other plain-text files,
            optionally compressed as `.xz` or `.gz`.
        text_mode: for plain text, `"line"` makes every line a record, blank lines included (fairseq, WikiText);
            `"document"` makes every block of lines between blank lines one record, its lines joined by "\\n".
            JSON Lines files always give one record per object.
    """
    for path in map(Path, paths):
        with _open_text(path) as f:
            try:
                if _is_jsonl(path):
                    yield from _read_jsonl(f, path)
                elif text_mode == "line":
                    yield from (line.rstrip("\n") for line in f)
                else:
                    yield from _read_documents(f)
            except UnicodeDecodeError as error:
                raise not_utf8(path, error) from None
            except (gzip.BadGzipFile, lzma.LZMAError, EOFError) as error:  # EOFError: a truncated .gz/.xz
                message = f"{path} is not a readable {path.suffix} file ({error}); pass an intact file."
                raise InputError(message) from None


def _read_jsonl(f: TextIO, path: Path) -> Iterator[str]:
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number} is not valid JSON ({error.msg}); fix that line.") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"{path}:{number} is not a JSON object with a string 'text' field; fix that line.")
        yield record["text"]


def _read_documents(f: TextIO) -> Iterator[str]:
    lines: list[str] = []
    for line in f:
        line = line.rstrip("\n")
        if line:
            lines.append(line)
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def expand_files(patterns: Sequence[str]) -> tuple[str, ...]:
    """Expand glob patterns (sorted within each pattern); a pattern that matches nothing is an error."""
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise ValueError(f"No file matches {pattern!r}; check the path (relative paths start at {os.getcwd()}).")
        files.extend(matches)
    return tuple(files)


@dataclass(frozen=True)
class TextSource:
    """Where the text comes from: local files, or a Hugging Face Hub dataset (passed to `datasets.load_dataset`)."""

    files: tuple[str, ...] = ()
    text_mode: TextMode = "line"
    hub_name: str | None = None
    hub_config: str | None = None
    split: str = "train"

    def __post_init__(self) -> None:
        if bool(self.files) == bool(self.hub_name):
            raise ValueError("Give either local files or a Hub dataset name as the text source, not both or neither.")

    def fingerprint(self) -> str:
        """Content hash for local files; for the Hub, the dataset's name, config and split."""
        if self.hub_name:
            return _digest(self.hub_name, self.hub_config, self.split)
        return _digest(self.text_mode, [(Path(f).name, _file_digest(f)) for f in self.files])

    def texts(self) -> Iterator[str]:
        if self.hub_name:
            yield from self.load()["text"]
        else:
            yield from read_records(self.files, self.text_mode)

    def load(self, cache_dir: str | Path | None = None) -> datasets.Dataset:
        """The records as a dataset with one column, "text"."""
        if self.hub_name:
            return datasets.load_dataset(self.hub_name, self.hub_config, split=self.split).select_columns("text")
        return datasets.Dataset.from_generator(
            _record_rows, gen_kwargs={"paths": list(self.files), "text_mode": self.text_mode}, cache_dir=cache_dir
        )


def _record_rows(paths: list[str], text_mode: TextMode) -> Iterator[dict[str, str]]:
    for text in read_records(paths, text_mode):
        yield {"text": text}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style, no unknown tokens) with the fairseq specials at ids 0-3, padding on the left."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so any text encodes
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side=PADDING_SIDE, **SPECIAL_TOKENS)


def train_wordlevel_tokenizer(texts: Iterable[str], vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """fairseq word vocabulary (`fairseq-preprocess` rules, see `fairseq/dictionary.py`): whitespace split,
    `<s> <pad> </s> <unk>` = 0-3, then words by count, padded to a multiple of 8. `vocab_size` counts the specials."""
    entries = build_fairseq_dictionary(lines=texts, nwords=vocab_size or -1)
    return fairseq_tokenizer(FairseqDictionary.from_lines(f"{word} {count}" for word, count in entries))


def load_or_train_tokenizer(
    source: TextSource, kind: TokenizerKind, vocab_size: int | None, cache_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Load the tokenizer trained on `source` from the cache, training and caching it on a miss."""
    path = Path(cache_dir) / f"tokenizer-{kind}-{_digest(CACHE_VERSION, source.fingerprint(), kind, vocab_size)}"
    if not path.exists():
        logger.info("Training a %s tokenizer (vocab_size=%s) into %s", kind, vocab_size, path)
        if kind == "bpe":
            if vocab_size is None:
                raise ValueError("A BPE tokenizer needs a vocab_size, e.g. 16384.")
            tokenizer = train_bpe_tokenizer(source.texts(), vocab_size)
        else:
            tokenizer = train_wordlevel_tokenizer(source.texts(), vocab_size)
        with _atomic_dir(path) as tmp:
            save_tokenizer(tokenizer, tmp)
    return AutoTokenizer.from_pretrained(path)


@contextlib.contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """`io_utils.atomic_directory` for cache entries, where the first writer wins: when another process (a second
    run on the same cache) has put the same entry in place first, its copy is kept and this one is dropped. Entries
    are keyed by their inputs, so both are identical."""
    written = False
    try:
        with atomic_directory(path) as tmp:  # staged beside `path`, with the umask's mode (the cache is shared)
            yield tmp
            written = True
    except OSError:  # FileExistsError, or ENOTEMPTY when the other rename landed after publish's check
        if not (written and path.is_dir()):
            raise


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    return _digest(tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id)


def tokenize_records(
    records: datasets.Dataset, tokenizer: PreTrainedTokenizerFast, num_proc: int | None = None
) -> datasets.Dataset:
    """Map the "text" column to "input_ids", each record followed by the end-of-sequence token."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos_token; set one (e.g. tokenizer.eos_token = '</s>') and save it.")
    if num_proc is None:  # all cores, but at least MIN_BYTES_PER_PROCESS of text per worker
        num_proc = max(1, min(os.cpu_count() or 1, records.data.nbytes // MIN_BYTES_PER_PROCESS))
    return records.map(
        _tokenize_batch,
        fn_kwargs={"tokenizer": tokenizer},
        batched=True,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=records.column_names,
        desc="Tokenizing",
    )


def _tokenize_batch(batch: dict[str, list[str]], tokenizer: PreTrainedTokenizerFast) -> dict[str, list[list[int]]]:
    encoded = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"input_ids": [ids + [tokenizer.eos_token_id] for ids in encoded]}


def encode_corpus(
    paths: Sequence[str | Path],
    tokenizer: PreTrainedTokenizerFast,
    text_mode: TextMode = "line",
    batch_size: int = 1024,
) -> list[int]:
    """One token stream of local files, encoded as training encodes them: every record, then end-of-sequence.

    Evaluation of a model trained with `text_mode="document"` must read its test text the same way; for
    fairseq's per-line `</s>` stream of word-level data, `tokenization.encode_file` is the exact equivalent.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos_token; set one (e.g. tokenizer.eos_token = '</s>') and save it.")
    records, stream = list(read_records(paths, text_mode)), []
    for start in range(0, len(records), batch_size):
        for ids in _tokenize_batch({"text": records[start : start + batch_size]}, tokenizer)["input_ids"]:
            stream.extend(ids)
    return stream


def pack_blocks(tokenized: datasets.Dataset, block_size: int) -> datasets.Dataset:
    """Concatenate every "input_ids" row into one stream and cut it into rows of exactly `block_size` tokens.

    Only the final remainder (< block_size tokens) is dropped, as in fairseq `--sample-break-mode none`.
    """
    column = tokenized.with_format("arrow")[:]["input_ids"]  # list<int> chunks; flatten() respects slicing
    stream = np.concatenate([chunk.flatten().to_numpy() for chunk in column.chunks] or [np.empty(0, np.int32)])
    num_blocks = len(stream) // block_size
    if num_blocks == 0:
        raise ValueError(f"The text gives {len(stream)} tokens, fewer than one block of {block_size}: "
                         "use more text or a smaller seq_len.")
    flat = pa.array(stream[: num_blocks * block_size].astype(np.int32))  # int32: vocabularies stay below 2**31
    table = pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(flat, block_size)})  # (num_blocks, L)
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def build_lm_dataset(
    source: TextSource,
    tokenizer: PreTrainedTokenizerFast,
    block_size: int,
    cache_dir: str | Path,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Blocks of `block_size` token ids (column "input_ids") for `source`, cached under `cache_dir`.

    The cache key hashes the file contents, the text mode, the tokenizer and `block_size`, so the same inputs
    load the same dataset and any change rebuilds it. Call it on the main process first in distributed runs.
    """
    if block_size <= 0:
        raise ValueError(f"block_size={block_size} must be a positive number of tokens.")
    key = _digest(CACHE_VERSION, source.fingerprint(), tokenizer_fingerprint(tokenizer), block_size)
    path = Path(cache_dir) / f"blocks-{source.split}-L{block_size}-{key}"
    if not path.exists():
        logger.info("Tokenizing and packing %s into %s", source.files or source.hub_name, path)
        with _atomic_dir(path) as out, tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
            records = source.load(cache_dir=scratch)  # intermediate Arrow files, deleted with `scratch`
            pack_blocks(tokenize_records(records, tokenizer, num_proc), block_size).save_to_disk(out)
    return datasets.load_from_disk(str(path))


def collate_blocks(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack packed blocks; labels are the inputs themselves, because the model shifts them."""
    input_ids = torch.stack([torch.as_tensor(example["input_ids"]) for example in examples]).long()  # (b, L)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


__all__ = [
    "SPECIAL_TOKENS",
    "TextSource",
    "build_lm_dataset",
    "collate_blocks",
    "encode_corpus",
    "expand_files",
    "load_or_train_tokenizer",
    "pack_blocks",
    "read_records",
    "tokenize_records",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
    "train_wordlevel_tokenizer",
]
