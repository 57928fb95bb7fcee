"""Issue 12's comparison on the detection benchmark's CSV: every method against CE per annotation
level, mean ± std over seeds, with nnPU's fixed prior chosen per seed by validation recall.

Zhao, Pang et al. (MICCAI 2021, Sect. 3.2) pick pi from 0.02:0.01:0.06 by the best average recall
on a validation set. ``nnpu_val`` is that choice among the ``nnpu_pi02`` ... ``nnpu_pi06`` runs of
one (annotation level, seed): the run with the highest ``val_average_recall``. Recall needs only
the positives, and a sparse validation set's annotations are a random subset of all nuclei, so
the exhaustive validation split gives the same criterion in expectation, with less noise::

    .venv/bin/python tools/det_recipe_checks.py docs/benchmarks/det_hela

``--baseline METHOD`` compares with another method than CE on the seeds both ran, ``--seeds``
keeps some seeds only::

    .venv/bin/python tools/det_recipe_checks.py docs/benchmarks/det_hgsc --baseline ece_budget_est
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from typing import Dict, List, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparse_ext.benchmark.results import (  # noqa: E402
    ResultsTable,
    fraction_label,
    paired_differences,
    summarise,
)

METRICS = ("recall", "precision", "f1", "f1_valthr", "ap", "ap50")
#: the metrics of issue 12's bar, compared with the baseline seed by seed
PAIRED = ("f1", "recall", "precision", "f1_valthr", "ap")
PAIRED_NAMES = {"f1": "F1", "f1_valthr": "F1@val", "ap": "AP"}
FIXED_PRIORS = tuple(f"nnpu_pi{p:02d}" for p in range(2, 7))
#: a run whose AP50 stays below this detected almost no nucleus at any score: it learned nothing
#: (a stalled classifier, a collapsed RPN, or too few annotations), whatever its losses did
NOTHING_LEARNED_AP50 = 0.01
METHODS = (
    "ce",
    "focal",
    "bde",
    "ece",
    "ece_budget",
    "ece_budget_est",
    "ece_keep_bg",
    "ece_keep_det",
    "ece_rpn_ece",
    "ece_rpn_bde",
    "ece_rho08",
    "ece_table2",
    "pu_classic",
    "nnpu_val",
    *FIXED_PRIORS,
    "nnpu_sampled",
)


def _num(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def with_validation_prior(rows: Sequence[Mapping[str, str]]) -> List[Dict[str, str]]:
    """The rows plus one ``nnpu_val`` row per (fraction, seed) that has a run of every prior of
    the grid: the one with the best validation average recall (ties: the smaller prior), its
    prior in ``chosen``. A seed with part of the grid gets none (a choice among some priors is
    not the paper's selection)."""
    out = [dict(r) for r in rows]
    groups: Dict[tuple, List[Mapping[str, str]]] = defaultdict(list)
    for r in rows:
        if r["loss"] in FIXED_PRIORS and not math.isnan(_num(r.get("val_average_recall"))):
            groups[(r["fraction"], r["seed"])].append(r)
    for (_, _), runs in sorted(groups.items()):
        if {r["loss"] for r in runs} != set(FIXED_PRIORS):
            continue
        best = max(
            runs, key=lambda r: (_num(r["val_average_recall"]), -FIXED_PRIORS.index(r["loss"]))
        )
        out.append({**best, "loss": "nnpu_val", "chosen": best["loss"]})
    return out


def checks(rows: Sequence[Mapping[str, str]], baseline: str = "ce") -> List[str]:
    """Markdown lines: per annotation level, each method's metrics (mean ± std, seeds) and its
    differences to ``baseline`` in the metrics of the bar (F1@0.5, recall, precision, F1 at the
    validation threshold, AP), on the seeds both ran
    (:func:`sparse_ext.benchmark.results.paired_differences`)."""
    rows = with_validation_prior(rows)
    stats = {m: summarise(rows, m) for m in METRICS}
    to_base = {m: paired_differences(rows, m, baseline) for m in PAIRED}
    chosen = defaultdict(list)
    for r in rows:
        if r["loss"] == "nnpu_val":
            chosen[int(r["fraction"])].append(r["chosen"].replace("nnpu_pi", "0."))
    fractions = sorted({f for by_frac in stats["f1"].values() for f in by_frac})
    base = "CE" if baseline == "ce" else baseline
    head = ["method", "annotated", *METRICS]
    head += [f"{PAIRED_NAMES.get(m, m)} - {base}" for m in PAIRED]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    methods = [*METHODS, *sorted(set(stats["f1"]) - set(METHODS))]  # none left out
    for fraction in fractions:
        for method in methods:
            if fraction not in stats["f1"].get(method, {}):
                continue
            cells = [method, fraction_label(fraction)]
            for m in METRICS:
                cell = stats[m].get(method, {}).get(fraction)
                cells.append("-" if cell is None else f"{cell[0]:.3f} ± {cell[1]:.3f} ({cell[2]})")
            for m in PAIRED:
                diff = to_base[m].get(method, {}).get(fraction)
                cells.append("-" if diff is None else f"{diff:+.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"- {fraction_label(f)}: validation chose pi = {', '.join(chosen[f])} (seeds in order)"
        for f in fractions
        if chosen.get(f)
    ]
    nothing = [
        f"{r['loss']} {fraction_label(int(r['fraction']))} seed {r['seed']}"
        for r in rows
        if r["loss"] != "nnpu_val" and _num(r.get("ap50")) < NOTHING_LEARNED_AP50
    ]
    if nothing:
        notes.append(
            f"- learned nothing (AP50 < {NOTHING_LEARNED_AP50:g}, {len(nothing)} of "
            f"{sum(r['loss'] != 'nnpu_val' for r in rows)} runs): {'; '.join(nothing)}"
        )
    return lines + ([""] + notes if notes else [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="folders holding a det.csv")
    parser.add_argument("--baseline", default="ce", help="the method compared with (default ce)")
    parser.add_argument("--seeds", help="comma-separated seeds to keep (default: all)")
    args = parser.parse_args(argv)
    seeds = None if args.seeds is None else {s.strip() for s in args.seeds.split(",")}
    for folder in args.dirs:
        rows = ResultsTable(os.path.join(folder, "det.csv"), "det").ok_rows()
        if seeds is not None:
            rows = [r for r in rows if str(r["seed"]) in seeds]
        if not any(r["loss"] == args.baseline for r in rows):
            parser.error(f"--baseline {args.baseline!r}: no finished run in {folder}")
        print(f"## {folder}\n")
        print("\n".join(checks(rows, args.baseline)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
