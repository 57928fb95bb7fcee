"""Detection metrics (sparse_ext.metrics.detection) against hand-computed values."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ext.metrics.detection import (
    DEFAULT_F1_THRESHOLDS,
    DEFAULT_SCORE_THRESHOLDS,
    DetectionCounts,
    average_recall_precision,
    best_f1_threshold,
    box_iou,
    count_detections,
    detection_f1,
    exclusive_recall,
    exclusive_recall_per_class,
    f1_curve,
    match_boxes,
)


def test_box_iou_hand_computed():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]])  # second box has zero area
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    iou = box_iou(a, b)
    # overlap 5x10 = 50, union 150
    np.testing.assert_allclose(iou, [[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    # torch tensors are accepted
    np.testing.assert_allclose(box_iou(torch.tensor(a[:1]), torch.tensor(b[:1])), [[1 / 3]])


def test_match_is_one_to_one_and_maximum_cardinality():
    gt = np.array([[0, 0, 10, 10], [2, 0, 12, 10]])
    # pred 0 overlaps both annotations (IoU 0.85 with gt0, 0.79 with gt1), pred 1 only gt0
    # (0.54): greedy-by-IoU would give pred0->gt0 and leave pred1 unmatched.
    pred = np.array([[0.8, 0, 10.8, 10], [-3, 0, 7, 10]])
    iou = box_iou(pred, gt)
    assert iou[0, 0] >= 0.5 and iou[0, 1] >= 0.5 and iou[1, 0] >= 0.5 and iou[1, 1] < 0.5
    assert iou[0, 0] > iou[0, 1]
    p, g = match_boxes(pred, gt, 0.5)
    assert sorted(zip(p.tolist(), g.tolist())) == [(0, 1), (1, 0)]
    # two predictions on one annotation: one TP, one FP
    p, g = match_boxes(np.array([[0, 0, 10, 10], [0, 0, 10, 11]]), gt[:1])
    assert len(p) == 1 and len(set(g.tolist())) == 1


def test_match_prefers_higher_iou_among_equal_cardinality():
    gt = np.array([[0, 0, 10, 10]])
    pred = np.array([[0, 0, 10, 12], [0, 0, 10, 10]])
    p, g = match_boxes(pred, gt)
    assert p.tolist() == [1] and g.tolist() == [0]


def test_iou_threshold_boundary_and_validation():
    gt = np.array([[0, 0, 10, 10]])
    pred = np.array([[0, 0, 10, 5]])  # IoU exactly 0.5
    assert len(match_boxes(pred, gt, 0.5)[0]) == 1
    assert len(match_boxes(pred, gt, 0.51)[0]) == 0
    with pytest.raises(ValueError, match="iou_threshold"):
        match_boxes(pred, gt, 0.0)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        box_iou(np.zeros((2, 3)), gt)


def test_detection_f1_hand_counted():
    gts = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]},
        {"boxes": [[0, 0, 10, 10]]},
        {"boxes": np.zeros((0, 4))},  # image without annotations
    ]
    preds = [
        # TP, TP (IoU 0.81), FP (no overlap), low-score duplicate of the first box
        {
            "boxes": [[0, 0, 10, 10], [21, 21, 30, 30], [60, 60, 70, 70], [0, 0, 10, 10]],
            "scores": [0.9, 0.8, 0.7, 0.2],
        },
        {"boxes": np.zeros((0, 4)), "scores": []},  # missed annotation
        {"boxes": [[0, 0, 5, 5]], "scores": [0.95]},  # FP on an empty image
    ]
    res = detection_f1(preds, gts, score_threshold=0.5)
    assert (res["tp"], res["fp"], res["fn"]) == (2, 2, 2)
    assert res["precision"] == pytest.approx(2 / 4)
    assert res["recall"] == pytest.approx(2 / 4)
    assert res["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))
    # without a score threshold the duplicate counts as one more FP
    res0 = detection_f1(preds, gts)
    assert (res0["tp"], res0["fp"], res0["fn"]) == (2, 3, 2)


def test_labels_make_matching_class_aware():
    gt = {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [0, 1]}
    pred = {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "scores": [0.9, 0.9], "labels": [0, 0]}
    assert count_detections(pred, gt) == DetectionCounts(tp=1, fp=1, fn=1)
    with pytest.raises(ValueError, match="labels"):
        count_detections({"boxes": pred["boxes"], "labels": [0, 0]}, {"boxes": gt["boxes"]})
    with pytest.raises(ValueError, match="entries"):
        count_detections({"boxes": pred["boxes"], "scores": [0.5]}, gt)
    with pytest.raises(KeyError, match="boxes"):
        count_detections({"scores": [0.5]}, gt)


def test_ratios_with_empty_denominators():
    assert DetectionCounts(0, 0, 0).as_dict()["f1"] == 0.0
    c = DetectionCounts(tp=0, fp=0, fn=3)
    assert c.precision == 0.0 and c.recall == 0.0 and c.f1 == 0.0
    assert DetectionCounts(1, 2, 3) + DetectionCounts(4, 5, 6) == DetectionCounts(5, 7, 9)


def test_average_recall_precision_hand_computed():
    gts = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]]}]
    preds = [
        {
            "boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]],
            "scores": [0.9, 0.6, 0.7],
        }
    ]
    # thresholds 0.5, 0.65, 0.8, 0.95: kept sets {all}, {0.9, 0.7}, {0.9}, {}
    res = average_recall_precision(preds, gts, score_thresholds=[0.5, 0.65, 0.8, 0.95])
    assert res["average_recall"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4)
    assert res["average_precision"] == pytest.approx((2 / 3 + 1 / 2 + 1.0 + 0.0) / 4)
    assert DEFAULT_SCORE_THRESHOLDS[0] == 0.5 and DEFAULT_SCORE_THRESHOLDS[-1] == 0.95
    assert len(DEFAULT_SCORE_THRESHOLDS) == 10
    with pytest.raises(ValueError, match="empty"):
        average_recall_precision(preds, gts, score_thresholds=[])


def test_f1_curve_and_best_threshold_hand_computed():
    """Two objects; predictions: a hit at 0.3, a false positive at 0.4, a hit at 0.9. At 0.5 the
    F1 is 2/3 (one hit, one miss), at 0.35 1/2 (and a false positive), at 0.2 4/5."""
    gts = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]]}, {"boxes": np.zeros((0, 4))}]
    preds = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "scores": [0.9, 0.3]},
        {"boxes": [[5, 5, 9, 9]], "scores": [0.4]},
    ]
    curve = f1_curve(preds, gts, score_thresholds=[0.5, 0.2, 0.35, 0.95])
    assert list(curve) == [0.2, 0.35, 0.5, 0.95]
    assert curve[0.2]["f1"] == pytest.approx(4 / 5)  # tp 2, fp 1, fn 0
    assert curve[0.35]["f1"] == pytest.approx(2 / 4)  # tp 1, fp 1, fn 1
    assert curve[0.5]["f1"] == pytest.approx(2 / 3)  # tp 1, fp 0, fn 1
    assert curve[0.95]["f1"] == 0.0
    assert best_f1_threshold(curve) == (0.2, pytest.approx(0.8))
    # ties go to the lowest threshold
    assert best_f1_threshold({0.6: {"f1": 0.5}, 0.3: {"f1": 0.5}, 0.9: {"f1": 0.1}})[0] == 0.3
    assert DEFAULT_F1_THRESHOLDS[0] == 0.05 and DEFAULT_F1_THRESHOLDS[-1] == 0.95
    assert len(DEFAULT_F1_THRESHOLDS) == 19
    with pytest.raises(ValueError, match="empty"):
        f1_curve(preds, gts, score_thresholds=[])
    with pytest.raises(ValueError, match="empty"):
        best_f1_threshold({})


def test_exclusive_recall_formula_and_per_class():
    assert exclusive_recall(0.8, 0.25) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="recall_other"):
        exclusive_recall(0.5, 1.5)
    # class 0 (lymphocytes): 2 annotated, class 1 (look-alikes): 2 annotated.
    gts = [
        {
            "boxes": [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]],
            "labels": [0, 0, 1, 1],
        }
    ]
    # class-0 predictions: one hits a class-0 cell, one hits a class-1 cell; class 1 predicts nothing
    preds = [{"boxes": [[0, 0, 10, 10], [40, 0, 50, 10]], "scores": [0.9, 0.9], "labels": [0, 0]}]
    res = exclusive_recall_per_class(preds, gts)
    assert res[0]["recall"] == pytest.approx(0.5)
    assert res[0]["recall_other"] == pytest.approx(0.5)
    assert res[0]["exclusive_recall"] == pytest.approx(0.25)
    assert res[1] == {"recall": 0.0, "recall_other": 0.0, "exclusive_recall": 0.0}
    # a single annotated class: nothing to exclude
    assert exclusive_recall_per_class(preds, [{"boxes": gts[0]["boxes"], "labels": [0] * 4}]) == {}


boxes_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 20), st.integers(1, 20)).map(
        lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(pred=boxes_strategy, gt=boxes_strategy)
def test_matching_is_maximum_one_to_one(pred, gt):
    pred = np.array(pred, dtype=float).reshape(-1, 4)
    gt = np.array(gt, dtype=float).reshape(-1, 4)
    p, g = match_boxes(pred, gt)
    assert len(set(p.tolist())) == len(p) and len(set(g.tolist())) == len(g)
    valid = box_iou(pred, gt) >= 0.5
    assert valid[p, g].all()
    # brute force: the largest number of disjoint admissible pairs
    best = 0
    for perm in itertools.permutations(range(len(gt)), min(len(pred), len(gt))):
        best = max(best, sum(bool(valid[i, j]) for i, j in enumerate(perm)))
    if len(pred) > len(gt):
        for perm in itertools.permutations(range(len(pred)), len(gt)):
            best = max(best, sum(bool(valid[i, j]) for j, i in enumerate(perm)))
    assert len(p) == best
    c = count_detections({"boxes": pred}, {"boxes": gt})
    assert c.tp + c.fp == len(pred) and c.tp + c.fn == len(gt)
