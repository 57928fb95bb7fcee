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
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import numpy as np

T = TypeVar("T")

__all__ = [
    "SegRunResult",
    "apply_profile",
    "build_seg_config",
    "configure_run",
    "derived_data_dir",
    "evaluate_segmentor",
    "pooled_dice_iou",
    "train_then",
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


def _walk(obj: Any):
    """Every dict nested in a config (lists and dicts), depth first."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)


def _set_dataset(dataset: dict, data_root: str, prefix: Dict[str, str]) -> None:
    # unwrap dataset wrappers (RepeatDataset, ConcatDataset...)
    while "dataset" in dataset and "data_prefix" not in dataset:
        dataset = dataset["dataset"]
    dataset["data_root"] = data_root
    dataset["data_prefix"] = dict(prefix)
    dataset["img_suffix"] = ".png"
    dataset["seg_map_suffix"] = ".png"


def apply_profile(cfg, profile: Dict[str, Any]) -> None:
    """Quick-mode changes: crop size, batch size, UNet width, optimiser."""
    crop = profile.get("crop")
    if profile.get("native_scale"):
        # train at the test frames' scale: no random rescaling before the crop
        pipeline = cfg.train_dataloader.dataset.get("pipeline", [])
        pipeline[:] = [t for t in pipeline if t.get("type") not in ("RandomResize", "Resize")]
    if crop:
        for d in _walk(cfg.train_dataloader.dataset):
            if d.get("type") == "RandomCrop":
                d["crop_size"] = (crop, crop)
        cfg.model.data_preprocessor["size"] = (crop, crop)
        test_cfg = cfg.model.get("test_cfg") or {}
        if test_cfg.get("mode") == "slide":
            test_cfg["crop_size"] = (crop * 2, crop * 2)
            test_cfg["stride"] = (crop * 3 // 2, crop * 3 // 2)
    if profile.get("batch_size"):
        cfg.train_dataloader.batch_size = profile["batch_size"]
    width = profile.get("unet_base_channels")
    if width and cfg.model.backbone.get("type") == "UNet":
        old = cfg.model.backbone.get("base_channels", 64)
        cfg.model.backbone.base_channels = width
        for head_key in ("decode_head", "auxiliary_head"):
            heads = cfg.model.get(head_key)
            for head in heads if isinstance(heads, list) else [heads] if heads else []:
                head["in_channels"] = head["in_channels"] * width // old
                head["channels"] = head["channels"] * width // old
    if profile.get("optimizer"):
        cfg.optim_wrapper = dict(type="OptimWrapper", optimizer=dict(profile["optimizer"]))


def configure_run(cfg, seed: int, iters: int, work_dir: str, name: str) -> None:
    """Benchmark-run settings shared by the seg, lsr and maxmin tasks: work dir, seed,
    single-process loaders, an iteration budget with no validation, schedulers stretched to the
    budget, no checkpoints, a log line every tenth of the run."""
    cfg.work_dir = work_dir
    cfg.experiment_name = name
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.launcher = "none"
    cfg.log_level = "INFO"
    if "visualizer" in cfg:
        cfg.visualizer["name"] = f"{name}_visualizer"

    for key in ("train_dataloader", "test_dataloader"):
        cfg[key]["num_workers"] = 0
        cfg[key]["persistent_workers"] = False
    # train only; the benchmark scores the test frames itself
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters + 1)
    cfg.val_cfg = None
    cfg.val_dataloader = None
    cfg.val_evaluator = None
    cfg.test_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
    for sched in cfg.get("param_scheduler", None) or []:
        if not sched.get("by_epoch", True) or sched.get("type") == "PolyLR":
            sched["end"] = iters
            sched["by_epoch"] = False
    hooks = cfg.default_hooks
    hooks["checkpoint"] = dict(type="CheckpointHook", by_epoch=False, interval=-1, save_last=False)
    hooks["logger"] = dict(
        type="LoggerHook", interval=max(1, iters // 10), log_metric_by_epoch=False
    )
    hooks.pop("visualization", None)


def build_seg_config(
    config_path: str,
    data_root: str,
    fraction: int,
    seed: int,
    iters: int,
    work_dir: str,
    *,
    profile: Optional[Dict[str, Any]] = None,
    overrides: Optional[Dict[str, Any]] = None,
    name: str = "run",
):
    """The run's mmengine Config: the config file + overrides + data + profile + schedule."""
    from mmengine.config import Config

    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"MMSeg config not found: {config_path}")
    cfg = Config.fromfile(config_path)
    if overrides:
        cfg.merge_from_dict(copy.deepcopy(overrides))
    train = dict(img_path="images/train", seg_map_path=_label_dir(data_root, fraction))
    test = dict(img_path="images/test", seg_map_path=os.path.join("labels", "full", "test"))
    if os.path.isdir(os.path.join(data_root, "instances", "test")):
        test["inst_path"] = os.path.join("instances", "test")
    _set_dataset(cfg.train_dataloader.dataset, data_root, train)
    _set_dataset(cfg.test_dataloader.dataset, data_root, test)
    configure_run(cfg, seed, iters, work_dir, name)
    if profile:
        apply_profile(cfg, profile)
    return cfg


def _build_runner(cfg, verbose: bool):
    """``Runner.from_cfg`` with the console limited to errors unless ``verbose`` (the full
    INFO log still goes to the run's work_dir)."""
    from mmengine.runner import Runner

    if verbose:
        return Runner.from_cfg(cfg)
    with contextlib.redirect_stdout(io.StringIO()):  # environment/config dump at start-up
        runner = Runner.from_cfg(cfg)
    for handler in runner.logger.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setStream(sys.stdout)
            handler.setLevel(logging.ERROR)
    return runner


def derived_data_dir(work_dir: str) -> str:
    """Where a task keeps the data it derives from the dataset (LSR blocks, max-min tiles): one
    folder beside its runs' work dirs, shared by every run of the task."""
    return os.path.join(os.path.dirname(work_dir), "_data")


def _read_instances(path: str) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path)).astype(np.int64)


def pooled_dice_iou(tp: int, fp: int, fn: int) -> Dict[str, float]:
    """Foreground Dice and IoU of pixel counts pooled over frames (1.0 when both are empty)."""
    union = tp + fp + fn
    return {"dice": 2 * tp / (tp + union) if union else 1.0, "iou": tp / union if union else 1.0}


def evaluate_segmentor(
    model, cfg, data_root: str
) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Predict the test frames with the model's ``test_step`` and score them."""
    import torch
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS

    from sparse_ext.metrics import (
        ObjectCounts,
        aji_counts,
        binary_confusion,
        connected_components,
        object_counts,
    )

    dataset = DATASETS.build(copy.deepcopy(cfg.test_dataloader.dataset))
    if len(dataset) == 0:
        raise FileNotFoundError(f"no test frames under {data_root}/images/test")
    tp = fp = fn = 0
    ajis: List[float] = []
    objects = ObjectCounts()
    predictions: Dict[str, np.ndarray] = {}
    model.eval()
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = model.test_step(pseudo_collate([dataset[i]]))[0]
            pred = sample.pred_sem_seg.data.squeeze(0).cpu().numpy().astype(np.int64)
            gt = sample.gt_sem_seg.data.squeeze(0).cpu().numpy().astype(np.int64)
            stem = os.path.splitext(os.path.basename(sample.metainfo["img_path"]))[0]
            predictions[stem] = pred
            a, b, c, _ = binary_confusion(gt, pred)
            tp, fp, fn = tp + a, fp + b, fn + c
            inst_path = os.path.join(data_root, "instances", "test", stem + ".tif")
            gt_inst = (
                _read_instances(inst_path)
                if os.path.isfile(inst_path)
                else connected_components(gt)
            )
            if gt_inst.shape != pred.shape:
                raise ValueError(
                    f"{inst_path}: instance map {gt_inst.shape} != prediction {pred.shape}"
                )
            pred_inst = connected_components(pred)
            inter, union = aji_counts(gt_inst, pred_inst)
            ajis.append(inter / union if union else 1.0)
            objects = objects + object_counts(gt_inst, pred_inst)
    metrics = {
        **pooled_dice_iou(tp, fp, fn),
        "aji": float(np.mean(ajis)),
        "object_f1": objects.f1,
        "object_precision": objects.precision,
        "object_recall": objects.recall,
    }
    return metrics, predictions


def _sec_per_iter(runner, seconds: float, iters: int) -> float:
    """Median of mmengine's per-iteration times (IterTimerHook), first iteration left out: the
    median keeps other jobs' bursts on a shared machine from dominating."""
    try:
        values = np.asarray(runner.message_hub.get_scalar("train/time").data[0], dtype=float)
        if values.size > 1:
            return float(np.median(values[1:]))
        if values.size == 1:
            return float(values[0])
    except KeyError:
        pass
    return seconds / max(iters, 1)


def train_then(cfg, after: Callable[[Any], T], *, verbose: bool = False) -> Tuple[T, float, float]:
    """Train ``cfg`` with ``Runner.from_cfg(cfg).train()``, then call ``after(runner)`` (scoring);
    returns its result, the training seconds and the seconds per iteration."""
    # sparse_ext.mmseg is imported by the configs' custom_imports; the peer loss is ours
    import sparse_ext.benchmark.reference_ece  # noqa: F401

    os.makedirs(cfg.work_dir, exist_ok=True)
    with warnings.catch_warnings():
        if not verbose:  # the frameworks' deprecation/advice warnings, once per run
            warnings.simplefilter("ignore", UserWarning)
        runner = _build_runner(cfg, verbose)
        start = time.perf_counter()
        runner.train()
        seconds = time.perf_counter() - start
        result = after(runner)
    for handler in list(runner.logger.handlers):  # mmengine keeps the log file open otherwise
        if isinstance(handler, logging.FileHandler):
            handler.close()
            runner.logger.removeHandler(handler)
    return result, seconds, _sec_per_iter(runner, seconds, cfg.train_cfg["max_iters"])


def train_and_evaluate(cfg, data_root: str, *, verbose: bool = False) -> SegRunResult:
    """Train ``cfg`` and score the test frames with :func:`evaluate_segmentor`."""
    (metrics, predictions), seconds, per_iter = train_then(
        cfg, lambda runner: evaluate_segmentor(runner.model, cfg, data_root), verbose=verbose
    )
    return SegRunResult(seconds, per_iter, metrics, predictions)
