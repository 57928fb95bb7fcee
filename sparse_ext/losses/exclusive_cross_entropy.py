"""Exclusive cross-entropy (ECE) for sparsely annotated dense prediction.

Panteli, Teuwen, Horlings, Gavves, "Sparse-shot learning with exclusive cross-entropy for
extremely many localisations", ICCV 2021, Eq. 7 and its focal variant Eq. 8::

    L = - sum_{x_i in F} log p_i  -  sum_{x_i in F_bar} delta(p_i < rho) u(1 - p_i)

F are the annotated elements (plain cross-entropy), F_bar the unannotated ones, taken as tentative
background and kept only while the model's confidence p_i is below the exclusivity threshold rho;
u is the identity (Eq. 7) or the focal weighting alpha * (1 - p_t)^gamma (Eq. 8). rho is annealed
over training with :mod:`sparse_ext.losses.schedules`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_ext.losses.schedules import ConstantSchedule, _clamp01, build_schedule

__all__ = [
    "CONFIDENCE_MODES",
    "REDUCTIONS",
    "ExclusiveCrossEntropy",
    "exclusive_cross_entropy",
]

#: How the confidence of an unannotated element is measured (compared with rho).
CONFIDENCE_MODES = ("foreground", "margin", "logit_margin")
#: Reductions over the elements.
REDUCTIONS = ("mean", "sum", "none")

# Smallest 1 - p_t fed to the focal power: (1 - p_t)^gamma with gamma < 1 has an infinite
# derivative at p_t = 1 (CE = 0), which autograd would turn into 0 * inf = NaN.
_FOCAL_EPS = 1e-12


def _check_options(
    confidence: str,
    reduction: str,
    focal_alpha: Optional[float],
    focal_gamma: Optional[float],
) -> None:
    if confidence not in CONFIDENCE_MODES:
        raise ValueError(f"unknown confidence {confidence!r}; valid: {', '.join(CONFIDENCE_MODES)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    for name, value in (("focal_alpha", focal_alpha), ("focal_gamma", focal_gamma)):
        if value is not None and not (math.isfinite(float(value)) and float(value) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 or None, got {value}")


def _check_inputs(logits: Tensor, target: Tensor, use_sigmoid: bool) -> tuple[Tensor, Tensor]:
    """Validate shapes and dtypes; return (logits, target) in the shapes the maths uses."""
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise ValueError("logits and target must be torch tensors")
    if not torch.is_floating_point(logits):
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if torch.is_floating_point(target) or torch.is_complex(target):
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if use_sigmoid:
        if logits.shape == target.shape:
            pass
        elif (
            logits.dim() == target.dim() + 1
            and logits.dim() >= 2
            and logits.shape[1] == 1
            and logits.shape[:1] + logits.shape[2:] == target.shape
        ):
            logits = logits.squeeze(1)
        else:
            raise ValueError(
                f"use_sigmoid: logits {tuple(logits.shape)} must be (N, *) or (N, 1, *) for "
                f"target {tuple(target.shape)} (N, *)"
            )
    else:
        if logits.dim() < 2:
            raise ValueError(
                f"logits {tuple(logits.shape)} must be (N, C, *) with C >= 2 classes "
                "(use use_sigmoid=True for one foreground logit per element)"
            )
        if logits.shape[1] < 2:
            raise ValueError(
                f"logits {tuple(logits.shape)} have C = {logits.shape[1]} classes; softmax ECE "
                "needs C >= 2 (class 0 = background), or use_sigmoid=True for one channel"
            )
        if logits.shape[:1] + logits.shape[2:] != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} (N, C, *) and target {tuple(target.shape)} "
                "(N, *) do not match"
            )
    if target.dtype != torch.long:
        target = target.long()
    return logits, target


def _confident_enough_to_keep(
    ce: Tensor, logits: Tensor, rho: float, confidence: str, use_sigmoid: bool
) -> Optional[Tensor]:
    """Where an unannotated element's confidence allows keeping it (None: everywhere).

    Called without grad. ``ce`` is only read where the element is unannotated: there its target
    is background, so ``ce = -log p(background)`` and the probability tests follow from it
    without a second softmax.
    """
    if confidence == "logit_margin":
        # As ece_loss.ExclusiveLoss.get_multiclass_confidence: |top1 - top2| of the raw logits,
        # kept where <= threshold (note the <=); rho is in logit units here.
        if use_sigmoid:  # the two classes' logits are (0, x)
            margin = logits.abs()
        elif logits.shape[1] == 2:
            margin = (logits[:, 0] - logits[:, 1]).abs()
        else:
            top2 = logits.topk(2, dim=1).values
            margin = (top2[:, 0] - top2[:, 1]).abs()
        return margin <= rho
    if rho >= 1.0:  # a probability (margin) never exceeds 1: plain cross-entropy
        return None
    if rho <= 0.0:
        return torch.zeros_like(ce, dtype=torch.bool)
    if confidence == "foreground":
        # 1 - p(bg) < rho  <=>  -log p(bg) < -log(1 - rho)
        return ce < -math.log1p(-rho)
    if use_sigmoid or logits.shape[1] == 2:
        # margin |2 p(bg) - 1| < rho  <=>  (1 - rho) / 2 < p(bg) < (1 + rho) / 2
        low, high = -math.log((1.0 + rho) / 2.0), -math.log((1.0 - rho) / 2.0)
        return (ce > low) & (ce < high)
    top2 = torch.softmax(logits, dim=1).topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) < rho


def exclusive_cross_entropy(
    logits: Tensor,
    target: Tensor,
    annotated: Optional[Tensor] = None,
    rho: float = 1.0,
    *,
    use_sigmoid: bool = False,
    confidence: str = "foreground",
    focal_alpha: Optional[float] = None,
    focal_gamma: Optional[float] = None,
    sample_prob: float = 1.0,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    """Exclusive cross-entropy, Panteli et al. ICCV 2021 Eq. 7 (focal variant Eq. 8).

    Annotated elements get plain cross-entropy. Unannotated elements are tentative background
    (target 0) and contribute their cross-entropy only where the model's confidence is below
    ``rho``; with focal parameters their terms are ``alpha * (1 - p_t)^gamma * CE``,
    ``p_t = exp(-CE)`` (unannotated terms only, as in the paper); with ``sample_prob < 1`` each
    is also kept with that probability (the reference code's background sampling).

    Args:
        logits: (N, C, *) softmax logits with class 0 = background, C >= 2; with
            ``use_sigmoid``, (N, *) or (N, 1, *) foreground logits.
        target: (N, *) integer class indices (0 or 1 with ``use_sigmoid``), or ``ignore_index``.
        annotated: (N, *) bool, True where the label is a real annotation; default
            ``target != 0`` (and not ignored). Unannotated elements are treated as background
            whatever their target value; ignored elements stay ignored.
        rho: exclusivity threshold. With "foreground"/"margin", ``rho >= 1`` keeps every term
            (plain cross-entropy) and ``rho <= 0`` drops every unannotated term.
        use_sigmoid: binary sigmoid logits instead of a softmax over C classes.
        confidence: "foreground": kept where 1 - p(background) < rho (paper Eq. 7; with sigmoid,
            the foreground probability); "margin": top-1 minus top-2 class probability < rho;
            "logit_margin": top-1 minus top-2 raw logit <= rho (note the <=, rho in logit
            units), which reproduces ``ece_loss.ExclusiveCrossEntropyLoss`` (ece-loss 1.0.0)
            exactly when its background sampling is off. With sigmoid logits x, the two classes'
            logits are (0, x): margin |2 sigmoid(x) - 1|, logit margin |x|.
        focal_alpha, focal_gamma: focal reweighting of the unannotated terms (Eq. 8); on when
            either is given, a missing one defaults to alpha = 1, gamma = 0.
        sample_prob: probability in [0, 1] of keeping each unannotated term.
        ignore_index: target value of elements left out entirely.
        reduction: "mean" (sum over the number of non-ignored elements, so ``rho=1`` equals
            ``F.cross_entropy(..., ignore_index=...)``; 0 when all are ignored), "sum" or
            "none" (per element, shape of ``target``, 0 where ignored or dropped).

    Returns:
        The loss, float32 for float16/bfloat16 logits (computed in float32), else the logits'
        dtype.

    Raises:
        ValueError: mismatched shapes, non-floating logits, non-integer target, target values
            outside the classes, unknown confidence or reduction, bad rho/sample_prob/focal.
    """
    _check_options(confidence, reduction, focal_alpha, focal_gamma)
    rho = float(rho)
    if math.isnan(rho):
        raise ValueError("rho is NaN")
    sample_prob = float(sample_prob)
    if not 0.0 <= sample_prob <= 1.0:
        raise ValueError(f"sample_prob must be in [0, 1], got {sample_prob}")
    logits, target = _check_inputs(logits, target, use_sigmoid)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # as autocast does for cross-entropy: no fp16 overflow

    # Masks are computed where needed only: every pass over the elements costs (see
    # tools/bench_losses.py). ``marker`` is nonzero exactly where an element is annotated or
    # ignored, i.e. not unannotated.
    ignored = None
    if annotated is None:
        marker = target if ignore_index != 0 else torch.ones_like(target, dtype=torch.bool)
        ce_target = target
    else:
        if not isinstance(annotated, Tensor) or annotated.shape != target.shape:
            got = tuple(annotated.shape) if isinstance(annotated, Tensor) else type(annotated)
            raise ValueError(
                f"annotated {got} must be a tensor shaped like target {tuple(target.shape)}"
            )
        if torch.is_floating_point(annotated):
            raise ValueError(f"annotated must be a bool mask, got dtype {annotated.dtype}")
        ignored = target == ignore_index
        marker = (annotated != 0) | ignored
        ce_target = target.masked_fill(~marker, 0)

    focal = focal_alpha is not None or focal_gamma is not None
    if use_sigmoid:
        if ignored is None:
            ignored = target == ignore_index
        bad = ~ignored & (ce_target != 0) & (ce_target != 1)
        if bool(bad.any()):
            values = torch.unique(ce_target[bad]).tolist()[:10]
            raise ValueError(
                f"use_sigmoid: target values {values} are not 0, 1 or ignore_index {ignore_index}"
            )
        binary = ce_target.masked_fill(ignored, 0).to(logits.dtype)
        ce = F.binary_cross_entropy_with_logits(logits, binary, reduction="none")
    else:
        plain = not focal and sample_prob >= 1.0 and confidence != "logit_margin" and rho >= 1.0
        if plain:  # rho >= 1 keeps everything: exactly F.cross_entropy
            ce = _cross_entropy(logits, ce_target, ignore_index, reduction)
            if reduction != "mean":
                return ce
            count = torch.count_nonzero(target != ignore_index)
            return torch.where(count > 0, ce, torch.zeros_like(ce))  # all ignored: 0, not NaN
        ce = _cross_entropy(logits, ce_target, ignore_index, "none")

    with torch.no_grad():
        ce_d = ce.detach()
        if confidence == "foreground" and 0.0 < rho < 1.0 and sample_prob >= 1.0:
            # The paper's mode in one comparison: kept where CE < -log(1 - rho) (as below) or
            # where marked, those being shifted to <= 0 first (ce - max_float * marker).
            shifted = torch.add(ce_d, marker, alpha=-torch.finfo(ce.dtype).max)
            keep = torch.lt(shifted, -math.log1p(-rho), out=torch.empty_like(ce))
        else:
            keep = _confident_enough_to_keep(ce_d, logits.detach(), rho, confidence, use_sigmoid)
            if sample_prob < 1.0:
                sampled = torch.rand(ce.shape, device=ce.device) < sample_prob
                keep = sampled if keep is None else keep & sampled
            if keep is not None:
                # Annotated (and ignored) elements are always kept. One float mask, applied
                # as a product: cheaper than masked_fill or where, in forward and backward.
                keep = torch.logical_or(keep, marker != 0, out=torch.empty_like(ce))
        if use_sigmoid:  # BCE has no ignore_index
            keep = (~ignored).to(ce.dtype) if keep is None else keep.masked_fill_(ignored, 0.0)

    weighted = ce
    if focal:
        alpha = 1.0 if focal_alpha is None else float(focal_alpha)
        gamma = 0.0 if focal_gamma is None else float(focal_gamma)
        weight = alpha * (-torch.expm1(-ce)).clamp_min(_FOCAL_EPS).pow(gamma) if gamma else alpha
        weighted = torch.where(marker != 0, ce, weight * ce)

    if reduction == "none":
        return weighted if keep is None else weighted * keep
    if keep is None:
        total = weighted.sum()
    else:
        total = torch.dot(weighted.reshape(-1), keep.reshape(-1))
    if reduction == "sum":
        return total
    if ignored is not None:
        count = ignored.numel() - torch.count_nonzero(ignored)
    else:
        count = torch.count_nonzero(target != ignore_index)
    return total / count.clamp_min(1).to(total.dtype)


def _cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, reduction: str) -> Tensor:
    try:
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
    except (IndexError, RuntimeError) as e:
        raise ValueError(
            f"target values must be class indices in [0, {logits.shape[1]}) or "
            f"ignore_index {ignore_index} ({e})"
        ) from e


class ExclusiveCrossEntropy(nn.Module):
    """Exclusive cross-entropy (Panteli et al., ICCV 2021, Eq. 7/8) with rho on a schedule.

    ``set_progress(p)`` (p = fraction of training done, in [0, 1]) moves rho along
    ``schedule`` and the keep probability along ``sampling_schedule``; :attr:`rho` and
    :attr:`sample_prob` give the current values. See :func:`exclusive_cross_entropy`.

    Args:
        schedule: rho over training progress; anything
            :func:`sparse_ext.losses.schedules.build_schedule` accepts (a schedule, a number, a
            name such as "constant" or "paper_table2", a dict with a "type"). Default: constant
            0.5.
        sampling_schedule: probability of keeping an unannotated term over training progress
            (e.g. "reference_sampling"); None keeps all.
        use_sigmoid, confidence, focal_alpha, focal_gamma, ignore_index, reduction: as in
            :func:`exclusive_cross_entropy`.
    """

    def __init__(
        self,
        schedule: Any = ConstantSchedule(0.5),  # noqa: B008 (frozen, shared safely)
        sampling_schedule: Any = None,
        *,
        use_sigmoid: bool = False,
        confidence: str = "foreground",
        focal_alpha: Optional[float] = None,
        focal_gamma: Optional[float] = None,
        ignore_index: int = 255,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_options(confidence, reduction, focal_alpha, focal_gamma)
        self.schedule = build_schedule(schedule)
        self.sampling_schedule = (
            None if sampling_schedule is None else build_schedule(sampling_schedule)
        )
        self.use_sigmoid = bool(use_sigmoid)
        self.confidence = confidence
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.progress = 0.0

    def set_progress(self, p: float) -> None:
        """Set the fraction of training done (clamped to [0, 1])."""
        self.progress = _clamp01(p)

    @property
    def rho(self) -> float:
        """The exclusivity threshold at the current progress."""
        return float(self.schedule(self.progress))

    @property
    def sample_prob(self) -> float:
        """The probability of keeping an unannotated term at the current progress."""
        if self.sampling_schedule is None:
            return 1.0
        return float(self.sampling_schedule(self.progress))

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        annotated: Optional[Tensor] = None,
        *,
        ignore_index: Optional[int] = None,
        reduction: Optional[str] = None,
    ) -> Tensor:
        """The loss at the current progress; ``ignore_index``/``reduction`` override the module's."""
        return exclusive_cross_entropy(
            logits,
            target,
            annotated,
            self.rho,
            use_sigmoid=self.use_sigmoid,
            confidence=self.confidence,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            sample_prob=self.sample_prob,
            ignore_index=self.ignore_index if ignore_index is None else ignore_index,
            reduction=self.reduction if reduction is None else reduction,
        )

    def extra_repr(self) -> str:
        parts = [f"schedule={self.schedule!r}"]
        if self.sampling_schedule is not None:
            parts.append(f"sampling_schedule={self.sampling_schedule!r}")
        parts.append(f"confidence={self.confidence!r}")
        if self.use_sigmoid:
            parts.append("use_sigmoid=True")
        if self.focal_alpha is not None or self.focal_gamma is not None:
            parts.append(f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}")
        parts.append(f"ignore_index={self.ignore_index}, reduction={self.reduction!r}")
        parts.append(f"progress={self.progress:.4g}")
        return ", ".join(parts)
