"""fairseq word-level dictionaries (`dict.txt`) and a fast Hugging Face tokenizer that encodes like fairseq.

fairseq rules (fairseq/data/dictionary.py, fairseq_cli/preprocess.py, binarizer.py):
- ids: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then dict.txt line k gets id 4+k;
- a line is split on whitespace, unknown words become `<unk>` and every line ends with `</s>`
  (a blank line is a lone `</s>`); files are read line by line with universal newlines.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
SPECIAL_SYMBOLS = (BOS, PAD, EOS, UNK)  # ids 0..3, always in this order
# A decoder-only LM continues the last token of each row, so batched generate() needs prompts padded on the left.
PADDING_SIDE = "left"
OVERWRITE_FLAG = "#fairseq:overwrite"

PathLike = str | os.PathLike


@dataclass
class FairseqDictionary:
    """A fairseq `Dictionary`: `symbols[i]` is the symbol of id i, `indices` maps a symbol to the id used
    when encoding (the last one when `#fairseq:overwrite` repeats a symbol, as in fairseq)."""

    symbols: list[str] = field(default_factory=lambda: list(SPECIAL_SYMBOLS))
    counts: list[int] = field(default_factory=lambda: [1] * len(SPECIAL_SYMBOLS))
    indices: dict[str, int] = field(default_factory=lambda: {s: i for i, s in enumerate(SPECIAL_SYMBOLS)})

    bos_index, pad_index, eos_index, unk_index = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.symbols)

    def index(self, word: str) -> int:
        return self.indices.get(word, self.unk_index)

    def encode_line(self, line: str, append_eos: bool = True) -> list[int]:
        """fairseq `Dictionary.encode_line` with `tokenize_line` (whitespace split, which equals `str.split`)."""
        ids = [self.indices.get(word, self.unk_index) for word in line.split()]
        return ids + [self.eos_index] if append_eos else ids

    @classmethod
    def load(cls, path: PathLike) -> FairseqDictionary:
        with open(path, encoding="utf-8") as f:
            return cls.from_lines(f, source=str(path))

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<lines>") -> FairseqDictionary:
        """Parse dict.txt lines (`symbol count [#fairseq:overwrite]`) like `Dictionary.add_from_file`."""
        d = cls()
        for lineno, raw in enumerate(lines, start=1):
            word, count, overwrite = _parse_dict_line(raw, lineno, source)
            if word in d.indices and not overwrite:
                raise ValueError(
                    f"{source}:{lineno}: duplicate symbol {word!r} (first seen as id {d.indices[word]}). fairseq "
                    f"refuses this too: remove the line or end it with ' {OVERWRITE_FLAG}' to give it a new id."
                )
            if word in SPECIAL_SYMBOLS:
                # fairseq would re-point the literal word but keep unk/eos ids at 3/2; a tokenizer cannot
                # express that split, and no released dictionary does it.
                raise ValueError(
                    f"{source}:{lineno}: overwriting the special symbol {word!r} is not supported; "
                    "remove this line (specials always have ids 0-3)."
                )
            d.indices[word] = len(d.symbols)
            d.symbols.append(word)
            d.counts.append(count)
        return d

    def save(self, path: PathLike) -> None:
        write_fairseq_dictionary(list(zip(self.symbols[4:], self.counts[4:])), path)


def _parse_dict_line(raw: str, lineno: int, source: str) -> tuple[str, int, bool]:
    line = raw.rstrip()
    fields = line.rsplit(" ", 1)
    overwrite = len(fields) == 2 and fields[1] == OVERWRITE_FLAG
    if overwrite:
        fields = fields[0].rsplit(" ", 1)
    if len(fields) != 2 or not fields[0] or not fields[1].lstrip("-").isdigit():
        raise ValueError(
            f"{source}:{lineno}: malformed dictionary line {raw.rstrip(chr(10))!r}; expected "
            f"'<symbol> <count>' or '<symbol> <count> {OVERWRITE_FLAG}' (one space before the count)."
        )
    return fields[0], int(fields[1]), overwrite


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
    with opener(source, "rt", encoding="utf-8", newline=None) as f:  # universal newlines, like fairseq
        for line in f:
            yield line.rstrip("\n")


def split_lines(text: str) -> list[str]:
    """Lines of a string with fairseq's file semantics; an empty string is one blank line (a lone `</s>`),
    so a list of dataset rows where blank rows are "" keeps one line per row."""
    lines = [line.rstrip("\n") for line in io.StringIO(text, newline=None)]
    return lines or [""]


def count_words(lines: Iterable[str]) -> Counter[str]:
    """Word counts as fairseq-preprocess collects them: whitespace split plus one `</s>` per line."""
    counter: Counter[str] = Counter()
    for line in lines:
        counter.update(line.split())
        counter[EOS] += 1
    return counter


def build_fairseq_dictionary(
    paths: PathLike | Iterable[PathLike] | None = None,
    *,
    lines: Iterable[str] | None = None,
    threshold: int = 0,
    nwords: int = -1,
    padding_factor: int = 8,
) -> list[tuple[str, int]]:
    """Build the (symbol, count) entries of a dict.txt with fairseq-preprocess's rules.

    Counts come from whitespace-split words of every line of `paths` and `lines`. Specials are never
    written: literal `<unk>`, `</s>`, `<s>`, `<pad>` in the text add to the special's (unsaved) count,
    exactly as `Dictionary.add_symbol` does, and are not given a second id. Words are sorted by count,
    descending, ties in code-point order; `madeupword0000 0`, ... pad 4 + len(entries) to a multiple of
    `padding_factor` (fairseq `--padding-factor`, default 8).

    Args:
        paths: One file or several; read with fairseq's line semantics (see `read_lines`).
        lines: Text lines (newline optional), counted after the files.
        threshold: Drop words seen fewer times (fairseq `--thresholdsrc`; 0 keeps all).
        nwords: Keep at most this many symbols including the 4 specials (fairseq `--nwordssrc`; -1 keeps all).
        padding_factor: Pad the dictionary size to a multiple of this.

    Returns:
        The dict.txt entries in id order (entry k has id 4+k).
    """
    if paths is None and lines is None:
        raise ValueError("build_fairseq_dictionary needs `paths` (files) or `lines` (strings) to count.")
    counter: Counter[str] = Counter()
    if paths is not None:
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
            counter.update(count_words(read_lines(path)))
    if lines is not None:
        counter.update(count_words(line.rstrip("\r\n") for line in lines))
    return finalize_dictionary(counter, threshold=threshold, nwords=nwords, padding_factor=padding_factor)


def finalize_dictionary(
    counter: Counter[str], threshold: int = 0, nwords: int = -1, padding_factor: int = 8
) -> list[tuple[str, int]]:
    """fairseq `Dictionary.finalize` + `pad_to_multiple_` on word counts; returns dict.txt entries."""
    words = {w: c for w, c in counter.items() if w not in SPECIAL_SYMBOLS}
    # Counter(sorted(...)).most_common() in fairseq: a stable sort by count over code-point-sorted words.
    ranked = sorted(sorted(words.items()), key=lambda wc: wc[1], reverse=True)
    limit = len(ranked) if nwords <= 0 else max(nwords - len(SPECIAL_SYMBOLS), 0)
    entries: list[tuple[str, int]] = []
    for word, count in ranked[:limit]:
        if count < threshold:
            break
        entries.append((word, count))
    present = {w for w, _ in entries}
    i = 0
    while padding_factor > 1 and (len(SPECIAL_SYMBOLS) + len(entries)) % padding_factor:
        symbol = f"madeupword{i:04d}"
        if symbol not in present:  # fairseq's add_symbol(n=0) on an existing word only bumps its count
            entries.append((symbol, 0))
        i += 1
    return entries


def write_fairseq_dictionary(entries: Iterable[tuple[str, int]], path: PathLike) -> None:
    """Write dict.txt entries as `symbol count` lines (fairseq `Dictionary.save`)."""
    with open(path, "w", encoding="utf-8") as f:
        for symbol, count in entries:
            f.write(f"{symbol} {count}\n")


def fairseq_tokenizer(dictionary: PathLike | FairseqDictionary) -> PreTrainedTokenizerFast:
    """A fast word-level tokenizer with fairseq's ids and rules, savable with `save_pretrained`.

    `tokenizer(line)` encodes one fairseq line: whitespace-split words then `</s>`. For a text of many
    lines use `encode_lines` (each line gets its own `</s>`, a blank line is a lone `</s>`), which is also
    exact in one corner case where the tokenizer alone is not: a special symbol glued to other characters
    (`foo<unk>`) is split off by the tokenizer, while fairseq maps the whole word to `<unk>`.
    Decoding joins the words with single spaces. Batches are padded on the left, for batched `generate()`.
    """
    d = dictionary if isinstance(dictionary, FairseqDictionary) else FairseqDictionary.load(dictionary)
    backend = Tokenizer(models.WordLevel(vocab=dict(d.indices), unk_token=UNK))
    # Python's str.split (fairseq) also splits on \x1c-\x1f, which are not Unicode White_Space for Rust.
    backend.normalizer = normalizers.Replace(Regex("[\\x1c-\\x1f]"), " ")
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, d.eos_index)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # keep "do n't" and "@-@" exactly as in the text
        padding_side=PADDING_SIDE,
    )


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
        return tokenizer.save_pretrained(directory)
    finally:
        tokenizer.padding_side = side
        if init_side is missing:
            del tokenizer.init_kwargs["padding_side"]
        else:
            tokenizer.init_kwargs["padding_side"] = init_side


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
    for line, ids in zip(lines, batch):
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
    "FairseqDictionary",
    "build_fairseq_dictionary",
    "count_words",
    "encode_file",
    "encode_lines",
    "fairseq_tokenizer",
    "finalize_dictionary",
    "read_lines",
    "save_tokenizer",
    "split_lines",
    "write_fairseq_dictionary",
]
