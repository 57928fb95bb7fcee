"""MMSeg metric classes (SparseSegMetric, MaxMinMetric) fed real SegDataSamples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _frameworks import MMSEG_HINT, require

require("mmseg", hint=MMSEG_HINT)

from mmengine.evaluator import Evaluator  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import METRICS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import sparse_ext.mmseg  # noqa: E402, F401  (registers the metrics)
from sparse_ext.metrics import masked_dice  # noqa: E402

init_default_scope("mmseg")


def _sample(gt: np.ndarray, pred: np.ndarray, **meta) -> SegDataSample:
    ds = SegDataSample(metainfo=dict(img_shape=gt.shape, ori_shape=gt.shape, **meta))
    ds.gt_sem_seg = PixelData(data=torch.from_numpy(gt.astype(np.int64))[None])
    ds.pred_sem_seg = PixelData(data=torch.from_numpy(pred.astype(np.int64))[None])
    return ds


def _two_nuclei_case():
    """Semantic version of the AJI hand case: G1 2x2 block, G2 1x3 bar; predicted blobs 6, 2 and
    3 px (see tests/test_metrics_segmentation.py)."""
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[0:2, 0:2] = 1
    gt[5, 0:3] = 1
    pred = np.zeros((8, 8), dtype=np.int64)
    pred[0:2, 0:3] = 1
    pred[5, 2:4] = 1
    pred[7, 5:8] = 1
    return gt, pred


def test_sparse_seg_metric_hand_values_through_evaluator():
    gt, pred = _two_nuclei_case()
    evaluator = Evaluator([dict(type="SparseSegMetric", band_width=1)])
    evaluator.dataset_meta = dict(classes=("background", "nucleus"))
    evaluator.process(data_samples=[_sample(gt, pred)], data_batch=None)
    res = evaluator.evaluate(1)
    # pixels: gt 7, pred 11, shared 5
    assert res["sparse/Dice"] == pytest.approx(10 / 18)
    assert res["sparse/IoU"] == pytest.approx(5 / 13)
    # AJI: (4 + 1) / (6 + 4 + 3); objects: one match (IoU 4/6), 2 FP, 1 FN
    assert res["sparse/AJI"] == pytest.approx(5 / 13)
    assert res["sparse/ObjF1"] == pytest.approx(2 / 5)
    assert res["sparse/ObjPrecision"] == pytest.approx(1 / 3)
    assert res["sparse/ObjRecall"] == pytest.approx(1 / 2)
    assert res["sparse/MaskedDice"] == pytest.approx(masked_dice(gt, pred, 1))


def test_sparse_seg_metric_pools_pixels_and_objects_over_images():
    gt = np.zeros((6, 6), dtype=np.int64)
    gt[1:3, 1:3] = 1
    empty = np.zeros_like(gt)
    metric = METRICS.build(dict(type="SparseSegMetric"))
    metric.dataset_meta = dict(classes=("background", "nucleus"))
    # image 1 perfect, image 2 misses its nucleus entirely
    metric.process(None, [_sample(gt, gt).to_dict(), _sample(gt, empty).to_dict()])
    res = metric.compute_metrics(metric.results)
    assert res["Dice"] == pytest.approx(2 * 4 / (8 + 4))  # pooled pixels, not mean of 1 and 0
    assert res["AJI"] == pytest.approx(0.5)  # mean over images
    assert res["ObjF1"] == pytest.approx(2 / (2 + 0 + 1))  # pooled counts: tp 1, fn 1


def test_sparse_seg_metric_reads_instance_maps(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    gt = np.zeros((4, 6), dtype=np.int64)
    gt[1:3, 0:3] = 1
    gt[1:3, 3:6] = 1  # two touching nuclei: one connected component
    inst = np.zeros((4, 6), dtype=np.uint16)
    inst[1:3, 0:3] = 3
    inst[1:3, 3:6] = 8
    path = tmp_path / "inst.tif"
    tifffile.imwrite(path, inst)
    pred = gt.copy()  # the semantic prediction merges them
    metric = METRICS.build(dict(type="SparseSegMetric", metrics=["ObjF1", "AJI"]))
    metric.process(None, [_sample(gt, pred).to_dict()])
    from_components = metric.compute_metrics(metric.results)
    assert from_components["ObjF1"] == 1.0 and from_components["AJI"] == 1.0
    metric.results.clear()
    metric.process(None, [_sample(gt, pred, inst_path=str(path)).to_dict()])
    from_instances = metric.compute_metrics(metric.results)
    # the merged detection has IoU 6/12 with each nucleus: it matches one, the other is missed
    assert from_instances["ObjF1"] == pytest.approx(2 / 3)
    assert from_instances["ObjRecall"] == pytest.approx(1 / 2)
    assert from_instances["AJI"] == pytest.approx((6 + 6) / (12 + 12))
    assert "Dice" not in from_instances
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((3, 3), np.uint16))
    with pytest.raises(ValueError, match="instance map"):
        metric.process(None, [_sample(gt, pred, inst_path=str(wrong)).to_dict()])


def test_sparse_seg_metric_ignores_ignore_index():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[0:2, 0:2] = 1
    gt[3, :] = 255
    pred = gt.copy()
    pred[3, :] = 1  # predictions on ignored pixels do not count
    metric = METRICS.build(dict(type="SparseSegMetric"))
    metric.process(None, [_sample(gt, pred).to_dict()])
    res = metric.compute_metrics(metric.results)
    assert res["Dice"] == 1.0 and res["AJI"] == 1.0 and res["ObjF1"] == 1.0


def test_sparse_seg_metric_bad_config_and_inputs():
    with pytest.raises(KeyError, match="unknown metrics"):
        METRICS.build(dict(type="SparseSegMetric", metrics=["mIoU"]))
    with pytest.raises(ValueError, match="band_width"):
        METRICS.build(dict(type="SparseSegMetric", band_width=-2))
    metric = METRICS.build(dict(type="SparseSegMetric"))
    with pytest.raises(ValueError, match="differ"):
        metric.process(None, [_sample(np.zeros((4, 4)), np.zeros((4, 5))).to_dict()])
    ds = _sample(np.zeros((4, 4)), np.zeros((4, 4))).to_dict()
    del ds["gt_sem_seg"]
    with pytest.raises(KeyError, match="gt_sem_seg"):
        metric.process(None, [ds])


def test_maxmin_metric_hand_values():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:2] = 1
    full = np.ones_like(gt)
    s1 = _sample(gt, full, img_label=1)
    s1.pred_img_label = torch.tensor(1)
    s2 = _sample(np.zeros_like(gt), np.zeros_like(gt), img_label=0)
    s2.pred_img_label = torch.tensor(1)  # misclassified
    evaluator = Evaluator([dict(type="MaxMinMetric")])
    evaluator.process(data_samples=[s1, s2], data_batch=None)
    res = evaluator.evaluate(2)
    # image 1: F1+ 2/3, F1- 0 (all-foreground mask); image 2: empty and empty -> 1, 1
    assert res["maxmin/F1+"] == pytest.approx((2 / 3 + 1) / 2)
    assert res["maxmin/F1-"] == pytest.approx((0 + 1) / 2)
    assert res["maxmin/ClsError"] == pytest.approx(50.0)


def test_maxmin_metric_without_masks_and_bad_samples():
    metric = METRICS.build(dict(type="MaxMinMetric"))
    ds = SegDataSample(metainfo=dict(img_label=2))
    ds.pred_img_label = torch.tensor(2)
    metric.process(None, [ds.to_dict()])
    assert metric.compute_metrics(metric.results) == {"ClsError": 0.0}
    with pytest.raises(KeyError, match="pred_img_label"):
        metric.process(None, [SegDataSample(metainfo=dict(img_label=0)).to_dict()])
    with pytest.raises(ValueError, match="no sample"):
        metric.compute_metrics([{}])
