"""``SparseLossAnnealingHook`` (HOOKS): tells sparse losses how far training has got and which
share of the objects carries a label.

Before training, losses that take the annotated fraction f (``set_annotated_fraction(f)``: ECE's
background keep probability, nnPU's prior) and were not given one in the config get the fraction
the training dataset recorded (``metainfo["sparse_fraction"]``, see ``PartialNucleiDataset``).

sparse_ext's annealed losses (ECE's rho schedule and background-sampling schedule, max-min's
log-barrier t, LSR's intra warm-up) expose ``set_progress(p)`` with p in [0, 1], the fraction of training done. This
hook, in the manner of mmdet's ``SetEpochInfoHook``, calls it before every training iteration on
every sub-module of the model that has it: decode and auxiliary heads, lists of losses
(``nn.ModuleList``), losses nested in other modules; model wrappers (DDP, FSDP) are unwrapped.

Until 20 % of training (the end of the "ce_warmup" schedule's warm-up) ECE / sampled CE train
with f capped at 0.2; then the hook compares their annotated fraction with the labelled data's
estimate of it, and lowers an over-estimated one (see :class:`SparseLossAnnealingHook`).

Progress is ``iter / max_iters`` for iteration-based loops and ``epoch / max_epochs`` for
epoch-based loops (``by_epoch=None`` picks from the train loop), so the value is exact after a
resume too.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop
from mmseg.registry import HOOKS

from sparse_ext.losses._validate import check_range
from sparse_ext.losses.fraction import FRACTION_ESTIMATE_END, FRACTION_TOLERANCE

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


_CHECKED_KEY = "sparse_ext_checked_fraction"


def _fraction_losses(model: nn.Module, given_only: bool = True) -> list[tuple[str, nn.Module]]:
    """The sub-modules whose keep probability follows an annotated fraction that can be checked
    against the labelled data (ECE / sampled CE without an explicit sampling schedule); with
    ``given_only``, those that have one."""
    return [
        (name, module)
        for name, module in _unwrap(model).named_modules()
        if callable(getattr(module, "check_annotated_fraction", None))
        and getattr(module, "sampling_schedule", None) is None
        and (getattr(module, "annotated_fraction", None) is not None or not given_only)
    ]


@HOOKS.register_module()
class SparseLossAnnealingHook(Hook):
    """Set the annotated fraction of sparse losses before training (from the training dataset's
    ``metainfo["sparse_fraction"]``, where the config gave none) and the training progress of
    annealed losses before each training iteration; check the fraction against the labelled
    data once, at :data:`~sparse_ext.losses.fraction.FRACTION_ESTIMATE_END` of training.

    The check: from 10 to 20 % of training, ECE and sampled CE estimate f as the labelled share
    of the pixels the model scores at least like the median labelled pixel (Bekker and Davis,
    AAAI 2018; :class:`~sparse_ext.losses.fraction.LabelFrequencyEstimate`). Until the check
    they train with f capped at
    :data:`~sparse_ext.losses.fraction.UNCHECKED_FRACTION_CEILING` (an over-estimated f breaks
    training early, before any estimate exists). At 20 % the largest estimate over the loss
    modules (and ranks) replaces a given f that exceeds it more than ``fraction_tolerance``
    times (:func:`~sparse_ext.losses.fraction.checked_fraction`), with a warning in the log;
    otherwise the given f is used from then on. The outcome is kept in checkpoints, so a
    resumed run trains on with it. The estimates are logged as ``f_estimate_<head>``.

    Args:
        by_epoch: progress by epochs (``epoch / max_epochs``) or by iterations
            (``iter / max_iters``); None (default) follows the train loop's type.
        check_fraction: run the check (False: train with the given f throughout).
        fraction_tolerance: how many times the given f may exceed the estimate, >= 1.
        min_estimate_iters: fewest batches with labelled pixels an estimate needs to count.
    """

    priority = "NORMAL"

    def __init__(
        self,
        by_epoch: Optional[bool] = None,
        check_fraction: bool = True,
        fraction_tolerance: float = FRACTION_TOLERANCE,
        min_estimate_iters: int = 10,
    ) -> None:
        self.by_epoch = by_epoch
        self.check_fraction = bool(check_fraction)
        self.fraction_tolerance = check_range("fraction_tolerance", fraction_tolerance, 1.0, None)
        self.min_estimate_iters = int(check_range("min_estimate_iters", min_estimate_iters, 1))
        self._checked = False
        self._checked_fractions: dict[str, float] = {}

    def progress(self, runner) -> float:
        """The fraction of training done at the runner's current iteration/epoch."""
        by_epoch = self.by_epoch
        if by_epoch is None:
            by_epoch = isinstance(runner.train_loop, EpochBasedTrainLoop)
        if by_epoch:
            return runner.epoch / max(runner.max_epochs, 1)
        return runner.iter / max(runner.max_iters, 1)

    def before_train(self, runner) -> None:
        if self.check_fraction and not self._checked:
            for _, module in _fraction_losses(runner.model, given_only=False):
                module.fraction_check_pending = True
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
        progress = self.progress(runner)
        set_training_progress(runner.model, progress)
        if self.check_fraction and not self._checked and progress >= FRACTION_ESTIMATE_END:
            self._check_fraction(runner)

    def _check_fraction(self, runner) -> None:
        """Compare the given annotated fraction with the labelled data's estimate, once."""
        self._checked = True
        losses = _fraction_losses(runner.model)
        if not losses:
            return
        values = [
            m.fraction_estimate.value
            for _, m in losses
            if m.fraction_estimate.updates >= self.min_estimate_iters
        ]
        # the estimates of the heads (and ranks) are all biased low (unconverged models,
        # uncertain borders): the largest is the least biased; one collective, once per run
        estimate = torch.tensor(max(values) if values else -1.0)
        if is_distributed():
            all_reduce(estimate, op="max")
        value = None if float(estimate) < 0 else float(estimate)
        for name, module in losses:
            given = module.annotated_fraction
            used = module.check_annotated_fraction(value, self.fraction_tolerance)
            self._checked_fractions[name] = used
            if used != given:
                runner.logger.warning(
                    f"SparseLossAnnealingHook: {name}: the annotated fraction {given:.3g} is more "
                    f"than {self.fraction_tolerance:g} x the {value:.3g} the labelled data support "
                    "(the labelled share of the pixels scored like labelled ones, Bekker and "
                    f"Davis, AAAI 2018); training on with {used:.3g}"
                )
            else:
                estimated = "none" if value is None else f"{value:.3g}"
                runner.logger.info(
                    f"SparseLossAnnealingHook: {name}: annotated fraction {given:.3g} kept "
                    f"(labelled data's estimate {estimated})"
                )

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._checked:
            checkpoint.setdefault("meta", {})[_CHECKED_KEY] = dict(self._checked_fractions)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        checked = checkpoint.get("meta", {}).get(_CHECKED_KEY)
        if checked is None:
            return
        self._checked = True
        self._checked_fractions = dict(checked)
        # before before_train: f from the data (or the fallback) is not set yet
        for name, module in _fraction_losses(runner.model, given_only=False):
            if name in checked:
                module.checked_fraction = float(checked[name])

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for name, module in _unwrap(runner.model).named_modules():
            estimate = getattr(module, "fraction_estimate", None)
            value = getattr(estimate, "value", None)
            if value is not None:
                head = name.split(".", 1)[0]
                runner.message_hub.update_scalar(f"train/f_estimate_{head}", value)
