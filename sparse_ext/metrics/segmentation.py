"""Segmentation metrics for cell/nucleus masks (numpy/scipy/scikit-image only).

- Dice and IoU of one foreground (``label > 0``, or ``label == cls``), the F1/DICE of
  Panteli et al., ICCV 2021.
- Aggregated Jaccard index (AJI), Kumar et al., IEEE TMI 2017, as used in the ECE supplementary
  (Table 3): every ground-truth object is paired with the predicted object of highest IoU, the
  paired intersections are summed over the paired unions plus the areas of unpaired ground-truth
  objects and of predicted objects never paired. ``one_to_one=True`` gives AJI+ (Graham et al.,
  2019), where the pairing is a maximum-IoU one-to-one assignment.
- Object-level F1: each object (instance id, or connected component of a class) is one detection,
  matched one-to-one to ground-truth objects by IoU >= 0.5 (maximum total IoU assignment among the
  candidate pairs). IoU matching rather than centroid-in-object: it penalises merged and split
  nuclei, which centroid matching accepts.
- Masked IoU/Dice (Zhao, Hou et al., "Label super resolution with inter-instance loss",
  Sec. 3.2.2): the scores restricted to a band of pixels within a distance ``width`` of the
  ground-truth boundaries, where low- and high-resolution segmentations differ.

Label maps are integer arrays of equal shape (numpy arrays or CPU torch tensors); ``ignore_index``
pixels of the ground truth are left out of the pixel metrics. Instance maps hold 0 for background
and any non-negative ids (not necessarily consecutive) for objects. Empty cases: a score whose
denominator is zero (no foreground in either map, no objects at all, an empty band) is
``empty_score`` (1.0: nothing to find and nothing found).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.measure import label as _label_components
from skimage.segmentation import find_boundaries

__all__ = [
    "InstanceOverlaps",
    "ObjectCounts",
    "aggregated_jaccard_index",
    "aji_counts",
    "binary_confusion",
    "boundary_band",
    "connected_components",
    "dice",
    "foreground_mask",
    "instance_overlaps",
    "iou",
    "masked_dice",
    "masked_iou",
    "match_objects",
    "object_counts",
    "object_f1",
]


def _as_int_array(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            return arr.astype(np.int64)
        raise ValueError(f"{what} must hold integer labels, got dtype {arr.dtype}")
    return arr


def _check_pair(gt: Any, pred: Any) -> Tuple[np.ndarray, np.ndarray]:
    g = _as_int_array(gt, "gt")
    p = _as_int_array(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt and pred must have the same shape, got {g.shape} and {p.shape}")
    return g, p


def _ratio(num: float, den: float, empty_score: float) -> float:
    return float(num) / float(den) if den > 0 else float(empty_score)


def foreground_mask(
    label: Any, cls: Optional[int] = None, ignore_index: Optional[int] = 255
) -> np.ndarray:
    """Boolean foreground of a label map: ``label == cls``, or any label > 0 except ``ignore_index``
    when ``cls`` is None."""
    lab = _as_int_array(label, "label")
    if cls is not None:
        return lab == cls
    fg = lab > 0
    if ignore_index is not None:
        fg &= lab != ignore_index
    return fg


def _valid_mask(gt: np.ndarray, ignore_index: Optional[int], valid: Any) -> np.ndarray:
    ok = np.ones(gt.shape, dtype=bool) if ignore_index is None else gt != ignore_index
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        if v.shape != gt.shape:
            raise ValueError(f"valid must have the label maps' shape {gt.shape}, got {v.shape}")
        ok &= v
    return ok


def binary_confusion(
    gt: Any,
    pred: Any,
    *,
    cls: Optional[int] = None,
    ignore_index: Optional[int] = 255,
    valid: Any = None,
) -> Tuple[int, int, int, int]:
    """Pixel counts ``(tp, fp, fn, tn)`` of the foreground (``cls``, or every label > 0) over the
    pixels where ``gt != ignore_index`` and ``valid`` is True."""
    g, p = _check_pair(gt, pred)
    ok = _valid_mask(g, ignore_index, valid)
    gf = foreground_mask(g, cls, ignore_index)[ok]
    pf = foreground_mask(p, cls, ignore_index)[ok]
    tp = int(np.count_nonzero(gf & pf))
    fp = int(np.count_nonzero(pf)) - tp
    fn = int(np.count_nonzero(gf)) - tp
    tn = int(gf.size) - tp - fp - fn
    return tp, fp, fn, tn


def dice(
    gt: Any,
    pred: Any,
    *,
    cls: Optional[int] = None,
    ignore_index: Optional[int] = 255,
    valid: Any = None,
    empty_score: float = 1.0,
) -> float:
    """Dice (F1) of the foreground: 2 |G ∩ S| / (|G| + |S|)."""
    tp, fp, fn, _ = binary_confusion(gt, pred, cls=cls, ignore_index=ignore_index, valid=valid)
    return _ratio(2 * tp, 2 * tp + fp + fn, empty_score)


def iou(
    gt: Any,
    pred: Any,
    *,
    cls: Optional[int] = None,
    ignore_index: Optional[int] = 255,
    valid: Any = None,
    empty_score: float = 1.0,
) -> float:
    """IoU (Jaccard) of the foreground: |G ∩ S| / |G ∪ S|."""
    tp, fp, fn, _ = binary_confusion(gt, pred, cls=cls, ignore_index=ignore_index, valid=valid)
    return _ratio(tp, tp + fp + fn, empty_score)


def connected_components(
    label: Any,
    cls: Optional[int] = None,
    *,
    ignore_index: Optional[int] = 255,
    connectivity: int = 2,
) -> np.ndarray:
    """Instance map of the connected components of a class (``cls``, or all labels > 0 except
    ``ignore_index``), ids 1..n, 0 elsewhere. ``connectivity`` 2 = 8-neighbourhood in 2D
    (scikit-image's convention), 1 = 4-neighbourhood."""
    fg = foreground_mask(label, cls, ignore_index)
    return _label_components(fg, connectivity=connectivity).astype(np.int64)


class InstanceOverlaps(NamedTuple):
    """Sparse overlap table of two instance maps (compact indices 0..n-1 for each side).

    ``gt_area[i]`` / ``pred_area[j]`` are object areas; ``pair_gt``, ``pair_pred``, ``pair_inter``
    list every (ground-truth, predicted) pair with a non-empty intersection, and ``pair_iou`` its IoU.
    """

    gt_area: np.ndarray
    pred_area: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray
    pair_iou: np.ndarray


def _compact(inst: np.ndarray) -> Tuple[np.ndarray, int]:
    """Object ids -> 0..n-1 (background -> -1) and the number of objects."""
    if (inst < 0).any():
        raise ValueError("instance maps must hold non-negative ids (0 = background)")
    ids, inverse = np.unique(inst.ravel(), return_inverse=True)
    has_bg = ids.size > 0 and ids[0] == 0
    compact = inverse.astype(np.int64) - int(has_bg)
    return compact, int(ids.size - has_bg)


def instance_overlaps(gt_inst: Any, pred_inst: Any) -> InstanceOverlaps:
    """Areas and pairwise intersections of two instance maps, via one ``np.unique`` over the
    pixels covered by both (memory proportional to the number of overlapping pairs)."""
    g, p = _check_pair(gt_inst, pred_inst)
    gc, n_g = _compact(g)
    pc, n_p = _compact(p)
    gt_area = np.bincount(gc[gc >= 0], minlength=n_g)
    pred_area = np.bincount(pc[pc >= 0], minlength=n_p)
    both = (gc >= 0) & (pc >= 0)
    codes, inter = np.unique(gc[both] * max(n_p, 1) + pc[both], return_counts=True)
    pair_gt, pair_pred = np.divmod(codes, max(n_p, 1))
    union = gt_area[pair_gt] + pred_area[pair_pred] - inter
    return InstanceOverlaps(gt_area, pred_area, pair_gt, pair_pred, inter, inter / union)


def _one_to_one(ov: InstanceOverlaps, keep: np.ndarray) -> np.ndarray:
    """Indices into the pair list of a maximum-total-IoU one-to-one matching among ``keep`` pairs
    (dense assignment only over the objects involved in those pairs)."""
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return idx
    rows, r_inv = np.unique(ov.pair_gt[idx], return_inverse=True)
    cols, c_inv = np.unique(ov.pair_pred[idx], return_inverse=True)
    score = np.zeros((rows.size, cols.size))
    pair_of = np.full((rows.size, cols.size), -1, dtype=np.int64)
    score[r_inv, c_inv] = ov.pair_iou[idx]
    pair_of[r_inv, c_inv] = idx
    r, c = linear_sum_assignment(score, maximize=True)
    chosen = pair_of[r, c]
    return chosen[chosen >= 0]


def aji_counts(gt_inst: Any, pred_inst: Any, *, one_to_one: bool = False) -> Tuple[int, int]:
    """Summed intersection and union of the AJI (see :func:`aggregated_jaccard_index`)."""
    ov = instance_overlaps(gt_inst, pred_inst)
    if one_to_one:
        chosen = _one_to_one(ov, np.ones(ov.pair_gt.size, dtype=bool))
    else:
        # for each ground-truth object its best predicted partner: highest IoU, then lowest id
        order = np.lexsort((ov.pair_pred, -ov.pair_iou, ov.pair_gt))
        _, first = np.unique(ov.pair_gt[order], return_index=True)
        chosen = order[first]
    g, p = ov.pair_gt[chosen], ov.pair_pred[chosen]
    inter = int(ov.pair_inter[chosen].sum())
    union = int((ov.gt_area[g] + ov.pred_area[p] - ov.pair_inter[chosen]).sum())
    gt_unpaired = np.ones(ov.gt_area.size, dtype=bool)
    gt_unpaired[g] = False
    pred_unused = np.ones(ov.pred_area.size, dtype=bool)
    pred_unused[p] = False
    union += int(ov.gt_area[gt_unpaired].sum()) + int(ov.pred_area[pred_unused].sum())
    return inter, union


def aggregated_jaccard_index(
    gt_inst: Any, pred_inst: Any, *, one_to_one: bool = False, empty_score: float = 1.0
) -> float:
    """Aggregated Jaccard index (Kumar et al., 2017) of two instance maps.

    AJI = sum_i |G_i ∩ S_j(i)| / (sum_i |G_i ∪ S_j(i)| + sum_{k unused} |S_k|), with
    j(i) = argmax_j IoU(G_i, S_j) (a predicted object may serve several ground-truth objects);
    ground-truth objects overlapping no prediction add their area to the denominator.
    ``one_to_one=True``: AJI+, pairs from a maximum-IoU one-to-one assignment.
    """
    inter, union = aji_counts(gt_inst, pred_inst, one_to_one=one_to_one)
    return _ratio(inter, union, empty_score)


def match_objects(
    gt_inst: Any, pred_inst: Any, iou_threshold: float = 0.5
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of objects with IoU >= ``iou_threshold`` (maximum total IoU).

    Returns the matched ground-truth ids, predicted ids (as in the input maps) and their IoUs.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    g, p = _check_pair(gt_inst, pred_inst)
    ov = instance_overlaps(g, p)
    chosen = _one_to_one(ov, ov.pair_iou >= iou_threshold)
    gt_ids = np.unique(g[g > 0])
    pred_ids = np.unique(p[p > 0])
    return gt_ids[ov.pair_gt[chosen]], pred_ids[ov.pair_pred[chosen]], ov.pair_iou[chosen]


@dataclass(frozen=True)
class ObjectCounts:
    """Object-level true positives, false positives and false negatives; add to pool images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        return ObjectCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def _score(self, num: int, den: int) -> float:
        # 0/0 is 1 only when there was nothing to find and nothing found
        if den > 0:
            return num / den
        return 1.0 if self.tp + self.fp + self.fn == 0 else 0.0

    @property
    def precision(self) -> float:
        return self._score(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return self._score(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return self._score(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def object_counts(gt_inst: Any, pred_inst: Any, iou_threshold: float = 0.5) -> ObjectCounts:
    """Object-level counts after one-to-one matching at IoU >= ``iou_threshold``."""
    g, p = _check_pair(gt_inst, pred_inst)
    matched, _, _ = match_objects(g, p, iou_threshold)
    n_gt = np.unique(g[g > 0]).size
    n_pred = np.unique(p[p > 0]).size
    tp = int(matched.size)
    return ObjectCounts(tp=tp, fp=n_pred - tp, fn=n_gt - tp)


def object_f1(gt_inst: Any, pred_inst: Any, iou_threshold: float = 0.5) -> float:
    """Object-level F1 = 2 TP / (2 TP + FP + FN) with one-to-one matching at IoU >= 0.5.

    Pass semantic maps through :func:`connected_components` first to score each connected
    component of a class as one object.
    """
    return object_counts(gt_inst, pred_inst, iou_threshold).f1


def boundary_band(
    gt: Any, width: float, *, cls: Optional[int] = None, ignore_index: Optional[int] = 255
) -> np.ndarray:
    """Pixels within Euclidean distance ``width`` of the ground-truth foreground boundary.

    The boundary is scikit-image's "thick" boundary of the foreground (the pixels on both sides
    that touch the other region); ``width=0`` gives the boundary itself. An image without a
    boundary (all foreground or all background) has an empty band. ``ignore_index`` pixels are
    excluded from the band.
    """
    if not np.isfinite(width) or width < 0:
        raise ValueError(f"width must be a finite number >= 0, got {width}")
    g = _as_int_array(gt, "gt")
    fg = foreground_mask(g, cls, ignore_index)
    edge = find_boundaries(fg.astype(np.uint8), mode="thick")
    if not edge.any():
        band = np.zeros(g.shape, dtype=bool)
    else:
        band = ndimage.distance_transform_edt(~edge) <= width
    if ignore_index is not None:
        band &= g != ignore_index
    return band


def masked_dice(
    gt: Any,
    pred: Any,
    width: float,
    *,
    cls: Optional[int] = None,
    ignore_index: Optional[int] = 255,
    empty_score: float = 1.0,
) -> float:
    """Dice restricted to :func:`boundary_band` (Zhao, Hou et al. Sec. 3.2.2: 240 px, one input block)."""
    band = boundary_band(gt, width, cls=cls, ignore_index=ignore_index)
    return dice(gt, pred, cls=cls, ignore_index=ignore_index, valid=band, empty_score=empty_score)


def masked_iou(
    gt: Any,
    pred: Any,
    width: float,
    *,
    cls: Optional[int] = None,
    ignore_index: Optional[int] = 255,
    empty_score: float = 1.0,
) -> float:
    """IoU restricted to :func:`boundary_band` (Zhao, Hou et al. Sec. 3.2.2)."""
    band = boundary_band(gt, width, cls=cls, ignore_index=ignore_index)
    return iou(gt, pred, cls=cls, ignore_index=ignore_index, valid=band, empty_score=empty_score)
