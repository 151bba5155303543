"""fairseq word-level dictionaries (`dict.txt`) and a fast Hugging Face tokenizer that encodes like fairseq.

fairseq rules (fairseq/data/dictionary.py, fairseq_cli/preprocess.py, binarizer.py):
- ids: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then dict.txt line k gets id 4+k;
- a line is split on whitespace, unknown words become `<unk>` and every line ends with `</s>`
  (a blank line is a lone `</s>`); files are read line by line with universal newlines
  (`modeling_alibi.tokenization.read_lines`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..errors import InputError, not_utf8
from ..tokenization import PADDING_SIDE, PathLike, read_lines

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
SPECIAL_SYMBOLS = (BOS, PAD, EOS, UNK)  # ids 0..3, always in this order
OVERWRITE_FLAG = "#fairseq:overwrite"


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
        if not os.path.isfile(path):
            raise InputError(f"{os.fspath(path)}: no such dictionary file (the dict.txt of the model's data-bin).")
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_lines(f, source=str(path))
        except UnicodeDecodeError as error:
            raise not_utf8(path, error) from None

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<lines>") -> FairseqDictionary:
        """Parse dict.txt lines (`symbol count [#fairseq:overwrite]`) like `Dictionary.add_from_file`."""
        d = cls()
        for lineno, raw in enumerate(lines, start=1):
            word, count, overwrite = _parse_dict_line(raw, lineno, source)
            if word in d.indices and not overwrite:
                raise InputError(
                    f"{source}:{lineno}: duplicate symbol {word!r} (first seen as id {d.indices[word]}). fairseq "
                    f"refuses this too: remove the line or end it with ' {OVERWRITE_FLAG}' to give it a new id."
                )
            if word in SPECIAL_SYMBOLS:
                # fairseq would re-point the literal word but keep unk/eos ids at 3/2; a tokenizer cannot
                # express that split, and no released dictionary does it.
                raise InputError(
                    f"{source}:{lineno}: overwriting the special symbol {word!r} is not supported; "
                    "remove this line (specials always have ids 0-3)."
                )
            d.indices[word] = len(d.symbols)
            d.symbols.append(word)
            d.counts.append(count)
        return d

    def save(self, path: PathLike) -> None:
        write_fairseq_dictionary(list(zip(self.symbols[4:], self.counts[4:], strict=True)), path)


def _parse_dict_line(raw: str, lineno: int, source: str) -> tuple[str, int, bool]:
    line = raw.rstrip()
    fields = line.rsplit(" ", 1)
    overwrite = len(fields) == 2 and fields[1] == OVERWRITE_FLAG
    if overwrite:
        fields = fields[0].rsplit(" ", 1)
    if len(fields) != 2 or not fields[0] or not fields[1].lstrip("-").isdigit():
        raise InputError(
            f"{source}:{lineno}: malformed dictionary line {raw.rstrip(chr(10))!r}; expected "
            f"'<symbol> <count>' or '<symbol> <count> {OVERWRITE_FLAG}' (one space before the count)."
        )
    return fields[0], int(fields[1]), overwrite


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


__all__ = [
    "FairseqDictionary",
    "build_fairseq_dictionary",
    "count_words",
    "fairseq_tokenizer",
    "finalize_dictionary",
    "write_fairseq_dictionary",
]
