"""``SparseLossAnnealingHook`` (HOOKS): tells annealed losses how far training has got.

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

__all__ = ["SparseLossAnnealingHook", "set_training_progress"]


def set_training_progress(model: nn.Module, progress: float) -> int:
    """Call ``set_progress(progress)`` on every sub-module of ``model`` having it; returns how many.

    ``progress`` is clamped to [0, 1]. Model wrappers are unwrapped.
    """
    if is_model_wrapper(model):
        model = model.module
    progress = min(max(float(progress), 0.0), 1.0)
    n = 0
    for module in model.modules():
        set_progress = getattr(module, "set_progress", None)
        if callable(set_progress):
            set_progress(progress)
            n += 1
    return n


@HOOKS.register_module()
class SparseLossAnnealingHook(Hook):
    """Set the training progress of annealed losses before each training iteration.

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

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        set_training_progress(runner.model, self.progress(runner))
