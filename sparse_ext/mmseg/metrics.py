"""MMSeg metrics (METRICS) wrapping :mod:`sparse_ext.metrics`, for the val/test loops.

- ``SparseSegMetric``: foreground Dice and IoU (pixels pooled over the dataset), AJI (mean over
  images), object-level F1/precision/recall (counts pooled over the dataset, one-to-one matching
  at IoU >= ``iou_threshold``), and with ``band_width`` the masked Dice/IoU in a band around the
  ground-truth boundaries (pixels pooled over the dataset).
- ``MaxMinMetric``: F1+ and F1- (mean over images) and the classification error in percent.

Scores are fractions in [0, 1] except the classification error. Objects: the predicted objects
are the connected components of the predicted foreground; the ground-truth objects come from an
instance map when the data sample carries its path (metainfo key ``instance_key``, default
``inst_path``; tif or png, same size as the ground truth), else from the connected components of
the ground-truth foreground (touching nuclei then count as one object). Ground-truth
``ignore_index`` pixels are removed from both maps before scoring.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmseg.registry import METRICS

from sparse_ext.metrics import (
    ObjectCounts,
    aji_counts,
    binary_confusion,
    boundary_band,
    classification_error,
    connected_components,
    f1_minus,
    f1_plus,
    object_counts,
)

__all__ = ["MaxMinMetric", "SparseSegMetric"]

_SEG_METRICS = ("Dice", "IoU", "AJI", "ObjF1")


def _label_map(data_sample: dict, key: str) -> np.ndarray:
    if key not in data_sample:
        raise KeyError(f"data sample has no {key!r} (keys: {sorted(data_sample)})")
    return data_sample[key]["data"].squeeze(0).cpu().numpy().astype(np.int64)


def _read_instances(path: str) -> np.ndarray:
    if path.lower().endswith((".tif", ".tiff")):
        import tifffile

        return np.asarray(tifffile.imread(path)).astype(np.int64)
    from skimage.io import imread

    return np.asarray(imread(path)).astype(np.int64)


@METRICS.register_module()
class SparseSegMetric(BaseMetric):
    """Dice, IoU, AJI, object F1 and band-masked Dice/IoU of the foreground.

    Args:
        metrics: any of "Dice", "IoU", "AJI", "ObjF1" (F1 with its precision and recall).
        band_width: also report ``MaskedDice``/``MaskedIoU`` within this distance (pixels) of the
            ground-truth boundaries; None to skip.
        cls: score this class only (default: every label > 0, ignore_index excluded).
        ignore_index: ground-truth label left out of every score.
        iou_threshold: IoU for an object match.
        connectivity: connected-component neighbourhood (2 = 8-connected, 1 = 4-connected).
        aji_one_to_one: report AJI+ (one-to-one pairing) instead of the original AJI.
        instance_key: metainfo key of a ground-truth instance map path.
    """

    default_prefix: Optional[str] = "sparse"

    def __init__(
        self,
        metrics: Sequence[str] = _SEG_METRICS,
        band_width: Optional[float] = None,
        cls: Optional[int] = None,
        ignore_index: int = 255,
        iou_threshold: float = 0.5,
        connectivity: int = 2,
        aji_one_to_one: bool = False,
        instance_key: str = "inst_path",
        collect_device: str = "cpu",
        prefix: Optional[str] = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = sorted(set(metrics) - set(_SEG_METRICS))
        if unknown:
            raise KeyError(f"unknown metrics {unknown}; choose from {list(_SEG_METRICS)}")
        if band_width is not None and band_width < 0:
            raise ValueError(f"band_width must be >= 0, got {band_width}")
        self.metrics = metrics
        self.band_width = band_width
        self.cls = cls
        self.ignore_index = ignore_index
        self.iou_threshold = iou_threshold
        self.connectivity = connectivity
        self.aji_one_to_one = aji_one_to_one
        self.instance_key = instance_key

    def _gt_instances(self, data_sample: dict, gt: np.ndarray) -> np.ndarray:
        path = data_sample.get(self.instance_key)
        if path:
            inst = _read_instances(path)
            if inst.shape != gt.shape:
                raise ValueError(
                    f"instance map {path} has shape {inst.shape}, the ground truth {gt.shape}"
                )
            return inst
        return connected_components(
            gt, self.cls, ignore_index=self.ignore_index, connectivity=self.connectivity
        )

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for ds in data_samples:
            pred = _label_map(ds, "pred_sem_seg")
            gt = _label_map(ds, "gt_sem_seg")
            if pred.shape != gt.shape:
                raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ")
            kw = dict(cls=self.cls, ignore_index=self.ignore_index)
            out: Dict[str, Any] = {"pixels": binary_confusion(gt, pred, **kw)[:3]}
            if self.band_width is not None:
                band = boundary_band(gt, self.band_width, **kw)
                out["band"] = binary_confusion(gt, pred, valid=band, **kw)[:3]
            if "AJI" in self.metrics or "ObjF1" in self.metrics:
                valid = gt != self.ignore_index
                gt_inst = self._gt_instances(ds, gt) * valid
                pred_inst = connected_components(
                    pred * valid, self.cls, ignore_index=None, connectivity=self.connectivity
                )
                if "AJI" in self.metrics:
                    inter, union = aji_counts(gt_inst, pred_inst, one_to_one=self.aji_one_to_one)
                    out["aji"] = inter / union if union else 1.0
                if "ObjF1" in self.metrics:
                    out["objects"] = object_counts(gt_inst, pred_inst, self.iou_threshold)
            self.results.append(out)

    @staticmethod
    def _pooled(results: List[dict], key: str) -> Dict[str, float]:
        tp, fp, fn = np.sum([r[key] for r in results], axis=0)
        den_d, den_i = 2 * tp + fp + fn, tp + fp + fn
        return {
            "dice": float(2 * tp / den_d) if den_d else 1.0,
            "iou": float(tp / den_i) if den_i else 1.0,
        }

    def compute_metrics(self, results: list) -> Dict[str, float]:
        out: Dict[str, float] = {}
        pix = self._pooled(results, "pixels")
        if "Dice" in self.metrics:
            out["Dice"] = pix["dice"]
        if "IoU" in self.metrics:
            out["IoU"] = pix["iou"]
        if self.band_width is not None:
            band = self._pooled(results, "band")
            out["MaskedDice"], out["MaskedIoU"] = band["dice"], band["iou"]
        if "AJI" in self.metrics:
            out["AJI"] = float(np.mean([r["aji"] for r in results]))
        if "ObjF1" in self.metrics:
            total = sum((r["objects"] for r in results), ObjectCounts())
            out.update(ObjF1=total.f1, ObjPrecision=total.precision, ObjRecall=total.recall)
        return out


@METRICS.register_module()
class MaxMinMetric(BaseMetric):
    """F1+ / F1- (Belharbi et al. Eq. 14/15, mean over images) and classification error (Eq. 13, %).

    The predicted class is the data sample's ``pred_img_label`` (set by ``MaxMinSegmentor``), the
    true class its metainfo ``img_label``. Samples without ``gt_sem_seg`` count towards the
    classification error only.
    """

    default_prefix: Optional[str] = "maxmin"

    def __init__(
        self,
        ignore_index: int = 255,
        collect_device: str = "cpu",
        prefix: Optional[str] = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ignore_index = ignore_index

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for ds in data_samples:
            out: Dict[str, Any] = {}
            if "gt_sem_seg" in ds:
                pred = _label_map(ds, "pred_sem_seg")
                gt = _label_map(ds, "gt_sem_seg")
                out["f1_plus"] = f1_plus(gt, pred, ignore_index=self.ignore_index)
                out["f1_minus"] = f1_minus(gt, pred, ignore_index=self.ignore_index)
            if "img_label" in ds:
                if "pred_img_label" not in ds:
                    raise KeyError("data sample has an img_label but no pred_img_label")
                out["labels"] = (int(ds["img_label"]), int(ds["pred_img_label"]))
            self.results.append(out)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        out: Dict[str, float] = {}
        seg = [r for r in results if "f1_plus" in r]
        if seg:
            out["F1+"] = float(np.mean([r["f1_plus"] for r in seg]))
            out["F1-"] = float(np.mean([r["f1_minus"] for r in seg]))
        labels = [r["labels"] for r in results if "labels" in r]
        if labels:
            y_true, y_pred = zip(*labels)
            out["ClsError"] = classification_error(y_true, y_pred)
        if not out:
            raise ValueError("MaxMinMetric: no sample had gt_sem_seg or img_label")
        return out
