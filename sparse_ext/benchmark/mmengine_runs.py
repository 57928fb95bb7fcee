"""What the MMSeg tasks (seg, lsr, maxmin) share: a run's mmengine Config from its context, the
benchmark's run settings and quick profile, and training through mmengine's ``Runner``."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import sys
import time
import warnings
from typing import Any, Callable, Iterator, Mapping, Tuple, TypeVar

import numpy as np

from sparse_ext.benchmark.context import RunContext
from sparse_ext.losses.fraction import FALLBACK_WARNING

T = TypeVar("T")

__all__ = ["apply_profile", "configure_run", "load_config", "train_then"]


def load_config(ctx: RunContext):
    """The loss's config file with the run's overrides merged in."""
    from mmengine.config import Config

    path = ctx.spec.config_path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MMSeg config not found: {path}")
    cfg = Config.fromfile(path)
    if ctx.overrides:
        cfg.merge_from_dict(copy.deepcopy(ctx.overrides))
    return cfg


def _walk(obj: Any) -> Iterator[dict]:
    """Every dict nested in a config (lists and dicts), depth first."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)


def apply_profile(cfg, profile: Mapping[str, Any]) -> None:
    """Quick-mode changes: crop size, batch size, UNet width, optimiser (other keys ignored)."""
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


def configure_run(cfg, ctx: RunContext) -> None:
    """Benchmark-run settings shared by the seg, lsr and maxmin tasks: work dir, seed,
    single-process loaders, an iteration budget with no validation, schedulers stretched to the
    budget, no checkpoints, a log line every tenth of the run."""
    iters = ctx.iters
    cfg.work_dir = ctx.work_dir
    cfg.experiment_name = ctx.name
    cfg.randomness = dict(seed=ctx.seed, deterministic=False)
    cfg.launcher = "none"
    cfg.log_level = "INFO"
    if "visualizer" in cfg:
        cfg.visualizer["name"] = f"{ctx.name}_visualizer"

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
    """Train ``cfg`` with ``Runner.from_cfg(cfg).train()``, then call ``after(runner)`` (scoring;
    with the averaged weights where the config has mmengine's ``EMAHook``, as ``runner.test()``
    would); returns its result, the training seconds and the seconds per iteration."""
    from mmengine.hooks import EMAHook

    # sparse_ext.mmseg is imported by the configs' custom_imports; the peer loss is ours
    import sparse_ext.benchmark.reference_ece  # noqa: F401

    os.makedirs(cfg.work_dir, exist_ok=True)
    with warnings.catch_warnings():
        if not verbose:  # the frameworks' deprecation/advice warnings, once per run
            warnings.simplefilter("ignore", UserWarning)
            # ... but not the losses' own: a loss that falls back to a default f says so
            warnings.filterwarnings("default", message=FALLBACK_WARNING)
        runner = _build_runner(cfg, verbose)
        start = time.perf_counter()
        runner.train()
        seconds = time.perf_counter() - start
        ema = next((h for h in runner.hooks if isinstance(h, EMAHook)), None)
        if ema is not None:
            ema.before_test_epoch(runner)  # swaps the averaged weights in
        try:
            result = after(runner)
        finally:
            if ema is not None:
                ema.after_test_epoch(runner)
    for handler in list(runner.logger.handlers):  # mmengine keeps the log file open otherwise
        if isinstance(handler, logging.FileHandler):
            handler.close()
            runner.logger.removeHandler(handler)
    return result, seconds, _sec_per_iter(runner, seconds, cfg.train_cfg["max_iters"])
