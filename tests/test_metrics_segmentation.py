"""Segmentation and max-min metrics against hand-computed values (sparse_ext.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sparse_ext.metrics import (
    ObjectCounts,
    aggregated_jaccard_index,
    aji_counts,
    binary_confusion,
    boundary_band,
    classification_error,
    connected_components,
    dice,
    f1_minus,
    f1_plus,
    iou,
    masked_dice,
    masked_iou,
    match_objects,
    object_counts,
    object_f1,
)


def _two_nuclei_case():
    """G1: 2x2 block (4 px), G2: 1x3 bar (3 px). S7 covers G1 + 2 px, S3 covers 1 px of G2 + 1 px
    outside, S9 (3 px) touches nothing."""
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[0:2, 0:2] = 1
    gt[5, 0:3] = 2
    pred = np.zeros((8, 8), dtype=np.int64)
    pred[0:2, 0:3] = 7
    pred[5, 2:4] = 3
    pred[7, 5:8] = 9
    return gt, pred


# -- pixel metrics ----------------------------------------------------------------------------


def test_dice_iou_hand_values():
    gt = np.zeros((4, 4), dtype=np.uint8)
    gt[:2] = 1  # 8 px
    pred = np.zeros((4, 4), dtype=np.uint8)
    pred[1:3] = 1  # 8 px, 4 shared
    assert binary_confusion(gt, pred) == (4, 4, 4, 4)
    assert dice(gt, pred) == pytest.approx(2 * 4 / 16)
    assert iou(gt, pred) == pytest.approx(4 / 12)
    # torch tensors are accepted and the score is symmetric
    assert dice(torch.from_numpy(pred), torch.from_numpy(gt)) == pytest.approx(0.5)


def test_dice_ignores_ignore_index_and_selects_class():
    gt = np.array([[0, 1, 2, 255]])
    pred = np.array([[1, 1, 1, 1]])
    # foreground = every label > 0 except 255: gt fg {1, 2}, pred fg {1, 2} among the 3 valid px
    assert binary_confusion(gt, pred) == (2, 1, 0, 0)
    assert dice(gt, pred) == pytest.approx(4 / 5)
    # class 2 only: gt {2}, pred {} -> dice 0
    assert dice(gt, pred, cls=2) == 0.0
    assert dice(gt, pred, cls=1) == pytest.approx(2 / 4)


def test_pixel_metric_empty_cases():
    z = np.zeros((5, 5), dtype=np.int64)
    o = np.ones((5, 5), dtype=np.int64)
    assert dice(z, z) == 1.0 and iou(z, z) == 1.0
    assert dice(z, z, empty_score=0.0) == 0.0
    assert dice(o, z) == 0.0 and iou(o, z) == 0.0  # empty prediction
    assert dice(z, o) == 0.0 and iou(z, o) == 0.0  # empty ground truth


def test_bad_pixel_inputs():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="integer labels"):
        dice(np.full((2, 2), 0.5), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="valid"):
        dice(np.zeros((2, 2), int), np.zeros((2, 2), int), valid=np.ones((3, 3), bool))


# -- AJI --------------------------------------------------------------------------------------


def test_aji_hand_value():
    gt, pred = _two_nuclei_case()
    # G1-S7: |∩| 4, |∪| 6; G2-S3: |∩| 1, |∪| 4; S9 unused adds 3
    assert aji_counts(gt, pred) == (5, 13)
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(5 / 13)
    assert aggregated_jaccard_index(gt, pred, one_to_one=True) == pytest.approx(5 / 13)


def test_aji_merged_prediction_counts_twice_but_aji_plus_once():
    gt = np.zeros((1, 6), dtype=np.int64)
    gt[0, 0:2] = 1
    gt[0, 3:5] = 2
    pred = np.zeros((1, 6), dtype=np.int64)
    pred[0, 0:5] = 4  # one prediction merging both nuclei
    # AJI (Kumar): both G pick S: (2 + 2) / (5 + 5)
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(4 / 10)
    # AJI+: S paired once; the other nucleus is unpaired: 2 / (5 + 2)
    assert aggregated_jaccard_index(gt, pred, one_to_one=True) == pytest.approx(2 / 7)


def test_aji_unpaired_ground_truth_adds_its_area():
    gt = np.zeros((3, 3), dtype=np.int64)
    gt[0, :] = 5
    gt[2, :] = 6
    pred = np.zeros((3, 3), dtype=np.int64)
    pred[0, :] = 1
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(3 / (3 + 3))


def test_aji_empty_cases():
    z = np.zeros((4, 4), dtype=np.int64)
    inst = np.zeros((4, 4), dtype=np.int64)
    inst[1:3, 1:3] = 1
    assert aggregated_jaccard_index(z, z) == 1.0
    assert aggregated_jaccard_index(inst, z) == 0.0
    assert aggregated_jaccard_index(z, inst) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        aggregated_jaccard_index(-inst, inst)


def _aji_reference(gt: np.ndarray, pred: np.ndarray) -> float:
    """Loop-based AJI (Kumar et al. 2017, Algorithm 1), for the property test only."""
    inter = union = 0
    used = set()
    for g in np.unique(gt[gt > 0]):
        gm = gt == g
        best, best_iou = None, 0.0
        for s in np.unique(pred[gm & (pred > 0)]):
            sm = pred == s
            i = np.logical_and(gm, sm).sum() / np.logical_or(gm, sm).sum()
            if i > best_iou:
                best, best_iou = s, i
        if best is None:
            union += gm.sum()
        else:
            sm = pred == best
            inter += np.logical_and(gm, sm).sum()
            union += np.logical_or(gm, sm).sum()
            used.add(best)
    for s in np.unique(pred[pred > 0]):
        if s not in used:
            union += (pred == s).sum()
    return inter / union if union else 1.0


_maps = arrays(np.int64, (6, 7), elements=st.integers(0, 4))


@settings(max_examples=60, deadline=None)
@given(gt=_maps, pred=_maps)
def test_aji_matches_loop_reference(gt, pred):
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(_aji_reference(gt, pred))
    # identity, and invariance to relabelling the ids
    relabel = np.array([0, 11, 3, 40, 7])
    assert aggregated_jaccard_index(gt, relabel[gt]) == 1.0
    assert aggregated_jaccard_index(gt, relabel[gt], one_to_one=True) == 1.0
    assert object_f1(gt, relabel[gt]) == 1.0
    assert 0.0 <= aggregated_jaccard_index(gt, pred, one_to_one=True) <= 1.0


# -- object F1 --------------------------------------------------------------------------------


def test_object_f1_hand_value():
    gt, pred = _two_nuclei_case()
    gt_ids, pred_ids, ious = match_objects(gt, pred)
    assert gt_ids.tolist() == [1] and pred_ids.tolist() == [7]
    assert ious.tolist() == pytest.approx([4 / 6])
    c = object_counts(gt, pred)
    assert c == ObjectCounts(tp=1, fp=2, fn=1)
    assert c.precision == pytest.approx(1 / 3) and c.recall == pytest.approx(1 / 2)
    assert object_f1(gt, pred) == pytest.approx(2 / (2 + 2 + 1))


def test_object_f1_one_to_one_at_exactly_half():
    gt = np.zeros((1, 4), dtype=np.int64)
    gt[0, :] = 1
    pred = np.array([[1, 1, 2, 2]])  # two halves, each IoU exactly 0.5 with the nucleus
    assert object_counts(gt, pred) == ObjectCounts(tp=1, fp=1, fn=0)
    assert object_f1(gt, pred) == pytest.approx(2 / 3)


def test_object_matching_maximises_total_iou_not_greedy():
    gt = np.zeros((1, 10), dtype=np.int64)
    gt[0, 0:5] = 1
    gt[0, 5:10] = 2
    pred = np.zeros((1, 10), dtype=np.int64)
    pred[0, 0] = 2  # IoU with G1: 1/5
    pred[0, 1:8] = 1  # IoU with G1: 4/8, with G2: 3/9
    # greedy (highest IoU first) would take (G1, S1) and leave G2 and S2 unmatched
    gt_ids, pred_ids, _ = match_objects(gt, pred, iou_threshold=0.2)
    assert sorted(zip(gt_ids.tolist(), pred_ids.tolist())) == [(1, 2), (2, 1)]
    assert object_counts(gt, pred, 0.2) == ObjectCounts(tp=2, fp=0, fn=0)
    assert object_counts(gt, pred) == ObjectCounts(tp=1, fp=1, fn=1)


def test_object_f1_empty_cases_and_pooling():
    z = np.zeros((4, 4), dtype=np.int64)
    inst = np.zeros((4, 4), dtype=np.int64)
    inst[0, 0] = 1
    inst[3, 3] = 2
    assert object_f1(z, z) == 1.0
    assert object_counts(inst, z) == ObjectCounts(0, 0, 2)  # empty prediction
    assert object_counts(z, inst) == ObjectCounts(0, 2, 0)  # empty ground truth
    assert object_counts(inst, z).precision == 0.0
    pooled = object_counts(inst, inst) + object_counts(inst, z)
    assert pooled == ObjectCounts(2, 0, 2) and pooled.f1 == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="iou_threshold"):
        object_f1(inst, inst, iou_threshold=0.0)


def test_connected_components_connectivity():
    sem = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 2]])
    assert connected_components(sem).max() == 1  # 8-connected diagonal: one object
    assert connected_components(sem, connectivity=1).max() == 3
    assert connected_components(sem, cls=2).tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    # a semantic prediction that merges two nuclei is one object: F1 penalises it
    gt = connected_components(np.array([[1, 1, 0, 1, 1]]))
    pred = connected_components(np.array([[1, 1, 1, 1, 1]]))
    assert object_counts(gt, pred) == ObjectCounts(tp=0, fp=1, fn=2)


# -- masked (boundary band) metrics -----------------------------------------------------------


def test_boundary_band_and_masked_dice_hand_values():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, 0:5] = 1
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[:, 0:6] = 1  # one column too wide
    band0 = boundary_band(gt, 0)
    assert np.array_equal(np.flatnonzero(band0.any(0)), [4, 5])  # thick boundary
    band1 = boundary_band(gt, 1)
    assert np.array_equal(np.flatnonzero(band1.any(0)), [3, 4, 5, 6]) and band1.all(0)[3:7].all()
    # in the band of width 1: gt cols 3-4 (20 px), pred cols 3-5 (30 px), shared 20
    assert masked_dice(gt, pred, 1) == pytest.approx(40 / 50)
    assert masked_iou(gt, pred, 1) == pytest.approx(20 / 30)
    assert masked_dice(gt, pred, 0) == pytest.approx(20 / 30)
    # a band wider than the image is the plain score
    assert masked_dice(gt, pred, 100) == pytest.approx(dice(gt, pred)) == pytest.approx(100 / 110)


def test_masked_metrics_edge_cases():
    z = np.zeros((6, 6), dtype=np.int64)
    assert not boundary_band(z, 3).any()  # no boundary, empty band
    assert masked_dice(z, np.ones_like(z), 3) == 1.0  # nothing to score
    gt = z.copy()
    gt[2:4, 2:4] = 1
    gt[0, 0] = 255
    assert not boundary_band(gt, 10)[0, 0]  # ignore pixels are outside the band
    assert masked_dice(gt, z, 1) == 0.0  # empty prediction
    with pytest.raises(ValueError, match="width"):
        boundary_band(gt, -1)


# -- max-min metrics (Belharbi et al. Eq. 13-15) -----------------------------------------------------


def test_f1_plus_minus_hand_values():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:2] = 1
    full = np.ones((4, 4), dtype=np.int64)
    # the trivial all-foreground mask: F1+ = 2*8/(8+16), F1- = 0
    assert f1_plus(gt, full) == pytest.approx(2 / 3)
    assert f1_minus(gt, full) == 0.0
    pred = np.zeros((4, 4), dtype=np.int64)
    pred[1:3] = 1
    # background: gt rows 2-3, pred rows 0 and 3: shared row 3
    assert f1_plus(gt, pred) == pytest.approx(0.5)
    assert f1_minus(gt, pred) == pytest.approx(2 * 4 / (8 + 8))
    assert f1_plus(gt, gt) == 1.0 and f1_minus(gt, gt) == 1.0


def test_f1_plus_minus_empty_cases():
    z = np.zeros((3, 3), dtype=np.int64)
    o = np.ones((3, 3), dtype=np.int64)
    assert f1_plus(z, z) == 1.0 and f1_minus(z, z) == 1.0  # normal image, empty prediction
    assert f1_plus(z, o) == 0.0 and f1_minus(z, o) == 0.0
    assert f1_plus(o, z) == 0.0 and f1_minus(o, o) == 1.0  # no background anywhere


def test_classification_error():
    assert classification_error([0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(25.0)
    assert classification_error(torch.tensor([1, 1]), torch.tensor([1, 1])) == 0.0
    with pytest.raises(ValueError, match="same length"):
        classification_error([0, 1], [0])
    with pytest.raises(ValueError, match="at least one"):
        classification_error([], [])
