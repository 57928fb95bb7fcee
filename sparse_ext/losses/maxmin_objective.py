"""The combined max-min uncertainty objective and its localizer pieces (torch only).

Belharbi, Rony, Dolz, Ben Ayed, McCaffrey, Granger, "Deep interpretable classification and
weakly-supervised segmentation of histology images via max-min uncertainty", IEEE Transactions on
Medical Imaging 2022 (arXiv:2011.07221):

- :func:`wildcat_pool`: WILDCAT spatial pooling of class activation maps (Durand et al., 2017; the
  paper's localizer pooling, Sec. 4 (a)), one map per class (no multi-map "modalities");
- :func:`class_agnostic_activation`: the CAMs weighted by the localizer's class posterior, the
  paper's differentiable replacement for selecting the winning CAM;
- :func:`barrier_t`: the log-barrier accuracy t, t0 * factor**epoch capped at t_max (t0 = 5,
  x1.01 per epoch, up to 10, as in the paper's GlaS setting);
- :func:`maxmin_objective`: Eq. 7 plus the localizer's own classification loss (Fig. 2):
  H(p, p+) + lambda * R(p-) + size barrier on s+ and s- + H(p, p_localizer), with
  x+ = x * M+ and x- = x * (1 - M+) and R the EEM (Eq. 4/8) or SEM (Eq. 6/9) regulariser.

The single terms (uncertainty_regularizer, extended_log_barrier, size_barrier, soft_mask) live in
:mod:`sparse_ext.losses.maxmin`.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from sparse_ext.losses._validate import check_nonnegative, check_positive, check_range
from sparse_ext.losses.maxmin import size_barrier, soft_mask, uncertainty_regularizer

__all__ = [
    "barrier_t",
    "check_barrier_settings",
    "check_pooling_settings",
    "class_agnostic_activation",
    "localizer_mask",
    "maxmin_objective",
    "wildcat_pool",
]


def _check_k(name: str, k: float, allow_zero: bool) -> float:
    """A fraction in (0, 1] of the map, or a whole number of activations > 1 (0: off)."""
    k = check_nonnegative(name, k) if allow_zero else check_positive(name, k)
    if k > 1 and not float(k).is_integer():
        raise ValueError(
            f"{name} must be a fraction in (0, 1] or a whole number of activations, got {k:g}"
        )
    return k


def check_pooling_settings(kmax: float, kmin: float, alpha: float) -> tuple[float, float, float]:
    """WILDCAT's kmax (> 0), kmin (>= 0, 0: off), each a fraction in (0, 1] or a whole count, and
    alpha >= 0, validated (a ValueError names the bad one)."""
    return (
        _check_k("kmax", kmax, allow_zero=False),
        _check_k("kmin", kmin, allow_zero=True),
        check_nonnegative("alpha", alpha),
    )


def _num(k: float, n: int) -> int:
    """A fraction in (0, 1] of ``n`` elements (at least one), or an absolute count."""
    return max(1, min(n, math.ceil(k * n) if k <= 1 else int(k)))


def wildcat_pool(
    cams: torch.Tensor, kmax: float = 0.3, kmin: float = 0.0, alpha: float = 0.6
) -> torch.Tensor:
    """WILDCAT pooling: mean of the ``kmax`` highest activations of each map plus ``alpha`` times
    the mean of its ``kmin`` lowest (``kmin = 0`` drops that term). ``kmax``/``kmin`` in (0, 1] are
    fractions of the map, larger values absolute counts. cams (N, C, H, W) -> scores (N, C)."""
    kmax, kmin, alpha = check_pooling_settings(kmax, kmin, alpha)
    if cams.dim() != 4:
        raise ValueError(f"cams must have shape (N, C, H, W), got {tuple(cams.shape)}")
    flat = cams.flatten(2)
    n = flat.shape[-1]
    score = flat.topk(_num(kmax, n), dim=-1).values.mean(-1)
    if kmin > 0:
        low = flat.topk(_num(kmin, n), dim=-1, largest=False).values.mean(-1)
        score = score + alpha * low
    return score


def class_agnostic_activation(cams: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
    """sum_c softmax(class_logits)_c * cams_c: (N, C, H, W), (N, C) -> (N, 1, H, W)."""
    if class_logits.shape != cams.shape[:2]:
        raise ValueError(
            f"class_logits {tuple(class_logits.shape)} must match cams' (N, C) {tuple(cams.shape[:2])}"
        )
    weights = class_logits.softmax(dim=1)[:, :, None, None]
    return (weights * cams).sum(dim=1, keepdim=True)


def localizer_mask(
    activation: torch.Tensor,
    size: Optional[tuple] = None,
    *,
    omega: float = 5.0,
    sigma: float = 0.15,
    align_corners: bool = False,
) -> torch.Tensor:
    """Foreground soft mask M+ (Eq. 12) of a class-agnostic activation (N, 1, h, w), bilinearly
    resized to ``size`` first so that the mask is pseudo-binarised at image resolution."""
    if size is not None and tuple(activation.shape[-2:]) != tuple(size):
        activation = F.interpolate(
            activation, size=size, mode="bilinear", align_corners=align_corners
        )
    return soft_mask(activation, omega=omega, sigma=sigma)


def barrier_t(epoch: float, t0: float = 5.0, factor: float = 1.01, t_max: float = 10.0) -> float:
    """Log-barrier parameter after ``epoch`` epochs: min(t0 * factor**epoch, t_max)."""
    t0, factor, t_max = check_barrier_settings(t0, factor, t_max)
    epoch = check_nonnegative("epoch", epoch)
    return float(min(t0 * factor**epoch, t_max))


def check_barrier_settings(t0: float, factor: float, t_max: float) -> tuple[float, float, float]:
    """The log-barrier schedule's t0 > 0, factor >= 1 (t only grows, as the barrier method
    needs) and t_max > 0, validated (a ValueError names the bad one)."""
    return (
        check_positive("t0", t0),
        check_range("factor", factor, 1.0),
        check_positive("t_max", t_max),
    )


def maxmin_objective(
    images: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    t: float,
    *,
    lam: float = 1e-7,
    regularizer: Optional[str] = "eem",
    size_weight: float = 1.0,
    localizer_logits: Optional[torch.Tensor] = None,
    localizer_weight: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """Belharbi et al. (IEEE TMI 2022) Eq. 7 and the localizer's classification loss, as
    separate named terms.

    images (N, K, H, W); mask M+ (N, 1, H, W) or (N, H, W) in [0, 1]; labels (N,) image classes;
    classifier maps images to class logits (N, C). ``regularizer`` "eem" | "sem" | None (no
    background term). Returns ``loss_fg_cls`` (H(p, p+)), ``loss_bg_reg`` (lambda R(p-)),
    ``loss_size`` (size barrier of s+ and s-, normalised by the image area) and, with
    ``localizer_logits``, ``loss_loc_cls``; their sum is the training loss.
    """
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.shape[0] != images.shape[0] or mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"mask {tuple(mask.shape)} must cover the images {tuple(images.shape)} (N, 1, H, W)"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if regularizer is not None and regularizer not in ("eem", "sem"):
        raise ValueError(f"regularizer must be 'eem', 'sem' or None, got {regularizer!r}")
    t = check_positive("t", t)
    lam = check_nonnegative("lam", lam)
    size_weight = check_nonnegative("size_weight", size_weight)
    localizer_weight = check_nonnegative("localizer_weight", localizer_weight)
    fg_logits = classifier(images * mask)
    losses = {"loss_fg_cls": F.cross_entropy(fg_logits, labels)}
    if regularizer is not None:
        bg_logits = classifier(images * (1.0 - mask))
        losses["loss_bg_reg"] = lam * uncertainty_regularizer(bg_logits, kind=regularizer)
    losses["loss_size"] = size_weight * size_barrier(mask, t, normalize=True)
    if localizer_logits is not None:
        losses["loss_loc_cls"] = localizer_weight * F.cross_entropy(localizer_logits, labels)
    return losses
