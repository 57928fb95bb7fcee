"""The reference ``ece-loss`` package (NKI-AI/ece_loss 1.0.0) as an MMSeg loss, benchmark-only.

``ece_loss.ExclusiveCrossEntropyLoss`` is the published implementation of Panteli et al.,
ICCV 2021; the benchmark runs it in the same MMSeg pipeline as sparse_ext's losses as an external
peer. It anneals by epoch on the reference code's 300-epoch scale (exclusivity threshold
0.5 * sigmoid((epoch - 50) / 10), background sampling 0.5 * sigmoid((epoch - 150) / 10));
``set_progress(p)`` maps training progress p in [0, 1] to ``epoch = p * epochs``, so the
annealing hook drives it like sparse_ext's own losses. Registered in MMSeg's MODELS under a
benchmark-specific name so it never shadows the adapter's ``ExclusiveCrossEntropyLoss``.

Importing this module needs ``mmseg`` and ``ece_loss`` (a test/benchmark-only dependency).
"""

from __future__ import annotations

from typing import Optional

import torch
from mmseg.registry import MODELS
from torch import nn

__all__ = ["ReferenceECELoss"]


@MODELS.register_module(name="BenchmarkReferenceECELoss")
class ReferenceECELoss(nn.Module):
    """MMSeg wrapper of ``ece_loss.ExclusiveCrossEntropyLoss`` with its default schedules.

    Label 0 = unannotated (tentative background), ``ignore_index`` pixels contribute nothing;
    the per-pixel loss is averaged over the non-ignored pixels.

    Args:
        epochs: length of the reference schedules' epoch scale (300 in the reference code).
        loss_weight: multiplier of the loss.
        loss_name: MMSeg loss name (``loss_`` prefix makes it part of the total loss).
        **ece_kwargs: passed to ``ExclusiveCrossEntropyLoss`` (thresholds, annealing functions,
            ``focal_loss_parameters``).
    """

    def __init__(
        self,
        epochs: float = 300.0,
        loss_weight: float = 1.0,
        loss_name: str = "loss_ref_ece",
        **ece_kwargs,
    ) -> None:
        super().__init__()
        from ece_loss import ExclusiveCrossEntropyLoss

        self.epochs = float(epochs)
        self.loss_weight = float(loss_weight)
        self._loss_name = loss_name
        self._ece_kwargs = ece_kwargs
        self._cls = ExclusiveCrossEntropyLoss
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        """Training progress p in [0, 1] -> reference epoch p * epochs."""
        self.progress = min(max(float(progress), 0.0), 1.0)

    def forward(
        self,
        cls_score: torch.Tensor,
        label: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> torch.Tensor:
        loss_fn = self._cls(ignore_index=ignore_index, reduction="none", **self._ece_kwargs)
        per_pixel = loss_fn(cls_score, label.long(), epoch=self.progress * self.epochs)
        if weight is not None:
            per_pixel = per_pixel * weight
        valid = (label != ignore_index).sum().clamp(min=1)
        return self.loss_weight * per_pixel.sum() / valid

    @property
    def loss_name(self) -> str:
        return self._loss_name
