"""What a trained detector's false positives are: the detections at score > a threshold on the
test split, matched greedily to the annotations (IoU >= 0.5, most confident first, as in the
benchmark's recall and precision), and each unmatched one sorted by its best IoU with any
annotation: a duplicate (>= 0.5, its annotation already matched), a fragment or an oversized
box (0.1-0.5, smaller or larger than that annotation), or isolated (< 0.1)::

    .venv/bin/python tools/det_false_positives.py --data data/hgsc \\
        work_dirs/bench/det/hgsc/ce_f010_s3 work_dirs/bench/det/hgsc/ece_budget_est_f010_s3

With ``--missed`` it prints where the test annotations are lost instead: the share of them that
some box reaches at IoU >= 0.5 at each stage of the model (an RPN proposal; a proposal's regressed
box at any score; one scored at least Detectron2's floor ``ROI_HEADS.SCORE_THRESH_TEST``; a
detection, after that floor, NMS and the per-image cap; a detection scored above
``--threshold``). Each share bounds the recall of the stages after it: a loss in the ROI
classifier cannot recall what no proposal reaches.

Each folder is a benchmark run's OUTPUT_DIR (its ``config.yaml`` and ``model_final.pth``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections import Counter, defaultdict
from typing import Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = ("tp", "duplicate", "fragment", "oversized", "isolated")
STAGES = ("proposal", "box", "scored", "detection", "above")


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


def reached(iou: np.ndarray) -> int:
    """How many annotations (the columns of ``iou``, boxes x annotations) some box reaches at IoU
    >= 0.5, one-to-many: an upper bound of the recall."""
    return int((iou >= 0.5).any(axis=0).sum()) if iou.size else 0


def inference_config(work_dir: str):
    """The config of the run in ``work_dir`` (its ``config.yaml``) with its ``model_final.pth``,
    on the CPU."""
    from sparse_ext.detectron2 import load_sparse_config

    cfg = load_sparse_config(os.path.join(work_dir, "config.yaml"))
    cfg.MODEL.WEIGHTS = os.path.join(work_dir, "model_final.pth")
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@contextlib.contextmanager
def without_fraction_warning():
    """Build a model for inference without the warning that the annotated fraction is unknown
    (the recipe's bound falls back at build; inference reads no fraction)."""
    from sparse_ext.losses.fraction import FALLBACK_WARNING

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=FALLBACK_WARNING, category=UserWarning)
        yield


def method_of(work_dir: str) -> str:
    """The name a run's folder shares with the other seeds of its method and level."""
    from sparse_ext.benchmark.context import parse_run_folder, run_folder_name

    loss, fraction, seed = parse_run_folder(work_dir)
    return run_folder_name(loss, fraction, seed).removesuffix(f"_s{seed}")


def _predictor(work_dir: str):
    """Detectron2's DefaultPredictor for the run in ``work_dir`` on the CPU."""
    from detectron2.engine import DefaultPredictor

    with without_fraction_warning():
        return DefaultPredictor(inference_config(work_dir))


def _test_images(coco: Dict, images: str):
    """(BGR image, its annotations' xyxy boxes as a (G, 4) tensor) for each image of ``coco``."""
    from skimage import io

    boxes: Dict[int, List[List[float]]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
    for im in coco["images"]:
        img = io.imread(os.path.join(images, im["file_name"]))
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        gt = torch.tensor(boxes[im["id"]], dtype=torch.float32).reshape(-1, 4)
        yield np.ascontiguousarray(img[:, :, :3][:, :, ::-1]), gt


def run_counts(work_dir: str, coco: Dict, images: str, threshold: float) -> Counter:
    """:func:`classify` summed over the images of ``coco`` for the model in ``work_dir``."""
    from detectron2.structures import Boxes, pairwise_iou

    predictor = _predictor(work_dir)
    total: Counter = Counter({k: 0 for k in KINDS})
    for img, gt_boxes in _test_images(coco, images):
        out = predictor(img)["instances"]
        out = out[out.scores > threshold]
        gt = Boxes(gt_boxes)
        total += classify(
            out.scores.numpy(),
            pairwise_iou(out.pred_boxes, gt).numpy(),
            out.pred_boxes.area().numpy(),
            gt.area().numpy(),
        )
    return total


@torch.no_grad()
def stage_counts(work_dir: str, coco: Dict, images: str, threshold: float) -> Counter:
    """How many annotations of ``coco`` each of :data:`STAGES` reaches (:func:`reached`), and
    their number (``annotations``), summed over the images, for the model in ``work_dir``. The
    boxes are compared in the network's input frame (the annotations go through the predictor's
    test resize)."""
    from detectron2.structures import Boxes, pairwise_iou

    predictor = _predictor(work_dir)
    model = predictor.model
    heads = model.roi_heads
    total: Counter = Counter({k: 0 for k in ("annotations", *STAGES)})
    for img, gt_boxes in _test_images(coco, images):
        tfm = predictor.aug.get_transform(img)
        x = tfm.apply_image(img)
        gt = Boxes(torch.as_tensor(tfm.apply_box(gt_boxes.numpy()), dtype=torch.float32))
        batch = [{"image": torch.as_tensor(x.transpose(2, 0, 1).astype("float32"))}]
        inputs = model.preprocess_image(batch)
        features = model.backbone(inputs.tensor)
        proposals, _ = model.proposal_generator(inputs, features, None)
        box_features = heads.box_head(
            heads.box_pooler(
                [features[f] for f in heads.box_in_features],
                [p.proposal_boxes for p in proposals],
            )
        )
        predictions = heads.box_predictor(box_features)
        boxes = heads.box_predictor.predict_boxes(predictions, proposals)[0].reshape(-1, 4)
        scores = heads.box_predictor.predict_probs(predictions, proposals)[0][:, :-1]
        scored = boxes[scores.reshape(-1) >= heads.box_predictor.test_score_thresh]
        detections = heads.box_predictor.inference(predictions, proposals)[0][0]
        above = detections[detections.scores > threshold]
        total["annotations"] += len(gt)
        total["proposal"] += reached(pairwise_iou(proposals[0].proposal_boxes, gt).numpy())
        total["box"] += reached(pairwise_iou(Boxes(boxes), gt).numpy())
        total["scored"] += reached(pairwise_iou(Boxes(scored), gt).numpy())
        total["detection"] += reached(pairwise_iou(detections.pred_boxes, gt).numpy())
        total["above"] += reached(pairwise_iou(above.pred_boxes, gt).numpy())
    return total


def table_row(name: str, counts: Counter) -> str:
    """A markdown row: the counts of each kind, the precision and the fragments per true
    positive (a method's runs pooled: ``counts`` summed over them)."""
    n = sum(counts[k] for k in KINDS)
    precision = counts["tp"] / n if n else float("nan")
    per_tp = counts["fragment"] / counts["tp"] if counts["tp"] else float("nan")
    cells = " | ".join(str(counts[k]) for k in KINDS)
    return f"| {name} | {cells} | {precision:.3f} | {per_tp:.2f} |"


def stage_row(name: str, counts: Counter) -> str:
    """A markdown row of :func:`stage_counts`: the annotations and the share each stage reaches."""
    n = counts["annotations"]
    cells = " | ".join(f"{counts[k] / n:.3f}" if n else "nan" for k in STAGES)
    return f"| {name} | {n} | {cells} |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dirs", nargs="+", help="benchmark run folders")
    parser.add_argument("--data", required=True, help="dataset root (annotations/, images/)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument(
        "--missed",
        action="store_true",
        help="the share of the annotations each stage reaches at IoU >= 0.5 instead",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with open(os.path.join(args.data, "annotations", f"{args.split}.json")) as f:
        coco = json.load(f)
    images = os.path.join(args.data, "images", args.split)
    if args.missed:
        count, row = stage_counts, stage_row
        header = ["annotations", *STAGES[:-1], f"> {args.threshold:g}"]
    else:
        count, row = run_counts, table_row
        header = [*KINDS, "precision", "fragments per tp"]
    print("| run | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    pooled: Dict[str, List[Counter]] = defaultdict(list)
    for wd in args.work_dirs:
        name = os.path.basename(os.path.normpath(wd))
        counts = count(wd, coco, images, args.threshold)
        pooled[method_of(wd)].append(counts)
        print(row(name, counts))
    for method, runs in pooled.items():
        if len(runs) > 1:
            print(row(f"{method} ({len(runs)} runs)", sum(runs, Counter())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
