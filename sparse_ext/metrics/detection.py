"""Object-detection metrics for partially annotated data (numpy/scipy only).

- F1, precision and recall at IoU 0.5 with one-to-one matching (Panteli et al., ICCV 2021,
  Sec. 4 and supplementary: a prediction is correct when its IoU with an annotated box is above
  the threshold, each annotation matched at most once).
- Average recall and precision over a range of score thresholds (Zhao, Pang et al., MICCAI 2021,
  Tables 1-2, predictions kept when their confidence is above a threshold, 0.5 in the paper).
- The F1 curve over score thresholds and its best threshold, for F1 at a threshold chosen on a
  validation split and applied to the test split (the calibration-free comparison of issue 12: a
  loss that only moves scores across 0.5 does not change it).
- Exclusive recall Rec_exc(y) = Rec(y) * (1 - Rec(not y)) (Panteli et al., ICCV 2021, Sec. 4), for
  datasets where annotations of other, look-alike classes exist.

Boxes are ``(N, 4)`` arrays in absolute ``(x0, y0, x1, y1)`` coordinates. Functions accept numpy
arrays, sequences or CPU/GPU torch tensors. One image's predictions are a mapping with ``boxes``,
``scores`` and optionally ``labels``; its ground truth a mapping with ``boxes`` and optionally
``labels``. Without labels, matching is class-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "DEFAULT_F1_THRESHOLDS",
    "DEFAULT_SCORE_THRESHOLDS",
    "DetectionCounts",
    "average_recall_precision",
    "best_f1_threshold",
    "box_iou",
    "count_detections",
    "detection_f1",
    "exclusive_recall",
    "exclusive_recall_per_class",
    "f1_curve",
    "match_boxes",
]

#: Score thresholds averaged over by :func:`average_recall_precision`: 0.50, 0.55, ..., 0.95
#: (Zhao, Pang et al. keep predictions above 0.5; we average from there up).
DEFAULT_SCORE_THRESHOLDS: Tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))

#: Score thresholds of :func:`f1_curve`: 0.05, 0.10, ..., 0.95 (Detectron2 outputs no detection
#: below its ROI_HEADS.SCORE_THRESH_TEST, 0.05 by default).
DEFAULT_F1_THRESHOLDS: Tuple[float, ...] = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


def _as_array(x: Any, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _as_boxes(boxes: Any, what: str) -> np.ndarray:
    arr = _as_array(boxes)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what} must have shape (N, 4) in (x0, y0, x1, y1), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains non-finite coordinates")
    return arr


def _as_vector(values: Any, n: int, what: str, dtype=np.float64) -> np.ndarray:
    arr = _as_array(values, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} entries for {n} boxes")
    return arr


def box_iou(boxes1: Any, boxes2: Any) -> np.ndarray:
    """Pairwise IoU of two sets of ``(x0, y0, x1, y1)`` boxes, shape ``(len(boxes1), len(boxes2))``.

    Boxes with zero area have IoU 0 with everything.
    """
    a = _as_boxes(boxes1, "boxes1")
    b = _as_boxes(boxes2, "boxes2")
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(
    pred_boxes: Any, gt_boxes: Any, iou_threshold: float = 0.5
) -> Tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predictions to annotations at ``IoU >= iou_threshold``.

    Maximises the number of matched pairs (each prediction and each annotation used at most once),
    breaking ties by the total IoU, with :func:`scipy.optimize.linear_sum_assignment`. Pair weight
    ``1 + IoU / (n + 1)`` with ``n = min(P, G)``: any matching with one pair more outweighs every
    matching with one pair fewer, so the assignment has maximum cardinality.

    Returns:
        ``(pred_idx, gt_idx)``: integer arrays of the matched pairs.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    iou = box_iou(pred_boxes, gt_boxes)
    valid = iou >= iou_threshold
    empty = np.zeros(0, dtype=np.int64)
    if not valid.any():
        return empty, empty
    # Only rows/columns with at least one admissible pair take part: a smaller assignment problem.
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    sub_valid = valid[np.ix_(rows, cols)]
    n = min(len(rows), len(cols))
    weight = np.where(sub_valid, 1.0 + iou[np.ix_(rows, cols)] / (n + 1), 0.0)
    r, c = linear_sum_assignment(weight, maximize=True)
    keep = sub_valid[r, c]
    return rows[r[keep]].astype(np.int64), cols[c[keep]].astype(np.int64)


@dataclass(frozen=True)
class DetectionCounts:
    """True positives, false positives and false negatives, with the ratios they define.

    Ratios with a zero denominator are 0 (no predictions: precision 0; no annotations: recall 0).
    Counts add up over images with ``+``.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 0.0

    def as_dict(self) -> Dict[str, float]:
        return {
            "f1": self.f1,
            "precision": self.precision,
            "recall": self.recall,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def _unpack_image(
    pred: Mapping[str, Any], gt: Mapping[str, Any]
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray, Optional[np.ndarray]]:
    if "boxes" not in pred:
        raise KeyError(f"prediction mapping needs a 'boxes' entry, has {sorted(pred)}")
    if "boxes" not in gt:
        raise KeyError(f"ground-truth mapping needs a 'boxes' entry, has {sorted(gt)}")
    p_boxes = _as_boxes(pred["boxes"], "predicted boxes")
    g_boxes = _as_boxes(gt["boxes"], "ground-truth boxes")
    scores = pred.get("scores")
    p_scores = (
        np.ones(len(p_boxes)) if scores is None else _as_vector(scores, len(p_boxes), "scores")
    )
    p_labels = pred.get("labels")
    g_labels = gt.get("labels")
    if (p_labels is None) != (g_labels is None):
        raise ValueError("give 'labels' for both predictions and ground truth, or for neither")
    if p_labels is not None:
        p_labels = _as_vector(p_labels, len(p_boxes), "predicted labels", dtype=np.int64)
        g_labels = _as_vector(g_labels, len(g_boxes), "ground-truth labels", dtype=np.int64)
    return p_boxes, p_scores, p_labels, g_boxes, g_labels


def count_detections(
    pred: Mapping[str, Any],
    gt: Mapping[str, Any],
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> DetectionCounts:
    """TP/FP/FN of one image: predictions with ``score >= score_threshold`` matched one-to-one
    (:func:`match_boxes`) to annotations of the same label (class-agnostic without labels)."""
    p_boxes, p_scores, p_labels, g_boxes, g_labels = _unpack_image(pred, gt)
    keep = p_scores >= score_threshold
    p_boxes = p_boxes[keep]
    num_pred, num_gt = len(p_boxes), len(g_boxes)
    if p_labels is None:
        tp = len(match_boxes(p_boxes, g_boxes, iou_threshold)[0])
    else:
        p_labels = p_labels[keep]
        tp = sum(
            len(match_boxes(p_boxes[p_labels == c], g_boxes[g_labels == c], iou_threshold)[0])
            for c in np.intersect1d(p_labels, g_labels)
        )
    return DetectionCounts(tp=tp, fp=num_pred - tp, fn=num_gt - tp)


def detection_f1(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> Dict[str, float]:
    """F1, precision and recall over a dataset, from TP/FP/FN summed over its images.

    Args:
        preds: one mapping per image with ``boxes`` (P, 4), ``scores`` (P,) and optional
            ``labels`` (P,). Apply NMS before (Detectron2's outputs already are).
        gts: one mapping per image with ``boxes`` (G, 4) and optional ``labels`` (G,).
        iou_threshold: a prediction is correct when its IoU with an unused annotation of the same
            label is at least this (0.5 in both papers).
        score_threshold: predictions below this score are dropped first.

    Returns:
        ``{"f1", "precision", "recall", "tp", "fp", "fn"}``.
    """
    if len(preds) != len(gts):
        raise ValueError(f"got predictions for {len(preds)} images and ground truth for {len(gts)}")
    total = DetectionCounts()
    for pred, gt in zip(preds, gts):
        total = total + count_detections(
            pred, gt, iou_threshold=iou_threshold, score_threshold=score_threshold
        )
    return total.as_dict()


def average_recall_precision(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    *,
    score_thresholds: Sequence[float] = DEFAULT_SCORE_THRESHOLDS,
    iou_threshold: float = 0.5,
) -> Dict[str, float]:
    """Recall and precision (as in :func:`detection_f1`) averaged over score thresholds.

    The mean over ``score_thresholds`` (default 0.50, 0.55, ..., 0.95) of the dataset-level recall
    and precision at that threshold: the "average recall/precision" of Zhao, Pang et al.

    Returns:
        ``{"average_recall", "average_precision"}``.
    """
    thresholds = np.asarray(score_thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0:
        raise ValueError("score_thresholds is empty")
    recalls, precisions = [], []
    for t in thresholds:
        res = detection_f1(preds, gts, iou_threshold=iou_threshold, score_threshold=float(t))
        recalls.append(res["recall"])
        precisions.append(res["precision"])
    return {
        "average_recall": float(np.mean(recalls)),
        "average_precision": float(np.mean(precisions)),
    }


def f1_curve(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    *,
    score_thresholds: Sequence[float] = DEFAULT_F1_THRESHOLDS,
    iou_threshold: float = 0.5,
) -> Dict[float, Dict[str, float]]:
    """:func:`detection_f1` at each score threshold: ``{threshold: {"f1", "precision", ...}}``,
    thresholds in increasing order."""
    thresholds = sorted({float(t) for t in np.asarray(score_thresholds, dtype=np.float64).ravel()})
    if not thresholds:
        raise ValueError("score_thresholds is empty")
    return {
        t: detection_f1(preds, gts, iou_threshold=iou_threshold, score_threshold=t)
        for t in thresholds
    }


def best_f1_threshold(curve: Mapping[float, Mapping[str, float]]) -> Tuple[float, float]:
    """``(threshold, F1)`` with the highest F1 of a :func:`f1_curve`; ties go to the lowest
    threshold. Choose it on a validation split, then read the test split's curve there."""
    if not curve:
        raise ValueError("the F1 curve is empty")
    best = max(curve.items(), key=lambda item: (item[1]["f1"], -item[0]))
    return float(best[0]), float(best[1]["f1"])


def exclusive_recall(recall: float, recall_other: float) -> float:
    """Rec_exc(y) = Rec(y) * (1 - Rec(not y)) (Panteli et al., ICCV 2021, Sec. 4).

    ``recall``: fraction of class-y annotations found by class-y predictions; ``recall_other``:
    fraction of annotations of the other classes that class-y predictions hit.
    """
    for name, value in (("recall", recall), ("recall_other", recall_other)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    return recall * (1.0 - recall_other)


def exclusive_recall_per_class(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> Dict[int, Dict[str, float]]:
    """Exclusive recall of every class y annotated in ``gts`` while another class is annotated too.

    Rec(y): class-y predictions matched one-to-one to class-y annotations, over their number.
    Rec(not y): class-y predictions matched one-to-one to annotations of any other class, over the
    number of those annotations. Both need ``labels``.

    Returns:
        ``{y: {"recall", "recall_other", "exclusive_recall"}}``; empty when fewer than two classes
        are annotated.
    """
    if len(preds) != len(gts):
        raise ValueError(f"got predictions for {len(preds)} images and ground truth for {len(gts)}")
    images = []
    for pred, gt in zip(preds, gts):
        p_boxes, p_scores, p_labels, g_boxes, g_labels = _unpack_image(pred, gt)
        if p_labels is None:
            raise ValueError("exclusive recall needs 'labels' in predictions and ground truth")
        keep = p_scores >= score_threshold
        images.append((p_boxes[keep], p_labels[keep], g_boxes, g_labels))
    classes = np.unique(np.concatenate([img[3] for img in images])) if images else []
    if len(classes) < 2:
        return {}
    out: Dict[int, Dict[str, float]] = {}
    for y in classes:
        hit_y = num_y = hit_other = num_other = 0
        for p_boxes, p_labels, g_boxes, g_labels in images:
            mine = p_boxes[p_labels == y]
            is_y = g_labels == y
            hit_y += len(match_boxes(mine, g_boxes[is_y], iou_threshold)[0])
            hit_other += len(match_boxes(mine, g_boxes[~is_y], iou_threshold)[0])
            num_y += int(is_y.sum())
            num_other += int((~is_y).sum())
        rec = hit_y / num_y
        rec_other = hit_other / num_other if num_other else 0.0
        out[int(y)] = {
            "recall": rec,
            "recall_other": rec_other,
            "exclusive_recall": exclusive_recall(rec, rec_other),
        }
    return out
