"""Cut data/gutenberg-tiny (about 1.5 MB train, 200 KB valid/test) from the shared gutenberg-en corpus.

    python scripts/make_tiny_corpus.py --source ../shared/data/gutenberg-en --out data/gutenberg-tiny
"""

import argparse
import hashlib
import lzma
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# split -> (source files, UTF-8 byte budget per source file); 14 train shards give 14+ authors.
PLAN = {
    "train": ([f"train.{i:02d}.txt.xz" for i in range(14)], 110_000),
    "valid": (["valid.txt.xz"], 210_000),
    "test": (["test.txt.xz"], 210_000),
}
HEADER = """# gutenberg-tiny: a 2 MB slice of gutenberg-en for tests and the CPU demo

Source: `gutenberg-en` (its PROVENANCE.md: Project Gutenberg books via github.com/rcdm-uga/Gutenberg_Text at
a0b16d35a9851168ce9ac649851c17b7ab08d48e, cleaned; one `= Title =` line per document, one paragraph per line,
documents separated by one empty line). Licence: public domain in the USA (Project Gutenberg's criterion); the
Gutenberg boilerplate was removed upstream. Made by `python scripts/make_tiny_corpus.py` (deterministic): from
each source file it keeps whole paragraphs from the start, document after document, until the file's byte
budget ({budgets}) is reached, so a document is cut only between paragraphs.

| file | bytes | documents | sha256 |
|---|---|---|---|
"""


def cut(text: str, budget: int) -> list[tuple[str, list[str], bool]]:
    """Leading (title, paragraphs, whole?) of `text` whose bytes, newlines included, fit in `budget`."""
    kept, used = [], 0
    for document in text.strip("\n").split("\n\n"):
        title, *paragraphs = document.split("\n")
        used += len(title.encode()) + 2  # the title line and the blank line after the document
        taken = []
        for paragraph in paragraphs:
            if used + len(paragraph.encode()) + 1 > budget:
                break
            taken.append(paragraph)
            used += len(paragraph.encode()) + 1
        if taken:
            kept.append((title, taken, len(taken) == len(paragraphs)))
        if len(taken) < len(paragraphs):
            return kept
    return kept


def read_books(source: Path) -> dict[str, list[str]]:
    """books.tsv rows by title. A line break inside a title (unquoted in the TSV) reads ': ' in the data."""
    records: list[str] = []
    for line in source.joinpath("books.tsv").read_text(encoding="utf-8").split("\n")[1:]:
        if re.match(r"(train\.\d\d|valid|test)\t", line) or not line:
            records.append(line)
        else:
            records[-1] += ": " + line
    return {row[2]: row for row in (r.split("\t") for r in records if r)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "gutenberg-en")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "gutenberg-tiny")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    books = read_books(args.source)
    budgets = ", ".join(f"{split} {budget:,} B per file" for split, (_, budget) in PLAN.items())
    files, table = [HEADER.format(budgets=budgets).rstrip("\n")], []
    for split, (names, budget) in PLAN.items():
        documents = []
        for name in names:
            text = lzma.open(args.source / name, "rt", encoding="utf-8").read()
            for title, paragraphs, whole in cut(text, budget):
                _, author, book, *_, blob = books[title[2:-2]]
                extent = "whole" if whole else f"first {len(paragraphs)} paragraph(s)"
                table.append(f"| {split} | {name} | {author} | {book} | {extent} | {blob} |")
                documents.append("\n".join([title, *paragraphs]))
        data = ("\n\n".join(documents) + "\n").encode()
        args.out.joinpath(f"{split}.txt").write_bytes(data)
        files.append(f"| {split}.txt | {len(data):,} | {len(documents)} | {hashlib.sha256(data).hexdigest()} |")
    books_header = ["", "## Books", "", "| split | source file | author | title | kept | books.tsv blob sha1 |"]
    lines = files + books_header + ["|---" * 6 + "|"] + table
    args.out.joinpath("PROVENANCE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
