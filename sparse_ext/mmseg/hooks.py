"""``SparseLossAnnealingHook`` (HOOKS): tells sparse losses how far training has got and which
share of the objects carries a label.

Before training, losses that take the annotated fraction f (``set_annotated_fraction(f)``: ECE's
background keep probability, nnPU's prior) and were not given one in the config get the fraction
the training dataset recorded (``metainfo["sparse_fraction"]``, see ``PartialNucleiDataset``).

sparse_ext's annealed losses (ECE's rho schedule and background-sampling schedule, max-min's
log-barrier t) expose ``set_progress(p)`` with p in [0, 1], the fraction of training done. This
hook, in the manner of mmdet's ``SetEpochInfoHook``, calls it before every training iteration on
every sub-module of the model that has it: decode and auxiliary heads, lists of losses
(``nn.ModuleList``), losses nested in other modules; model wrappers (DDP, FSDP) are unwrapped.

Progress is ``iter / max_iters`` for iteration-based loops and ``epoch / max_epochs`` for
epoch-based loops (``by_epoch=None`` picks from the train loop), so the value is exact after a
resume too.
"""

from __future__ import annotations

from typing import Optional

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop
from mmseg.registry import HOOKS

__all__ = ["SparseLossAnnealingHook", "set_annotated_fraction", "set_training_progress"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def set_training_progress(model: nn.Module, progress: float) -> int:
    """Call ``set_progress(progress)`` on every sub-module of ``model`` having it; returns how many.

    ``progress`` is clamped to [0, 1]. Model wrappers are unwrapped.
    """
    progress = min(max(float(progress), 0.0), 1.0)
    n = 0
    for module in _unwrap(model).modules():
        set_progress = getattr(module, "set_progress", None)
        if callable(set_progress):
            set_progress(progress)
            n += 1
    return n


def set_annotated_fraction(model: nn.Module, fraction: float) -> int:
    """Give ``fraction`` to every sub-module of ``model`` that takes one and has none yet.

    Modules with ``set_annotated_fraction`` and ``annotated_fraction is None`` are set; a
    fraction given in the config is kept. Returns how many were set.
    """
    n = 0
    for module in _unwrap(model).modules():
        setter = getattr(module, "set_annotated_fraction", None)
        if callable(setter) and getattr(module, "annotated_fraction", None) is None:
            setter(fraction)
            n += 1
    return n


@HOOKS.register_module()
class SparseLossAnnealingHook(Hook):
    """Set the annotated fraction of sparse losses before training (from the training dataset's
    ``metainfo["sparse_fraction"]``, where the config gave none) and the training progress of
    annealed losses before each training iteration.

    Args:
        by_epoch: progress by epochs (``epoch / max_epochs``) or by iterations
            (``iter / max_iters``); None (default) follows the train loop's type.
    """

    priority = "NORMAL"

    def __init__(self, by_epoch: Optional[bool] = None) -> None:
        self.by_epoch = by_epoch

    def progress(self, runner) -> float:
        """The fraction of training done at the runner's current iteration/epoch."""
        by_epoch = self.by_epoch
        if by_epoch is None:
            by_epoch = isinstance(runner.train_loop, EpochBasedTrainLoop)
        if by_epoch:
            return runner.epoch / max(runner.max_epochs, 1)
        return runner.iter / max(runner.max_iters, 1)

    def before_train(self, runner) -> None:
        dataset = getattr(runner.train_dataloader, "dataset", None)
        fraction = getattr(dataset, "metainfo", {}).get("sparse_fraction")
        if fraction is not None:
            n = set_annotated_fraction(runner.model, float(fraction))
            if n:
                runner.logger.info(
                    f"SparseLossAnnealingHook: annotated fraction {float(fraction):.3g} (recorded "
                    f"by the training data) given to {n} loss module(s)"
                )

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        set_training_progress(runner.model, self.progress(runner))
