"""Detectron2 evaluator for detection from partial annotations (wiring to sparse_ext.metrics)."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.layers import nms
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from sparse_ext.detectron2.config import validate_sparse_test_config
from sparse_ext.metrics.detection import (
    DEFAULT_F1_THRESHOLDS,
    DEFAULT_SCORE_THRESHOLDS,
    average_recall_precision,
    best_f1_threshold,
    detection_f1,
    exclusive_recall_per_class,
    f1_curve,
)

__all__ = [
    "SparseDetectionEvaluator",
    "build_sparse_evaluators",
    "f1_key",
    "has_compiled_ops",
]


def f1_key(threshold: float) -> str:
    """The result key of the F1 at a score threshold: ``"f1@0.35"``."""
    return f"f1@{float(threshold):g}"


def has_compiled_ops() -> bool:
    """Whether detectron2 was built with its C++/CUDA extension (``detectron2._C``)."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


class SparseDetectionEvaluator(DatasetEvaluator):
    """F1, precision and recall at IoU 0.5, average recall/precision, exclusive recall.

    Predictions (after the model's own per-class NMS and, with ``nms_threshold``, an extra
    class-agnostic NMS) are matched one-to-one to the dataset's annotations
    (:func:`sparse_ext.metrics.detection.detection_f1`). Results under the key ``"sparse"``:

    - ``f1``, ``precision``, ``recall``, ``tp``, ``fp``, ``fn`` at ``score_threshold``;
    - ``average_recall``, ``average_precision`` over ``score_thresholds`` (Zhao, Pang et al.);
    - the F1 curve ``f1@<t>`` (:func:`f1_key`) at each of ``f1_thresholds``, its maximum
      ``best_f1`` and ``best_f1_threshold``: choose the threshold on a validation split, read the
      test split's ``f1@<t>`` there (F1 at the validation-chosen threshold);
    - ``exclusive_recall/<class>`` and their mean ``exclusive_recall`` when more than one class is
      annotated (Panteli et al.: Rec(y) * (1 - Rec(not y))).

    On a partially annotated test set, precision counts unannotated true objects as false
    positives: evaluate on exhaustively annotated images, or read recall only.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.5,
        score_thresholds: Sequence[float] = DEFAULT_SCORE_THRESHOLDS,
        f1_thresholds: Sequence[float] = DEFAULT_F1_THRESHOLDS,
        nms_threshold: Optional[float] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
    ) -> None:
        if dataset_name not in DatasetCatalog.list():
            raise KeyError(f"dataset '{dataset_name}' is not registered in DatasetCatalog")
        if nms_threshold is not None and not 0.0 < nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1] or None, got {nms_threshold}")
        self._dataset_name = dataset_name
        self._iou_threshold = iou_threshold
        self._score_threshold = score_threshold
        self._score_thresholds = tuple(score_thresholds)
        self._f1_thresholds = tuple(f1_thresholds)
        self._nms_threshold = nms_threshold
        self._distributed = distributed
        self._output_dir = output_dir
        self._logger = logging.getLogger(__name__)
        self._predictions: List[Dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            inst = out["instances"].to("cpu")
            boxes, scores = inst.pred_boxes.tensor, inst.scores
            if self._nms_threshold is not None and len(inst):
                keep = nms(boxes, scores, self._nms_threshold)
                inst = inst[keep]
                boxes, scores = inst.pred_boxes.tensor, inst.scores
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "boxes": boxes.numpy(),
                    "scores": scores.numpy(),
                    "labels": inst.pred_classes.numpy(),
                }
            )

    def _ground_truth(self) -> Dict[Any, Dict[str, np.ndarray]]:
        gts = {}
        for record in DatasetCatalog.get(self._dataset_name):
            anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
            boxes = np.array(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                dtype=np.float64,
            ).reshape(-1, 4)
            labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
            gts[record["image_id"]] = {"boxes": boxes, "labels": labels}
        return gts

    def evaluate(self) -> OrderedDict[str, Dict[str, float]]:
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return OrderedDict()
        else:
            predictions = self._predictions
        if not predictions:
            self._logger.warning("[SparseDetectionEvaluator] received no predictions")
            return OrderedDict()

        gt_by_id = self._ground_truth()
        missing = [p["image_id"] for p in predictions if p["image_id"] not in gt_by_id]
        if missing:
            raise KeyError(
                f"predicted image ids {missing[:5]} are not in dataset '{self._dataset_name}'"
            )
        gts = [gt_by_id[p["image_id"]] for p in predictions]
        res: Dict[str, float] = dict(
            detection_f1(
                predictions,
                gts,
                iou_threshold=self._iou_threshold,
                score_threshold=self._score_threshold,
            )
        )
        res.update(
            average_recall_precision(
                predictions,
                gts,
                score_thresholds=self._score_thresholds,
                iou_threshold=self._iou_threshold,
            )
        )
        curve = f1_curve(
            predictions,
            gts,
            score_thresholds=self._f1_thresholds,
            iou_threshold=self._iou_threshold,
        )
        res.update({f1_key(t): values["f1"] for t, values in curve.items()})
        res["best_f1_threshold"], res["best_f1"] = best_f1_threshold(curve)
        excl = exclusive_recall_per_class(
            predictions,
            gts,
            iou_threshold=self._iou_threshold,
            score_threshold=self._score_threshold,
        )
        if excl:
            names = MetadataCatalog.get(self._dataset_name).get("thing_classes", None)
            for label, values in excl.items():
                name = names[label] if names and label < len(names) else str(label)
                res[f"exclusive_recall/{name}"] = values["exclusive_recall"]
            res["exclusive_recall"] = float(np.mean([v["exclusive_recall"] for v in excl.values()]))
        res = {k: float(v) for k, v in res.items()}
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "sparse_metrics.json"), "w") as f:
                json.dump(res, f, indent=2)
        return OrderedDict(sparse=res)


def build_sparse_evaluators(
    cfg, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluators:
    """Detectron2's COCOEvaluator (bbox AP) alongside :class:`SparseDetectionEvaluator`.

    COCOEvaluator runs pycocotools' own evaluation when detectron2 was installed without its
    compiled extension (``use_fast_impl=False``). Thresholds come from ``cfg.TEST.SPARSE``
    (checked by :func:`~sparse_ext.detectron2.config.validate_sparse_test_config`).
    """
    validate_sparse_test_config(cfg)
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    sparse = cfg.TEST.SPARSE
    return DatasetEvaluators(
        [
            COCOEvaluator(
                dataset_name,
                tasks=("bbox",),
                output_dir=output_folder,
                use_fast_impl=has_compiled_ops(),
            ),
            SparseDetectionEvaluator(
                dataset_name,
                iou_threshold=sparse.IOU_THRESH,
                score_threshold=sparse.SCORE_THRESH,
                score_thresholds=tuple(sparse.SCORE_THRESHOLDS),
                f1_thresholds=tuple(sparse.F1_THRESHOLDS),
                nms_threshold=sparse.NMS_THRESH if sparse.NMS_THRESH > 0 else None,
                output_dir=output_folder,
            ),
        ]
    )
