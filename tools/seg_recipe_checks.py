"""Issue 11's acceptance checks on the segmentation recipes' benchmark CSVs, per dataset.

Reads ``<dir>/seg.csv`` written by ``sparse-ext benchmark --task seg`` (docs/benchmarks/seg_grid.sh)
and prints one markdown table per dataset: each recipe's Dice (mean ± std over seeds, number of
seeds) against CE with every object labelled (CE@100) and plain CE at the same fraction (over the
seeds both ran), its worst seed, and with f misspecified at a true 30 %; then the outcome of the annotated-fraction check
(the CSV's ``f_estimate`` / ``f_used``)::

    .venv/bin/python tools/seg_recipe_checks.py docs/benchmarks/seg_hela docs/benchmarks/seg_hgsc
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparse_ext.benchmark.results import (  # noqa: E402
    ResultsTable,
    paired_differences,
    summarise,
)

RECIPES = ("ce_sampled", "ece", "nnpu", "ece_focal", "ece_paper", "focal")
MISSPECIFIED = (
    "ce_sampled_f_half",
    "ce_sampled_f_double",
    "ece_f_half",
    "ece_f_double",
    "ce_sampled_f_fallback",
)
# the ResNet FCN recipes, against the FCN with CE on every object (fcn_ce at 100 %)
FCN_RECIPES = ("fcn_ce_sampled", "fcn_ece")


def _cell(stats: Dict[int, tuple], fraction: int) -> str:
    if fraction not in stats:
        return "-"
    mean, std, n = stats[fraction]
    return f"{mean:.3f} ± {std:.3f} ({n})"


def checks(rows: Sequence[Mapping[str, str]]) -> List[str]:
    """Markdown lines: the recipes' Dice per fraction, as a share of CE@100, and their margin
    over plain CE at the same fraction (over the seeds both ran); the worst seed; the
    misspecified runs at 30 %."""
    dice = summarise(rows, "dice")
    over_ce = paired_differences(rows, "dice")
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
    fcn_full = dice.get("fcn_ce", {}).get(100, (float("nan"), 0.0, 0))[0]
    for loss in (*RECIPES, *MISSPECIFIED, *FCN_RECIPES):
        for fraction in (10, 30, 50):
            if fraction not in dice.get(loss, {}):
                continue
            mean = dice[loss][fraction][0]
            if loss in FCN_RECIPES:  # its CE@100 is the FCN's; no plain FCN CE at 30 %
                lines.append(
                    f"| {loss} | {fraction} | {_cell(dice[loss], fraction)} | "
                    f"{mean / fcn_full:.3f} (fcn_ce@100 {_cell(dice.get('fcn_ce', {}), 100)}) "
                    f"| - | {worst[(loss, fraction)]:.3f} |"
                )
                continue
            paired = over_ce.get(loss, {}).get(fraction)
            margin = "-" if paired is None else f"{paired:+.3f}"
            lines.append(
                f"| {loss} | {fraction} | {_cell(dice[loss], fraction)} | {mean / full:.3f} "
                f"| {margin} | {worst[(loss, fraction)]:.3f} |"
            )
    return lines + ["", *fraction_checks(rows)]


def fraction_checks(rows: Sequence[Mapping[str, str]]) -> List[str]:
    """Markdown lines: per recipe and fraction, the range over seeds of the annotated fraction
    the labelled data gave at 20 % of training (``f_estimate``) and of the f the loss trained on
    after ``SparseLossAnnealingHook``'s check (``f_used``)."""
    found: Dict[tuple, List[tuple]] = {}
    for r in rows:
        if r.get("f_used") not in (None, ""):
            found.setdefault((r["loss"], int(r["fraction"])), []).append(
                (float(r["f_estimate"]), float(r["f_used"]))
            )
    if not found:
        return []
    lines = [
        "| loss | annotated % | runs | f estimate at 20 % (min-max) | f used after it (min-max) |",
        "|---|---|---|---|---|",
    ]
    for (loss, fraction), values in sorted(found.items()):
        est = [e for e, _ in values if not math.isnan(e)]  # NaN: no estimate (nnPU: no check)
        used = [u for _, u in values]
        est_range = f"{min(est):.3f}-{max(est):.3f}" if est else "-"
        lines.append(
            f"| {loss} | {fraction} | {len(values)} | {est_range} "
            f"| {min(used):.3f}-{max(used):.3f} |"
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
