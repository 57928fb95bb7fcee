"""Segmentation runs: an MMSeg config trained with mmengine's Runner, scored on held-out frames.

Each run loads one of ``configs/mmseg/*.py`` (the loss is the only difference between the seg
configs), points its datasets at the ``sparse-ext data fetch`` layout (train labels from
``labels/frac{NNN}/train``, test labels from ``labels/full/test``), applies the run profile
(quick: small random crops, a narrow UNet, an iteration budget; full: the config as written with
the iteration budget), trains with ``Runner.train()`` and predicts the test frames with the
model's own ``test_step`` (the config's test pipeline and slide/whole inference). Scores come
from :mod:`sparse_ext.metrics` against the exhaustive reference: foreground Dice and IoU (pixels
pooled over the frames), AJI (mean over frames) and object F1/precision/recall (counts pooled;
predicted objects are the connected components of the predicted foreground, reference objects
the instance maps in ``instances/test``).

``threshold`` (a spec without a config) trains nothing: it is the floor every table shows, one
global intensity threshold chosen from the training images and their sparse labels only
(:func:`threshold_from_sparse_labels`), scored the same way.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np

from sparse_ext.benchmark.context import RunContext
from sparse_ext.benchmark.mmengine_runs import apply_profile, configure_run, load_config, train_then

__all__ = [
    "SegRunResult",
    "build_config",
    "evaluate_segmentor",
    "pooled_dice_iou",
    "run",
    "score_predictions",
    "threshold_from_sparse_labels",
    "train_and_evaluate",
]


@dataclass
class SegRunResult:
    seconds: float
    sec_per_iter: float
    metrics: Dict[str, float]
    predictions: Dict[str, np.ndarray]  # stem -> predicted label map (kept for the demo overlay)


def _label_dir(data_root: str, fraction: int, split: str = "train") -> str:
    sparse = os.path.join("labels", f"frac{fraction:03d}", split)
    if os.path.isdir(os.path.join(data_root, sparse)):
        return sparse
    if fraction == 100:
        return os.path.join("labels", "full", split)
    raise FileNotFoundError(
        f"no {fraction} % labels under {data_root}: expected {sparse}/ "
        "(prepare the data with `sparse-ext data fetch`)"
    )


def _set_dataset(dataset: dict, data_root: str, prefix: Dict[str, str]) -> None:
    # unwrap dataset wrappers (RepeatDataset, ConcatDataset...)
    while "dataset" in dataset and "data_prefix" not in dataset:
        dataset = dataset["dataset"]
    dataset["data_root"] = data_root
    dataset["data_prefix"] = dict(prefix)
    dataset["img_suffix"] = ".png"
    dataset["seg_map_suffix"] = ".png"


def build_config(ctx: RunContext):
    """The run's mmengine Config: the config file + overrides + data + profile + schedule."""
    cfg = load_config(ctx)
    data_root = ctx.data_root
    train = dict(img_path="images/train", seg_map_path=_label_dir(data_root, ctx.fraction))
    test = dict(img_path="images/test", seg_map_path=os.path.join("labels", "full", "test"))
    if os.path.isdir(os.path.join(data_root, "instances", "test")):
        test["inst_path"] = os.path.join("instances", "test")
    _set_dataset(cfg.train_dataloader.dataset, data_root, train)
    _set_dataset(cfg.test_dataloader.dataset, data_root, test)
    configure_run(cfg, ctx)
    if ctx.profile:
        apply_profile(cfg, ctx.profile)
    return cfg


def _read_instances(path: str) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path)).astype(np.int64)


def pooled_dice_iou(tp: int, fp: int, fn: int) -> Dict[str, float]:
    """Foreground Dice and IoU of pixel counts pooled over frames (1.0 when both are empty)."""
    union = tp + fp + fn
    return {"dice": 2 * tp / (tp + union) if union else 1.0, "iou": tp / union if union else 1.0}


def score_predictions(
    pairs: Iterable[Tuple[str, np.ndarray, np.ndarray]], data_root: str
) -> Dict[str, float]:
    """Score (stem, reference label map, predicted label map) of the test frames: pooled Dice/IoU,
    mean AJI and pooled object F1/precision/recall (module docstring)."""
    from sparse_ext.metrics import (
        ObjectCounts,
        aji_counts,
        binary_confusion,
        connected_components,
        object_counts,
    )

    tp = fp = fn = 0
    ajis: List[float] = []
    objects = ObjectCounts()
    for stem, gt, pred in pairs:
        a, b, c, _ = binary_confusion(gt, pred)
        tp, fp, fn = tp + a, fp + b, fn + c
        inst_path = os.path.join(data_root, "instances", "test", stem + ".tif")
        gt_inst = (
            _read_instances(inst_path) if os.path.isfile(inst_path) else connected_components(gt)
        )
        if gt_inst.shape != pred.shape:
            raise ValueError(
                f"{inst_path}: instance map {gt_inst.shape} != prediction {pred.shape}"
            )
        pred_inst = connected_components(pred)
        inter, union = aji_counts(gt_inst, pred_inst)
        ajis.append(inter / union if union else 1.0)
        objects = objects + object_counts(gt_inst, pred_inst)
    if not ajis:
        raise FileNotFoundError(f"no test frames under {data_root}/images/test")
    return {
        **pooled_dice_iou(tp, fp, fn),
        "aji": float(np.mean(ajis)),
        "object_f1": objects.f1,
        "object_precision": objects.precision,
        "object_recall": objects.recall,
    }


def evaluate_segmentor(
    model, cfg, data_root: str
) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Predict the test frames with the model's ``test_step`` and score them."""
    import torch
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS

    dataset = DATASETS.build(copy.deepcopy(cfg.test_dataloader.dataset))
    predictions: Dict[str, np.ndarray] = {}

    def pairs() -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
        model.eval()
        with torch.no_grad():
            for i in range(len(dataset)):
                sample = model.test_step(pseudo_collate([dataset[i]]))[0]
                pred = sample.pred_sem_seg.data.squeeze(0).cpu().numpy().astype(np.int64)
                gt = sample.gt_sem_seg.data.squeeze(0).cpu().numpy().astype(np.int64)
                stem = os.path.splitext(os.path.basename(sample.metainfo["img_path"]))[0]
                predictions[stem] = pred
                yield stem, gt, pred

    return score_predictions(pairs(), data_root), predictions


def _frames(
    data_root: str, split: str, labels: str
) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """(stem, grey image, label map) of a split, labels from ``labels/<labels>/<split>``."""
    from sparse_ext.data.io import read_image

    folder = os.path.join(data_root, "images", split)
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext != ".png":
            continue
        image = read_image(os.path.join(folder, name))
        label = read_image(os.path.join(data_root, "labels", labels, split, name))
        yield stem, image if image.ndim == 2 else image.mean(-1), label


def threshold_from_sparse_labels(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], annotated_fraction: float
) -> float:
    """One global intensity threshold from training images and their SPARSE labels only.

    The labelled share l of the pixels and the annotated fraction f give the expected share of
    object pixels, l / f; the threshold is the intensity quantile that leaves that share of the
    training pixels above it (objects bright, as the fetched nuclei images are).
    """
    pixels = np.concatenate([np.asarray(im, np.float64).ravel() for im in images])
    labelled = sum(int(np.count_nonzero(lab == 1)) for lab in labels)
    share = min(labelled / max(pixels.size, 1) / annotated_fraction, 1.0)
    return float(np.quantile(pixels, 1.0 - share))


def _threshold_floor(ctx: RunContext) -> Dict[str, Any]:
    start = time.perf_counter()
    labels = os.path.relpath(os.path.dirname(_label_dir(ctx.data_root, ctx.fraction)), "labels")
    train = list(_frames(ctx.data_root, "train", labels))
    t = threshold_from_sparse_labels(
        [im for _, im, _ in train], [lab for *_, lab in train], ctx.fraction / 100.0
    )
    pairs = (
        (stem, label.astype(np.int64), (image > t).astype(np.int64))
        for stem, image, label in _frames(ctx.data_root, "test", "full")
    )
    metrics = score_predictions(pairs, ctx.data_root)
    return dict(seconds=time.perf_counter() - start, sec_per_iter=0.0, **metrics)


def fraction_check(model) -> Dict[str, float]:
    """The outcome of ``SparseLossAnnealingHook``'s annotated-fraction check on a trained model,
    as the decode head's loss saw it: ``f_estimate`` (the estimate the check used; NaN: none)
    and ``f_used`` (f after the check; for a loss without the check, e.g. nnPU, the f it was
    given); empty where no loss takes f."""
    losses = [m for m in model.modules() if getattr(m, "checked_fraction", None) is not None]
    if not losses:
        given = [
            m.annotated_fraction
            for m in model.modules()
            if callable(getattr(m, "set_annotated_fraction", None))
            and getattr(m, "annotated_fraction", None) is not None
        ]
        return {"f_estimate": float("nan"), "f_used": given[0]} if given else {}
    estimate = losses[0].checked_estimate
    return {
        "f_estimate": float("nan") if estimate is None else estimate,
        "f_used": losses[0].checked_fraction,
    }


def train_and_evaluate(cfg, data_root: str, *, verbose: bool = False) -> SegRunResult:
    """Train ``cfg`` and score the test frames with :func:`evaluate_segmentor`; the metrics
    include :func:`fraction_check`'s outcome."""

    def evaluate(runner) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
        metrics, predictions = evaluate_segmentor(runner.model, cfg, data_root)
        return {**metrics, **fraction_check(runner.model)}, predictions

    (metrics, predictions), seconds, per_iter = train_then(cfg, evaluate, verbose=verbose)
    return SegRunResult(seconds, per_iter, metrics, predictions)


def run(ctx: RunContext) -> Dict[str, Any]:
    """Train and score one seg run (or the ``threshold`` floor when the spec has no config); the
    CSV row's results (``predictions`` added on request)."""
    if not ctx.spec.config:
        return _threshold_floor(ctx)
    result = train_and_evaluate(build_config(ctx), ctx.data_root, verbose=ctx.verbose)
    row: Dict[str, Any] = dict(
        seconds=result.seconds, sec_per_iter=result.sec_per_iter, **result.metrics
    )
    if ctx.keep_predictions:
        row["predictions"] = result.predictions
    return row
