"""Tokenizer I/O that every tool shares: text read with fairseq's line semantics, token streams, saved tokenizers.

fairseq's line rules (fairseq_cli/preprocess.py, binarizer.py): files are read line by line with universal
newlines, and every line's tokens are followed by `</s>` (a blank line is a lone `</s>`). The fairseq dictionary
and its tokenizer are in `modeling_alibi.fairseq.dictionary`.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import models
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .errors import not_utf8

logger = logging.getLogger(__name__)

# A decoder-only LM continues the last token of each row, so batched generate() needs prompts padded on the left.
PADDING_SIDE = "left"

PathLike = str | os.PathLike


# Compressed text is read transparently by file name (the gutenberg-en corpus ships as .txt.xz).
_OPENERS = {".xz": lzma.open, ".lzma": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


def read_lines(source: PathLike | io.TextIOBase) -> Iterator[str]:
    """Yield the lines of a text file without their newline, as fairseq's `readline` loop sees them
    (universal newlines: `\\n`, `\\r\\n` and `\\r` end a line; a final line without newline counts).
    Files ending in `.xz`/`.lzma`, `.gz` or `.bz2` are decompressed on the fly; all are read as UTF-8."""
    if isinstance(source, io.TextIOBase):
        for line in source:
            yield line.rstrip("\r\n")
        return
    opener = _OPENERS.get(Path(source).suffix.lower(), open)
    try:
        with opener(source, "rt", encoding="utf-8", newline=None) as f:  # universal newlines, like fairseq
            for line in f:
                yield line.rstrip("\n")
    except UnicodeDecodeError as error:
        raise not_utf8(source, error) from None


def split_lines(text: str) -> list[str]:
    """Lines of a string with fairseq's file semantics; an empty string is one blank line (a lone `</s>`),
    so a list of dataset rows where blank rows are "" keeps one line per row."""
    lines = [line.rstrip("\n") for line in io.StringIO(text, newline=None)]
    return lines or [""]


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: PathLike) -> tuple[str, ...]:
    """`tokenizer.save_pretrained(directory)` with `padding_side="left"` in the saved `tokenizer_config.json`.

    Every tokenizer this package saves next to a model goes through here, so `tokenizer(prompts, padding=True)`
    for a batched `generate()` pads on the left whatever tokenizer was given (a Hub tokenizer may pad on the
    right; transformers' text-generation pipeline switches to the left by itself). The caller's tokenizer is left
    as it was. transformers saves `padding_side` only when it is among the tokenizer's init kwargs, so both the
    attribute and the init kwarg are set for the save.
    """
    if not hasattr(tokenizer, "padding_side") or not isinstance(getattr(tokenizer, "init_kwargs", None), dict):
        return tokenizer.save_pretrained(directory)  # not a transformers tokenizer: nothing to set
    missing = object()
    side, init_side = tokenizer.padding_side, tokenizer.init_kwargs.get("padding_side", missing)
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = PADDING_SIDE
    try:
        files = tokenizer.save_pretrained(directory)
        _standard_tokenizer_class(Path(directory) / "tokenizer_config.json")
        return files
    finally:
        tokenizer.padding_side = side
        if init_side is missing:
            del tokenizer.init_kwargs["padding_side"]
        else:
            tokenizer.init_kwargs["padding_side"] = init_side


def _standard_tokenizer_class(path: Path) -> None:
    """Name the class `PreTrainedTokenizerFast` where transformers 5 wrote its alias `TokenizersBackend`.

    transformers 5 loads both names as the same tokenizers-backed class from tokenizer.json; transformers 4 knows
    only `PreTrainedTokenizerFast`. Either way the folder's tokenizer is a standard class: no remote code.
    """
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def encode_lines(tokenizer: PreTrainedTokenizerFast, lines: Iterable[str], append_eos: bool = True) -> list[int]:
    """Token stream of `lines` with fairseq's rule: each line's tokens followed by the eos id.

    Works with any tokenizer (the text of each line is encoded without special tokens, then
    `tokenizer.eos_token_id` is appended). Lines may keep their trailing newline.
    """
    lines = [line.rstrip("\r\n") for line in lines]
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ValueError("The tokenizer has no eos_token_id; set tokenizer.eos_token or pass append_eos=False.")
    batch = tokenizer(lines, add_special_tokens=False)["input_ids"] if lines else []
    word_level = _word_level_vocab(tokenizer)
    specials = tokenizer.all_special_tokens
    stream: list[int] = []
    for line, ids in zip(lines, batch, strict=True):
        if word_level is not None and _has_glued_special(line, specials):
            vocab, unk = word_level
            ids = [vocab.get(word, unk) for word in line.split()]
        stream.extend(ids)
        if append_eos:
            stream.append(eos)
    return stream


def encode_file(tokenizer: PreTrainedTokenizerFast, path: PathLike) -> list[int]:
    """`encode_lines` over a text file read with fairseq's line semantics (blank lines included)."""
    return encode_lines(tokenizer, read_lines(path))


def _word_level_vocab(tokenizer: PreTrainedTokenizerFast) -> tuple[dict[str, int], int] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, models.WordLevel):
        return None
    return tokenizer.get_vocab(), tokenizer.unk_token_id


def _has_glued_special(line: str, specials: list[str]) -> bool:
    """True when a special symbol is part of a longer word: the tokenizer would split it off, fairseq would not."""
    if not any(s in line for s in specials):
        return False
    return any(s in word and s != word for word in line.split() for s in specials)

__all__ = [
    "encode_file",
    "encode_lines",
    "read_lines",
    "save_tokenizer",
    "split_lines",
]
