"""Issue 11's acceptance checks on the segmentation recipes' benchmark CSVs, per dataset.

Reads ``<dir>/seg.csv`` written by ``sparse-ext benchmark --task seg`` (docs/benchmarks/seg_grid.sh)
and prints one markdown table per dataset: each recipe's Dice (mean ± std over seeds, number of
seeds) against CE with every object labelled (CE@100) and plain CE at the same fraction, its worst
seed, and with f misspecified at a true 30 %::

    .venv/bin/python tools/seg_recipe_checks.py docs/benchmarks/seg_hela docs/benchmarks/seg_hgsc
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparse_ext.benchmark.results import ResultsTable, summarise  # noqa: E402

RECIPES = ("ce_sampled", "ece", "nnpu", "ece_paper", "focal")
MISSPECIFIED = ("ce_sampled_f_half", "ce_sampled_f_double", "ece_f_half", "ece_f_double")


def _cell(stats: Dict[int, tuple], fraction: int) -> str:
    if fraction not in stats:
        return "-"
    mean, std, n = stats[fraction]
    return f"{mean:.3f} ± {std:.3f} ({n})"


def checks(rows: Sequence[Mapping[str, str]]) -> List[str]:
    """Markdown lines: the recipes' Dice per fraction, as a share of CE@100, and their margin
    over plain CE at the same fraction; the worst seed; the misspecified runs at 30 %."""
    dice = summarise(rows, "dice")
    worst: Dict[tuple, float] = {}
    for r in rows:
        key = (r["loss"], int(r["fraction"]))
        worst[key] = min(worst.get(key, 1.0), float(r["dice"]))
    ce = dice.get("ce", {})
    full = ce.get(100, (float("nan"), 0.0, 0))[0]
    lines = [
        f"CE@100: {_cell(ce, 100)}; threshold floor: {_cell(dice.get('threshold', {}), 30)}",
        "",
        "| loss | annotated % | Dice (seeds) | x CE@100 | - CE at same % | worst seed |",
        "|---|---|---|---|---|---|",
    ]
    for loss in (*RECIPES, *MISSPECIFIED):
        for fraction in (10, 30, 50):
            if fraction not in dice.get(loss, {}):
                continue
            mean = dice[loss][fraction][0]
            plain = ce.get(fraction)
            margin = f"{mean - plain[0]:+.3f}" if plain else "-"
            lines.append(
                f"| {loss} | {fraction} | {_cell(dice[loss], fraction)} | {mean / full:.3f} "
                f"| {margin} | {worst[(loss, fraction)]:.3f} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="folders holding a seg.csv")
    args = parser.parse_args(argv)
    for folder in args.dirs:
        rows = ResultsTable(os.path.join(folder, "seg.csv"), "seg").ok_rows()
        print(f"## {folder}\n")
        print("\n".join(checks(rows)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
