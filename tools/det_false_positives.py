"""What a trained detector's false positives are: the detections at score > a threshold on the
test split, matched greedily to the annotations (IoU >= 0.5, most confident first, as in the
benchmark's recall and precision), and each unmatched one sorted by its best IoU with any
annotation: a duplicate (>= 0.5, its annotation already matched), a fragment or an oversized
box (0.1-0.5, smaller or larger than that annotation), or isolated (< 0.1)::

    .venv/bin/python tools/det_false_positives.py --data data/hgsc \\
        work_dirs/bench/det/hgsc/ce_f010_s3 work_dirs/bench/det/hgsc/ece_budget_est_f010_s3

Each folder is a benchmark run's OUTPUT_DIR (its ``config.yaml`` and ``model_final.pth``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter, defaultdict
from typing import Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = ("tp", "duplicate", "fragment", "oversized", "isolated")


def classify(
    scores: np.ndarray, iou: np.ndarray, pred_areas: np.ndarray, gt_areas: np.ndarray
) -> Counter:
    """Counts of :data:`KINDS` for detections (``scores`` (D,), IoU (D, G) with the annotations,
    box areas) already filtered by score."""
    counts: Counter = Counter({k: 0 for k in KINDS})
    matched = set()
    for i in np.argsort(-scores, kind="stable"):
        row = iou[i] if iou.shape[1] else np.zeros(1)
        free = [int(j) for j in np.argsort(-row, kind="stable") if row[j] >= 0.5]
        free = [j for j in free if j not in matched]
        best = float(row.max())
        if free:
            matched.add(free[0])
            counts["tp"] += 1
        elif best >= 0.5:
            counts["duplicate"] += 1
        elif best >= 0.1:
            j = int(row.argmax())
            counts["fragment" if pred_areas[i] < gt_areas[j] else "oversized"] += 1
        else:
            counts["isolated"] += 1
    return counts


def run_counts(work_dir: str, coco: Dict, images: str, threshold: float) -> Counter:
    """:func:`classify` summed over the images of ``coco`` for the model in ``work_dir``."""
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor
    from detectron2.structures import Boxes, pairwise_iou
    from skimage import io

    from sparse_ext.detectron2 import add_sparse_config

    cfg = get_cfg()
    add_sparse_config(cfg)
    cfg.merge_from_file(os.path.join(work_dir, "config.yaml"))
    cfg.MODEL.WEIGHTS = os.path.join(work_dir, "model_final.pth")
    cfg.MODEL.DEVICE = "cpu"
    predictor = DefaultPredictor(cfg)
    boxes: Dict[int, List[List[float]]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
    total: Counter = Counter({k: 0 for k in KINDS})
    for im in coco["images"]:
        img = io.imread(os.path.join(images, im["file_name"]))
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out = predictor(np.ascontiguousarray(img[:, :, :3][:, :, ::-1]))["instances"]
        out = out[out.scores > threshold]
        gt = Boxes(torch.tensor(boxes[im["id"]], dtype=torch.float32).reshape(-1, 4))
        total += classify(
            out.scores.numpy(),
            pairwise_iou(out.pred_boxes, gt).numpy(),
            out.pred_boxes.area().numpy(),
            gt.area().numpy(),
        )
    return total


def table_row(name: str, counts: Counter) -> str:
    """A markdown row: the counts of each kind, the precision and the fragments per true
    positive (a method's runs pooled: ``counts`` summed over them)."""
    n = sum(counts[k] for k in KINDS)
    precision = counts["tp"] / n if n else float("nan")
    per_tp = counts["fragment"] / counts["tp"] if counts["tp"] else float("nan")
    cells = " | ".join(str(counts[k]) for k in KINDS)
    return f"| {name} | {cells} | {precision:.3f} | {per_tp:.2f} |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dirs", nargs="+", help="benchmark run folders")
    parser.add_argument("--data", required=True, help="dataset root (annotations/, images/)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with open(os.path.join(args.data, "annotations", f"{args.split}.json")) as f:
        coco = json.load(f)
    images = os.path.join(args.data, "images", args.split)
    print("| run | " + " | ".join(KINDS) + " | precision | fragments per tp |")
    print("|---" * (len(KINDS) + 3) + "|")
    pooled: Dict[str, List[Counter]] = defaultdict(list)
    for wd in args.work_dirs:
        name = os.path.basename(os.path.normpath(wd))
        counts = run_counts(wd, coco, images, args.threshold)
        pooled[re.sub(r"_s\d+$", "", name)].append(counts)
        print(table_row(name, counts))
    for method, runs in pooled.items():
        if len(runs) > 1:
            print(table_row(f"{method} ({len(runs)} runs)", sum(runs, Counter())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
