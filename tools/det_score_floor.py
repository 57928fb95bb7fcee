"""F1 at the validation-chosen threshold, re-scored below Detectron2's score floor.

Detectron2 drops the detections scored below ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` (0.05) before the
benchmark's threshold grid (``TEST.SPARSE.F1_THRESHOLDS``, 0.05 ... 0.95) sees them, so a run whose
validation F1 is still rising at 0.05 gets the floor as its threshold, and its ``f1_valthr`` may be
lower than the model allows. This re-evaluates kept runs (each folder's ``config.yaml`` and
``model_final.pth``) on the validation and test splits with a lower floor and thresholds from it,
and prints each run's recorded and new validation threshold and test F1 there, then each method's
mean and population standard deviation over its runs. A run without its weights keeps its recorded
values when its validation threshold is above 0.05 (the floor did not bind; marked "recorded") and
is left out of the means otherwise::

    .venv/bin/python tools/det_score_floor.py --data data/hela \\
        --csv docs/benchmarks/det_hela/det.csv --floor 0.01 \\
        work_dirs/bench/det/hela/ce_f000_s{3,4} work_dirs/bench/det/hela/ece_budget_est_f000_s{3,4}
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import statistics
import sys
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from det_false_positives import (  # noqa: E402
    inference_config,
    method_of,
    without_fraction_warning,
)


def thresholds_from(floor: float) -> List[float]:
    """The benchmark's F1 grid (0.05 ... 0.95) with the hundredths from ``floor`` below it."""
    low = [round(t / 100, 2) for t in range(max(1, round(floor * 100)), 5)]
    return low + [round(0.05 * i, 2) for i in range(1, 20)]


def rescore(work_dir: str, data: str, floor: float) -> Tuple[Dict[str, float], Dict[str, float]]:
    """The ``sparse/`` metrics (F1 at each threshold of :func:`thresholds_from`) of the run in
    ``work_dir`` on the validation and the test split, with the detections scored >= ``floor``
    kept."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog
    from train_net import Trainer

    from sparse_ext.detectron2 import register_partial_coco

    names = {}
    for split in ("val", "test"):
        names[split] = f"score_floor_{split}_{os.path.abspath(data)}"
        if names[split] not in DatasetCatalog.list():
            register_partial_coco(
                names[split],
                os.path.join(data, "annotations", f"{split}.json"),
                os.path.join(data, "images", split),
            )
    cfg = inference_config(work_dir)
    cfg.merge_from_list(
        [
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", floor,
            "TEST.SPARSE.F1_THRESHOLDS", thresholds_from(floor),
            "DATASETS.TEST", (names["val"], names["test"]),
            "OUTPUT_DIR", os.path.join(work_dir, "score_floor"),
        ]
    )  # fmt: skip
    with without_fraction_warning():
        model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        results = Trainer.test(cfg, model)
    return results[names["val"]]["sparse"], results[names["test"]]["sparse"]


def at_val_threshold(val: Dict[str, float], test: Dict[str, float]) -> Tuple[float, float]:
    """(validation's best threshold, the test F1 there), as the benchmark's ``f1_valthr``."""
    threshold = val["best_f1_threshold"]
    return threshold, test[f"f1@{threshold:g}"]


def recorded(csv_path: str, work_dir: str) -> Tuple[float, float]:
    """(val_threshold, f1_valthr) of the run in ``work_dir`` (a benchmark folder name,
    ``{loss}_f{NNN}_s{seed}``) as the benchmark's CSV records it.

    Raises:
        ValueError: the name is not a benchmark run's, or the CSV has no finished row of it.
    """
    from sparse_ext.benchmark.context import parse_run_folder

    loss, fraction, seed = parse_run_folder(work_dir)
    key = (loss, fraction, str(seed), "ok")
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if (row["loss"], int(row["fraction"]), row["seed"], row["status"]) == key:
                return float(row["val_threshold"]), float(row["f1_valthr"])
    raise ValueError(
        f"{csv_path}: no finished row of {os.path.basename(os.path.normpath(work_dir))}"
    )


def mean_std(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dirs", nargs="+", help="benchmark run folders")
    parser.add_argument("--data", required=True, help="dataset root (annotations/, images/)")
    parser.add_argument("--csv", required=True, help="the benchmark's det.csv of these runs")
    parser.add_argument("--floor", type=float, default=0.01, help="the lower score floor")
    args = parser.parse_args(argv)
    if not 0.0 < args.floor < 0.05:
        parser.error(f"--floor {args.floor:g}: must be in (0, 0.05), below Detectron2's 0.05")
    torch.set_num_threads(1)
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    print(
        f"| run | threshold (floor 0.05) | F1@val (floor 0.05) | threshold (floor {args.floor:g}) "
        f"| F1@val (floor {args.floor:g}) |"
    )
    print("|---|---|---|---|---|")
    pooled: Dict[str, List[Tuple[float, float]]] = defaultdict(list)
    for wd in args.work_dirs:
        name = os.path.basename(os.path.normpath(wd))
        old_t, old_f1 = recorded(args.csv, wd)
        if os.path.exists(os.path.join(wd, "model_final.pth")):
            new_t, new_f1 = at_val_threshold(*rescore(wd, args.data, args.floor))
            new = f"{new_t:g} | {new_f1:.3f}"
        elif old_t > 0.05 + 1e-9:
            new_t, new_f1, new = old_t, old_f1, "recorded | recorded"
        else:
            print(f"| {name} | {old_t:g} | {old_f1:.3f} | no weights | left out |", flush=True)
            continue
        pooled[method_of(wd)].append((old_f1, new_f1))
        print(f"| {name} | {old_t:g} | {old_f1:.3f} | {new} |", flush=True)
    print()
    print(f"| method | runs | F1@val (floor 0.05) | F1@val (floor {args.floor:g}) | change |")
    print("|---|---|---|---|---|")
    for method, runs in pooled.items():
        old, new = [r[0] for r in runs], [r[1] for r in runs]
        change = statistics.fmean(n - o for o, n in runs)
        print(f"| {method} | {len(runs)} | {mean_std(old)} | {mean_std(new)} | {change:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
