"""Metrics of weakly-supervised segmentation with max-min uncertainty (numpy only).

Belharbi et al., "Deep interpretable classification and weakly-supervised segmentation of
histology images via max-min uncertainty" (Belharbi et al.), Sec. 3.2:

- classification error, Eq. 13: 100 * #misclassified / #samples (a percentage);
- F1+, Eq. 14: 2 |G+ ∩ S+| / (|G+| + |S+|), the Dice of the foreground masks;
- F1-, Eq. 15: 2 |G- ∩ S-| / (|G-| + |S-|), the Dice of the background masks, which exposes
  trivial all-foreground predictions that F1+ alone rewards.

Masks are label maps (foreground = label > 0, background = label == 0); ``ignore_index`` pixels
of the ground truth are left out. Both masks empty gives ``empty_score`` (1.0).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from sparse_ext.metrics.segmentation import binary_confusion

__all__ = ["classification_error", "f1_minus", "f1_plus"]


def f1_plus(
    gt: Any, pred: Any, *, ignore_index: Optional[int] = 255, empty_score: float = 1.0
) -> float:
    """F1+ (Belharbi et al. Eq. 14): Dice of the foreground masks."""
    tp, fp, fn, _ = binary_confusion(gt, pred, ignore_index=ignore_index)
    den = 2 * tp + fp + fn
    return 2 * tp / den if den > 0 else float(empty_score)


def f1_minus(
    gt: Any, pred: Any, *, ignore_index: Optional[int] = 255, empty_score: float = 1.0
) -> float:
    """F1- (Belharbi et al. Eq. 15): Dice of the background masks (the foreground's true negatives)."""
    _, fp, fn, tn = binary_confusion(gt, pred, ignore_index=ignore_index)
    den = 2 * tn + fp + fn
    return 2 * tn / den if den > 0 else float(empty_score)


def classification_error(y_true: Any, y_pred: Any) -> float:
    """Image classification error in percent (Belharbi et al. Eq. 13)."""
    t = np.asarray(y_true.detach().cpu() if hasattr(y_true, "detach") else y_true).reshape(-1)
    p = np.asarray(y_pred.detach().cpu() if hasattr(y_pred, "detach") else y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {t.size} and {p.size}")
    if t.size == 0:
        raise ValueError("classification_error needs at least one sample")
    return 100.0 * float(np.count_nonzero(t != p)) / t.size
