"""Summarise a sweep folder: python scripts/report.py multirun/<date>/<time>-<id>

Prints the paper-style report (mean ± std over seeds per setting of the swept axes, the
paper's numbers and claims for a preset sweep) and writes report.md, summary.csv, results.csv,
table.txt and the figures into the folder. Partial sweeps work: unfinished runs are counted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from normlab.reporting.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    try:
        outputs = write_report(args.folder)
    except FileNotFoundError as error:
        print(f"normlab: error: {error}", file=sys.stderr)
        sys.exit(1)
    print(outputs["markdown"].read_text())
    for kind, path in outputs.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
