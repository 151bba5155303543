"""Perplexity against evaluation length of separately trained models, merged into one report.

Reads the extrapolation.json of each run (extrapolation_gpu.sh writes one per position encoding), prints one
markdown table and writes the merged report (table, CSV, JSON, PNG) to --output. It measures nothing itself and
needs no GPU; after the runs of extrapolation_gpu.sh:

    python benchmarks/merge_extrapolation.py docs/results/extrapolation/{alibi,sinusoidal}/extrapolation.json \\
        --output docs/results/extrapolation --caption "..."
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modeling_alibi.evaluation import ExtrapolationPoint, markdown_table, write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--output", required=True)
    parser.add_argument("--caption", default=None)
    args = parser.parse_args()
    points = [ExtrapolationPoint(**row) for path in args.inputs for row in json.load(open(path))]
    write_report(points, args.output, args.caption)
    print(markdown_table(points))


if __name__ == "__main__":
    main()
