"""Non-negative positive-unlabeled (nnPU) classification risk for detection.

Seed: Zhao, Pang, Liu, Ye, "Positive-unlabeled learning for cell detection in histopathology images
with incomplete annotations", MICCAI 2021, Eq. 9-12; the non-negative correction "kiryo" follows
Kiryo, Niu, du Plessis, Sugiyama, "Positive-unlabeled learning with non-negative risk estimator",
NeurIPS 2017 (Algorithm 1).

With H(c, 0) = -log p(background) and H(c, 1) the cross-entropy towards a sample's own class,

    R = pi / Np * sum_P H(c_p, 1) + max(0, E_x[H(c, 0)] - pi / Np * sum_P H(c_p, 0))

where E_x[H(c, 0)] is estimated over unlabeled AND positive samples in mode "detection" (Eq. 10-12:
the unlabeled proposals of a detector are not a sample of the whole data, the positives must be
added back) and over the unlabeled samples only in mode "classic" (classification PU).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_ext.losses._checks import check_choice, check_open_unit

__all__ = ["NonNegativePULoss", "nnpu_loss"]

MODES = ("detection", "classic")
NONNEGATIVE = ("clamp", "kiryo", "none")


def _risk_terms(
    logits: Tensor, labels: Tensor, background_index: Optional[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample H(c, 0), H(c, 1) and the positive mask, in float32 or float64."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1):
        # sigmoid: labels 1 = positive, 0 = unlabeled
        x = logits.reshape(-1)
        if labels.reshape(-1).shape != x.shape:
            raise ValueError(
                f"labels {tuple(labels.shape)} do not match sigmoid logits {tuple(logits.shape)}"
            )
        labels = labels.reshape(-1)
        if labels.numel() and ((labels != 0) & (labels != 1)).any():
            raise ValueError("with sigmoid logits labels must be 1 (positive) or 0 (unlabeled)")
        return F.softplus(x), F.softplus(-x), labels == 1
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, K+1) or (N,) / (N, 1), got {tuple(logits.shape)}")
    n, c = logits.shape
    if labels.shape != (n,):
        raise ValueError(
            f"labels must be ({n},) for logits {tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    bg = c - 1 if background_index is None else int(background_index)
    if not -c <= bg < c:
        raise ValueError(f"background_index {background_index} is outside the {c} classes")
    bg %= c
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c - 1}], got [{labels.min()}, {labels.max()}]")
    log_p = F.log_softmax(logits, dim=1)
    return -log_p[:, bg], -log_p.gather(1, labels[:, None]).squeeze(1), labels != bg


def nnpu_loss(
    logits: Tensor,
    labels: Tensor,
    prior: float,
    *,
    background_index: Optional[int] = None,
    mode: str = "detection",
    nonnegative: str = "clamp",
    beta: float = 0.0,
    gamma: float = 1.0,
) -> Tensor:
    """PU risk of Zhao et al. Eq. 10-12 (see the module docstring).

    Args:
        logits: (N, K+1) softmax logits with the background/unlabeled class at
            ``background_index`` (default: the last column, as Detectron2 and MMDet), or (N,) /
            (N, 1) sigmoid logits.
        labels: (N,) class indices; samples labelled background (0 with sigmoid logits) are the
            unlabeled set, all others the positives.
        prior: class prior pi of the positives, in (0, 1).
        mode: ``"detection"`` (E_x over unlabeled and positive samples) or ``"classic"``.
        nonnegative: ``"clamp"`` (max(0, negative risk)), ``"kiryo"`` (Kiryo et al.: when the
            negative risk is below -beta the value is positive risk - beta and the gradient that of
            -gamma * negative risk) or ``"none"`` (unbiased PU).

    Normalisers are the real counts: without positives the positive terms vanish and E_x runs over
    the unlabeled samples; without samples the loss is a zero that keeps a ``grad_fn``. Half
    precision logits are computed in float32; the result is float32 (float64 for float64 input).
    """
    prior = check_open_unit("prior", prior)
    check_choice("mode", mode, MODES)
    check_choice("nonnegative", nonnegative, NONNEGATIVE)
    h_neg, h_pos, positive = _risk_terms(logits, labels, background_index)
    pos = positive.to(h_neg.dtype)
    n_pos = pos.sum()
    n_unl = positive.numel() - n_pos
    pi_over_np = prior / n_pos.clamp_min(1.0)
    positive_risk = pi_over_np * (h_pos * pos).sum()
    if mode == "detection":
        expected_neg = h_neg.sum() / float(max(positive.numel(), 1))
    else:
        expected_neg = (h_neg * (1 - pos)).sum() / n_unl.clamp_min(1.0)
    negative_risk = expected_neg - pi_over_np * (h_neg * pos).sum()
    if nonnegative == "none":
        return positive_risk + negative_risk
    if nonnegative == "clamp":
        return positive_risk + negative_risk.clamp_min(0.0)
    # kiryo: the value stays positive_risk - beta; the gradient is that of -gamma * negative_risk
    defended = -gamma * negative_risk
    corrected = (positive_risk - beta).detach() + defended - defended.detach()
    return torch.where(negative_risk < -beta, corrected, positive_risk + negative_risk)


class NonNegativePULoss(nn.Module):
    """Module form of :func:`nnpu_loss`; ``forward(logits, labels)``."""

    def __init__(
        self,
        prior: float,
        *,
        background_index: Optional[int] = None,
        mode: str = "detection",
        nonnegative: str = "clamp",
        beta: float = 0.0,
        gamma: float = 1.0,
    ) -> None:
        super().__init__()
        self.prior = check_open_unit("prior", prior)
        self.background_index = background_index
        self.mode = check_choice("mode", mode, MODES)
        self.nonnegative = check_choice("nonnegative", nonnegative, NONNEGATIVE)
        self.beta = float(beta)
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return nnpu_loss(
            logits,
            labels,
            self.prior,
            background_index=self.background_index,
            mode=self.mode,
            nonnegative=self.nonnegative,
            beta=self.beta,
            gamma=self.gamma,
        )

    def extra_repr(self) -> str:
        return f"prior={self.prior}, mode={self.mode!r}, nonnegative={self.nonnegative!r}"
