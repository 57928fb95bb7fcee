"""Single terms of max-min uncertainty weakly supervised segmentation.

Belharbi, Rony, Dolz, Ben Ayed, McCaffrey, Granger, "Deep interpretable classification and
weakly-supervised segmentation of histology images via max-min uncertainty", IEEE Transactions on
Medical Imaging 2022 (arXiv:2011.07221), Eq. 3-12. The combined objective is in
:mod:`sparse_ext.losses.maxmin_objective`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_ext.losses._validate import check_choice, check_positive, check_unit

__all__ = [
    "check_mask_settings",
    "extended_log_barrier",
    "size_barrier",
    "soft_mask",
    "uncertainty_regularizer",
]


def check_mask_settings(omega: float, sigma: float) -> tuple[float, float]:
    """Eq. 12's omega > 0 and sigma in [0, 1], validated (a ValueError names the bad one)."""
    return check_positive("omega", omega), check_unit("sigma", sigma)


def uncertainty_regularizer(logits: Tensor, kind: str = "eem") -> Tensor:
    """R(p-) of Eq. 8/9 on class logits (N, C), mean over the batch.

    ``"eem"``: negative Shannon entropy sum_c p_c log p_c (Eq. 4; equals KL(p || u) - log C,
    Eq. 5). ``"sem"``: cross-entropy H(u, p) = -(1/C) sum_c log p_c between the uniform
    distribution and p (Eq. 6). Both are minimal at the uniform posterior.
    """
    check_choice("kind", kind, ("eem", "sem"))
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, C) with C >= 2, got {tuple(logits.shape)}")
    log_p = F.log_softmax(logits.float() if logits.dtype == torch.float16 else logits, dim=1)
    if kind == "eem":
        per_sample = (log_p.exp() * log_p).sum(dim=1)
    else:
        per_sample = -log_p.mean(dim=1)
    return per_sample.mean() if len(per_sample) else logits.sum() * 0.0


def extended_log_barrier(z: Tensor, t: float) -> Tensor:
    """Extended log-barrier psi_t(z) (Kervadec et al.; the barrier of Eq. 7), elementwise.

    psi_t(z) = -(1/t) log(-z)                         if z <= -1/t^2
             = t z - (1/t) log(1/t^2) + 1/t           otherwise

    Continuous with a continuous derivative at z = -1/t^2, and defined for every z.
    """
    t = check_positive("t", t)
    inside = z <= -1.0 / t**2
    safe = torch.where(inside, -z, torch.ones_like(z))  # log never sees z > 0: no NaN gradient
    log_branch = -torch.log(safe) / t
    linear_branch = t * z - math.log(1.0 / t**2) / t + 1.0 / t
    return torch.where(inside, log_branch, linear_branch)


def size_barrier(mask: Tensor, t: float, normalize: bool = True) -> Tensor:
    """Barrier on the foreground and background sizes (Eq. 7, 10, 11), mean over the batch.

    ``mask`` (N, H, W) or (N, 1, H, W) holds M+ in [0, 1]; M- = 1 - M+. Per sample
    psi_t(-s+) + psi_t(-s-), with s the region sizes as fractions of the image area when
    ``normalize`` (pixel counts otherwise).
    """
    t = check_positive("t", t)
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"mask must be (N, H, W) or (N, 1, H, W), got {tuple(mask.shape)}")
    mask = mask.float() if mask.dtype == torch.float16 else mask
    s_fg = mask.flatten(1).sum(dim=1)
    s_bg = (1.0 - mask).flatten(1).sum(dim=1)
    if normalize:
        area = mask.shape[1] * mask.shape[2]
        s_fg, s_bg = s_fg / area, s_bg / area
    per_sample = extended_log_barrier(-s_fg, t) + extended_log_barrier(-s_bg, t)
    return per_sample.mean() if len(per_sample) else mask.sum() * 0.0


def soft_mask(activation: Tensor, omega: float = 5.0, sigma: float = 0.15) -> Tensor:
    """Pseudo-binarised mask of Eq. 12: sigmoid(omega * (A - sigma)).

    A is the activation min-max normalised to [0, 1] per sample (not per batch), over all
    non-batch dimensions; a constant activation normalises to 0. omega > 0 (the sharpness),
    sigma in [0, 1] (the threshold on the normalised activation).
    """
    omega, sigma = check_mask_settings(omega, sigma)
    if activation.dim() < 2:
        raise ValueError(f"activation must be (N, ...), got {tuple(activation.shape)}")
    flat = activation.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    tiny = torch.finfo(activation.dtype).tiny if activation.dtype.is_floating_point else 1e-38
    normalized = ((flat - low) / span.clamp_min(tiny)).reshape(activation.shape)
    return torch.sigmoid(omega * (normalized - sigma))
