"""Training progress for annealed losses: from Detectron2's EventStorage, or set by a hook."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from detectron2.engine import HookBase
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

__all__ = [
    "SparseProgressHook",
    "log_pu_prior",
    "log_scalar",
    "set_sparse_progress",
    "storage_progress",
]


def storage_progress(max_iter: int) -> Optional[float]:
    """``EventStorage.iter / max_iter`` clipped to [0, 1]; None outside an EventStorage or when
    ``max_iter`` is not positive."""
    if max_iter <= 0:
        return None
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage in use (a custom loop)
        return None
    return min(max(storage.iter / max_iter, 0.0), 1.0)


def log_pu_prior(key: str, labelled: Tensor, pu_options: Mapping[str, Any]) -> None:
    """Put the batch's sampled prior pi_b = Np/N + (Nu/N) pi_u into the EventStorage under ``key``
    (``labelled``: a bool mask over the loss's samples); nothing for a fixed prior or outside an
    EventStorage."""
    if pu_options.get("prior_mode") != "sampled":
        return
    from sparse_ext.losses.nnpu import sampled_prior

    n_pos = int(labelled.sum())
    log_scalar(key, sampled_prior(n_pos, labelled.numel() - n_pos, pu_options["prior"]))


def log_scalar(key: str, value: float) -> None:
    """Put ``value`` into the EventStorage under ``key``; nothing outside an EventStorage."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage in use (a custom loop)
        return
    storage.put_scalar(key, value)


def set_sparse_progress(model: nn.Module, progress: float) -> int:
    """Call ``set_progress(progress)`` on every submodule that has it (our ROI predictor and RPN,
    and sparse_ext loss modules); unwraps DistributedDataParallel's ``.module``.

    Returns:
        how many modules were updated.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    model = getattr(model, "module", model)
    count = 0
    for module in model.modules():
        setter = getattr(module, "set_progress", None)
        if callable(setter):
            setter(progress)
            count += 1
    return count


class SparseProgressHook(HookBase):
    """Sets training progress ``iter / max_iter`` on the model's annealed losses before each step.

    Not needed with Detectron2's trainers (the losses read the EventStorage's iteration); use it in
    loops whose progress is not ``storage.iter / SOLVER.MAX_ITER`` (it takes precedence).
    """

    def before_step(self) -> None:
        max_iter = max(int(self.trainer.max_iter), 1)
        set_sparse_progress(self.trainer.model, min(self.trainer.iter / max_iter, 1.0))
