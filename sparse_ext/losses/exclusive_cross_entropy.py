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
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sparse_ext.losses._validate import (
    check_choice,
    check_fraction,
    check_nonnegative,
    check_range,
    check_schedule,
    check_unit,
)
from sparse_ext.losses.fraction import (
    FRACTION_ESTIMATE_END,
    FRACTION_ESTIMATE_START,
    FRACTION_TOLERANCE,
    UNCHECKED_FRACTION_CEILING,
    LabelFrequencyEstimate,
    checked_fraction,
)
from sparse_ext.losses.schedules import ConstantSchedule, _clamp01, build_schedule

__all__ = [
    "CONFIDENCE_MODES",
    "KEEP_MARGIN",
    "background_keep_prob",
    "beyond_exclusion_budget",
    "budget_among_excludable",
    "REDUCTIONS",
    "ExclusiveCrossEntropy",
    "exclusive_cross_entropy",
]

#: How the confidence of an unannotated element is measured (compared with rho).
CONFIDENCE_MODES = ("foreground", "margin", "logit_margin")
#: Reductions over the elements.
REDUCTIONS = ("mean", "sum", "none")

# Smallest 1 - p_t fed to the focal power: (1 - p_t)^gamma with gamma < 1 has an infinite
# derivative at p_t = 1 (CE = 0).
_FOCAL_EPS = 1e-12
# nll_loss's reduction code for "sum" (at::Reduction::Sum).
_SUM = 2


def rho_range(confidence: str) -> tuple[float, Optional[float]]:
    """The valid range of rho: [0, 1] for probabilities, [0, inf) for "logit_margin"."""
    return (0.0, None) if confidence == "logit_margin" else (0.0, 1.0)


def check_rho(rho: Any, confidence: str = "foreground", name: str = "rho") -> float:
    """rho as a float, or a ValueError naming it and its range for ``confidence``."""
    low, high = rho_range(confidence)
    return check_range(name, rho, low, high)


class _Settings(NamedTuple):
    """The scalar settings of one call, validated (see :func:`_check_settings`)."""

    rho: float
    confidence: str
    focal_alpha: Optional[float]  # None: no focal weighting (then focal_gamma is None too)
    focal_gamma: Optional[float]
    sample_prob: float
    ignore_index: int
    reduction: str

    @property
    def focal(self) -> bool:
        return self.focal_alpha is not None

    @property
    def plain(self) -> bool:
        """Every term kept with weight 1: exactly cross-entropy."""
        return (
            not self.focal
            and self.sample_prob >= 1.0
            and self.confidence != "logit_margin"
            and self.rho >= 1.0
        )


def check_focal(
    focal_alpha: Optional[float], focal_gamma: Optional[float]
) -> tuple[Optional[float], Optional[float]]:
    """(alpha, gamma) of Eq. 8 with alpha in [0, 1] and gamma >= 0; (None, None) when both are
    None (no focal weighting); a missing one defaults to alpha = 1, gamma = 0."""
    if focal_alpha is None and focal_gamma is None:
        return None, None
    alpha = 1.0 if focal_alpha is None else check_unit("focal_alpha", focal_alpha)
    gamma = 0.0 if focal_gamma is None else check_nonnegative("focal_gamma", focal_gamma)
    return alpha, gamma


def _check_settings(
    rho: Any,
    confidence: str,
    focal_alpha: Optional[float],
    focal_gamma: Optional[float],
    sample_prob: Any,
    ignore_index: int,
    reduction: str,
) -> _Settings:
    check_choice("confidence", confidence, CONFIDENCE_MODES)
    check_choice("reduction", reduction, REDUCTIONS)
    alpha, gamma = check_focal(focal_alpha, focal_gamma)
    return _Settings(
        rho=check_rho(rho, confidence),
        confidence=confidence,
        focal_alpha=alpha,
        focal_gamma=gamma,
        sample_prob=check_unit("sample_prob", sample_prob),
        ignore_index=int(ignore_index),
        reduction=reduction,
    )


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


def _check_annotated(annotated: Any, target: Tensor) -> Tensor:
    if not isinstance(annotated, Tensor) or annotated.shape != target.shape:
        got = tuple(annotated.shape) if isinstance(annotated, Tensor) else type(annotated)
        raise ValueError(
            f"annotated {got} must be a tensor shaped like target {tuple(target.shape)}"
        )
    if torch.is_floating_point(annotated):
        raise ValueError(f"annotated must be a bool mask, got dtype {annotated.dtype}")
    return annotated != 0


def _check_binary_target(target: Tensor, ignore_index: int, annotated: Optional[Tensor]) -> None:
    bad = (target != ignore_index) & (target != 0) & (target != 1)
    if annotated is not None:  # unannotated labels are background whatever their value
        bad &= annotated
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()[:10]
        raise ValueError(
            f"use_sigmoid: target values {values} are not 0, 1 or ignore_index {ignore_index}"
        )


def _invalid_target(num_classes: int, ignore_index: int, detail: object) -> ValueError:
    return ValueError(
        f"target values must be class indices in [0, {num_classes}) or ignore_index "
        f"{ignore_index} ({detail})"
    )


def _count_valid(log_p: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """The number of non-ignored elements (a 0-d tensor, no host sync), raising a ValueError for
    target values outside the classes: nll_loss's own check and count, in one pass."""
    n, c = log_p.shape[:2]
    if target.numel() == 0:
        return log_p.new_zeros(())
    try:
        if log_p.dim() == 2:
            _, count = torch.ops.aten.nll_loss_forward(log_p, target, None, _SUM, ignore_index)
        else:
            _, count = torch.ops.aten.nll_loss2d_forward(
                log_p.reshape(n, c, 1, -1), target.reshape(n, 1, -1), None, _SUM, ignore_index
            )
    except (IndexError, RuntimeError) as e:
        raise _invalid_target(c, ignore_index, e) from e
    return count


def _cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, reduction: str) -> Tensor:
    try:
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
    except (IndexError, RuntimeError) as e:
        raise _invalid_target(logits.shape[1], ignore_index, e) from e


def _dot(a: Tensor, b: Tensor) -> Tensor:
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return (a * b).sum()


def _channels(shape: torch.Size, first: int, count: int, like: Tensor) -> Tensor:
    """Class indices first..first+count-1 shaped (1, count, 1, ...) to broadcast over (N, C, *)."""
    classes = torch.arange(first, first + count, dtype=like.dtype, device=like.device)
    return classes.view(1, count, *([1] * (len(shape) - 2)))


def _confident_enough_to_keep(
    log_p: Tensor, logits: Tensor, rho: float, confidence: str
) -> Optional[Tensor]:
    """Where an unannotated element's confidence allows keeping it (None: everywhere).

    Only read where the element is unannotated: there its target is background, so its
    cross-entropy is ``-log p(background)`` and the probability tests follow from that column
    of ``log_p`` (no second softmax).
    """
    if confidence == "logit_margin":
        # As ece_loss.ExclusiveLoss.get_multiclass_confidence: |top1 - top2| of the raw logits,
        # kept where <= threshold (note the <=); rho is in logit units here. Sigmoid logits x
        # arrive as the two classes' logits (0, x).
        if logits.shape[1] == 2:
            margin = (logits[:, 0] - logits[:, 1]).abs()
        else:
            top2 = logits.topk(2, dim=1).values
            margin = (top2[:, 0] - top2[:, 1]).abs()
        return margin <= rho
    if rho >= 1.0:  # a probability (margin) never exceeds 1: every term is kept
        return None
    log_p0 = log_p[:, 0]
    if rho <= 0.0:
        return torch.zeros_like(log_p0, dtype=torch.bool)
    if confidence == "foreground":
        # 1 - p(bg) < rho  <=>  CE = -log p(bg) < -log(1 - rho)
        return log_p0 > math.log1p(-rho)
    if logits.shape[1] == 2:
        # margin |2 p(bg) - 1| < rho  <=>  (1 - rho) / 2 < p(bg) < (1 + rho) / 2
        low, high = math.log((1.0 - rho) / 2.0), math.log((1.0 + rho) / 2.0)
        return (log_p0 > low) & (log_p0 < high)
    top2 = log_p.exp().topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) < rho


def _focal_terms(
    log_p: Tensor, gamma: float, kept: Tensor
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Eq. 8's unannotated terms over alpha and their derivatives, elementwise from ``log_p``.

    phi(u) = alpha * (1 - p_t)^gamma * u, u = -log p_t = CE (p_t = p(background)), and
    phi'(u) = alpha * (1 - p_t)^(gamma - 1) * S, S = (1 - p_t) + gamma * p_t * u.
    1 - p_t is the other class's probability with two classes (no cancellation, one exp), else
    -expm1(log p_t); other powers than gamma = 1, 2 clamp it to >= 1e-12 (no infinite power at
    p_t = 1; a no-op elsewhere).

    With r = (1 - p_t)^(gamma - 1) shared by both, returns (w, a, b): w = kept * r (in place on
    ``kept``, the 0/1 weights of the kept unannotated terms), a = (1 - p_t) * log p_t and b = S
    (None: 1), so that kept * phi / alpha = -w * a and kept * phi' / alpha = w * b. Every pass
    over the elements costs (see tools/bench_losses.py): in place, on two buffers.
    """
    log_p0 = log_p[:, 0]
    if gamma == 0.0:  # a constant weight: phi = alpha * u
        return kept, log_p0, None
    if log_p.shape[1] == 2:
        q = torch.exp(log_p[:, 1])  # 1 - p_t
        p_t = torch.exp(log_p0)
    else:
        q = torch.expm1(log_p0).neg_()
        p_t = torch.sub(1.0, q)
    if gamma not in (1.0, 2.0):
        q.clamp_min_(_FOCAL_EPS)
    s = torch.addcmul(q, p_t, log_p0, value=-gamma, out=p_t)  # S: p_t * u = -p_t * log p_t
    if gamma == 2.0:
        kept.mul_(q)
    elif gamma != 1.0:
        kept.mul_(q.pow(gamma - 1.0))
    return kept, q.mul_(log_p0), s


def _keep_weights(
    log_p: Tensor, logits: Tensor, s: _Settings, out: Optional[Tensor] = None
) -> Optional[Tensor]:
    """1 where an unannotated element's term is kept (confidence test and sampling), else 0, in
    the logits' dtype; None where every term is kept. ``out``: a free buffer shaped like
    ``log_p[:, 0]`` to write into (fewer fresh pages: the allocations are a visible share)."""
    if s.confidence == "foreground" and 0.0 < s.rho < 1.0:
        # the paper's test written straight into a float mask (saves a bool -> float pass)
        log_p0 = log_p[:, 0]
        out = torch.empty_like(log_p0) if out is None else out
        keep = torch.gt(log_p0, math.log1p(-s.rho), out=out)
    else:
        mask = _confident_enough_to_keep(log_p, logits, s.rho, s.confidence)
        keep = None if mask is None else mask.to(log_p.dtype)
    if s.sample_prob < 1.0:
        sampled = torch.rand(log_p[:, 0].shape, device=log_p.device) < s.sample_prob
        keep = sampled.to(log_p.dtype) if keep is None else keep.mul_(sampled)
    return keep


def _one_hot_by_comparison(
    log_p: Tensor, target: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(one-hot of ``target`` in log_p's shape and dtype, number of non-ignored elements, a
    buffer shaped like ``target`` free for reuse).

    One comparison of the float target with each class (no scatter); rows of ignored elements
    are zero. Valid when ignore_index is not a class and is exact in floating point. Raises a
    ValueError for target values that are neither a class nor ignore_index.
    """
    num_classes = log_p.shape[1]
    target_f = target.to(log_p.dtype)
    one_hot = torch.empty_like(log_p)
    torch.eq(target_f.unsqueeze(1), _channels(log_p.shape, 0, num_classes, log_p), out=one_hot)
    if log_p.device.type != "cpu" or target.numel() >= 2**24:
        return one_hot, _count_valid(log_p, target, ignore_index), target_f
    # On the CPU a host check is free and nll_loss's count is a serial loop: two parallel
    # reductions instead (the float sum of 0/1 is exact below 2^24 elements).
    labelled = one_hot.sum()
    # target_f is only a buffer from here on: the comparison written into it and summed is
    # half the time of a bool mask and count_nonzero
    ignored = torch.eq(target_f, ignore_index, out=target_f).sum()
    if int(labelled) + int(ignored) != target.numel():
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        values = torch.unique(target[bad]).tolist()[:10]
        raise _invalid_target(num_classes, ignore_index, f"got {values}")
    return one_hot, labelled, target_f


def _one_hot_general(
    log_p: Tensor, target: Tensor, annotated: Optional[Tensor], ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(one-hot of the annotated elements' classes, unannotated indicator, number of
    non-ignored elements), for an explicit ``annotated`` mask or an ignore_index among the
    classes; unannotated elements are background (class 0)."""
    ignored = target == ignore_index
    marked = ignored | (target != 0) if annotated is None else annotated | ignored
    class_target = target.masked_fill(~marked, 0)
    _count_valid(log_p, class_target, ignore_index)  # validation only
    count = (ignored.numel() - torch.count_nonzero(ignored)).to(log_p.dtype)
    labelled = (marked & ~ignored).to(log_p.dtype)
    one_hot = torch.zeros_like(log_p).scatter_(
        1, class_target.masked_fill(ignored, 0).unsqueeze(1), labelled.unsqueeze(1)
    )
    # unannotated elements are background only while 0 is not the ignore_index
    unannotated = ~marked if ignore_index != 0 else torch.zeros_like(marked)
    return one_hot, unannotated.to(log_p.dtype), count


def _linear_part(weights: Tensor, log_p: Tensor, reduction: str) -> Tensor:
    """sum_c W_c * -log p_c, per element for reduction "none", else summed."""
    if reduction == "none":
        return -(weights * log_p).sum(dim=1)
    return -_dot(weights, log_p)


class _ExclusiveCrossEntropyFn(torch.autograd.Function):
    """Exclusive cross-entropy over softmax logits (N, C, *) with a hand-written backward.

    The loss is sum_i phi_i(-log p_{i, t_i}) with t_i the element's class (0 if unannotated)
    and phi_i 0 (ignored, left out), the identity (annotated, kept unannotated) or Eq. 8's focal
    weighting. Its gradient in the logits is, per element, the softmax backward of
    -phi_i' * onehot(t_i), i.e. W_i - softmax_i * sum_c W_ic with W = phi' * onehot(t). The
    forward builds W (no one-hot scatter: one comparison per class column) and that gradient
    direction once; the backward only scales it. One log-softmax pass, no autograd graph inside.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, target: Tensor, annotated: Optional[Tensor], s: _Settings
    ) -> Tensor:
        ii = s.ignore_index
        classifier = logits.dim() == 2
        if classifier:
            # (N, C) as one (1, C, N) map: the softmax and its backward along an outer
            # dimension are several times faster than along a last dimension of a few classes
            logits = logits.t().contiguous().unsqueeze(0)
            target = target.unsqueeze(0)
            annotated = None if annotated is None else annotated.unsqueeze(0)
        log_p = torch.log_softmax(logits, dim=1)
        # W: at each element's class, 1 (annotated) or phi' (kept unannotated); 0 elsewhere
        shared = annotated is None and not 0 <= ii < log_p.shape[1] and abs(ii) < 2**24
        scratch = None
        if shared:  # annotated = target != 0: W's column 0 is the unannotated indicator
            weights, count, scratch = _one_hot_by_comparison(log_p, target, ii)
            unannotated = weights[:, 0]
        else:
            weights, unannotated, count = _one_hot_general(log_p, target, annotated, ii)
        keep = _keep_weights(log_p, logits, s, out=scratch)

        if s.focal:
            kept = unannotated.clone() if keep is None else keep.mul_(unannotated)
            if shared:
                weights[:, 0].zero_()
            w, a, b = _focal_terms(log_p, s.focal_gamma, kept)
            value = _linear_part(weights, log_p, s.reduction)
            alpha = s.focal_alpha
            if s.reduction == "none":
                value = value - (w * a).mul_(alpha)
            else:
                value = value - alpha * _dot(w, a)
            if b is None:
                weights[:, 0].add_(w, alpha=alpha)
            else:
                weights[:, 0].addcmul_(w, b, value=alpha)
        else:
            if shared:
                if keep is not None:
                    weights[:, 0].mul_(keep)
            else:
                weights[:, 0].add_(unannotated if keep is None else keep.mul_(unannotated))
            value = _linear_part(weights, log_p, s.reduction)

        ctx.per_element = s.reduction == "none"
        if ctx.needs_input_grad[0]:
            # d loss / d logits = -(W - softmax * sum_c W): computed once here (the inputs of
            # the softmax backward are freed with the forward), scaled in backward. The private
            # op is what autograd itself calls for log_softmax: one fused pass.
            direction = torch._log_softmax_backward_data(weights, log_p, 1, log_p.dtype)
            if s.reduction == "mean":
                direction.mul_(-1.0 / count.clamp_min(1))
            elif s.reduction == "sum":
                direction.neg_()
            ctx.save_for_backward(direction[0].t() if classifier else direction)
        if s.reduction == "mean":
            return value / count.clamp_min(1)
        return value[0] if classifier and s.reduction == "none" else value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], None, None, None]:
        (direction,) = ctx.saved_tensors
        if ctx.per_element:
            return direction * grad.neg().unsqueeze(1), None, None, None
        if grad.device.type == "cpu" and float(grad) == 1.0:
            # d loss itself (loss.backward() on this loss or a plain sum of losses): hand the
            # saved gradient over instead of copying it; autograd copies it if the graph is
            # retained and tracks in-place changes to it
            return direction, None, None, None
        return direction * grad, None, None, None


#: The keep-probability margin c of :func:`background_keep_prob`.
KEEP_MARGIN = 0.25


def background_keep_prob(annotated_fraction: float, margin: float = KEEP_MARGIN) -> float:
    """Probability s of keeping an unannotated term, from the annotated fraction f::

        s = min(1, c * f / (1 - f))        (s = 1 for f = 1; c = ``margin``)

    A true object element is annotated with probability f (target foreground, weight 1) and
    unannotated with probability 1 - f (tentative background, kept with probability s), so the
    cross-entropy optimum of its foreground probability is p* = f / (f + (1 - f) s) = 1 / (1 + c)
    whatever f: 0.8 for c = 0.25, above ECE's rho = 0.5, so that the exclusion of Eq. 7 takes over
    instead of the collapse to background that plain CE and ECE show at low fractions. With f
    over-estimated twice (f' = 2f), p* = 1 / (1 + 2c (1 - f) / (1 - 2f)) stays above 0.5 for
    f <= 0.3 at c = 0.25 (0.53 at f = 0.3, 0.64 at f = 0.1); under-estimated, s is smaller and
    p* larger. The keep probability is the reference code's background sampling (Panteli et al.,
    ICCV 2021), here matched to the fraction rather than scheduled.
    """
    f = check_fraction("annotated_fraction", annotated_fraction)
    c = check_range("margin", margin, 0.0, None, low_open=True)
    return 1.0 if f >= 1.0 else min(1.0, c * f / (1.0 - f))


def beyond_exclusion_budget(
    foreground: Tensor, unannotated: Tensor, rho: float, budget: float
) -> Tensor:
    """The unannotated elements that Eq. 7 would exclude beyond a budget: kept as background.

    Eq. 7 (Panteli et al., ICCV 2021) drops the background term of every unannotated element
    whose foreground confidence reaches rho. Nothing bounds how many: once most unannotated
    elements pass rho, none is pulled back to the background (the all-foreground collapse seen
    in detection). The budget bounds the excluded share by the share of true objects expected
    among the unannotated elements (e.g. pi_u of :func:`sparse_ext.losses.nnpu.unlabeled_prior`):
    of the elements passing rho only the k = ceil(budget * #unannotated) most confident stay
    excluded; the others are returned, to be kept as annotated background. Not in the paper.

    Args:
        foreground: the foreground confidence (1 - p(background)) of each element, any shape.
        unannotated: bool mask shaped like ``foreground``, the tentative background.
        rho: the exclusivity threshold (elements with confidence >= rho are excluded).
        budget: the largest excluded share of the unannotated elements, in [0, 1].

    Returns:
        A bool mask shaped like ``foreground``: unannotated, confidence >= rho, and not among the
        k most confident of those.
    """
    budget = check_unit("budget", budget)
    if foreground.shape != unannotated.shape:
        raise ValueError(
            f"foreground {tuple(foreground.shape)} and unannotated "
            f"{tuple(unannotated.shape)} must have the same shape"
        )
    with torch.no_grad():
        candidate = unannotated.bool() & (foreground >= rho)
        k = math.ceil(budget * int(unannotated.sum()))
        if int(candidate.sum()) <= k:
            return torch.zeros_like(candidate)
        scores = foreground.float().masked_fill(~candidate, -math.inf).flatten()
        beyond = candidate.clone().flatten()
        beyond[scores.topk(k).indices] = False
        return beyond.view_as(candidate)


def budget_among_excludable(budget: float, unannotated: int, kept: int) -> float:
    """The exclusion budget as a share of the unannotated elements that may be excluded, when
    ``kept`` of the ``unannotated`` ones keep their background term whatever their confidence
    (e.g. proposals on an annotated object): budget * unannotated / (unannotated - kept), at most
    1, so that :func:`beyond_exclusion_budget` allows the same number of exclusions; 0 when
    nothing may be excluded. The budget estimates the share of objects among all unannotated
    elements, and the kept ones hold none. Not in Panteli et al. (ICCV 2021)."""
    budget = check_unit("budget", budget)
    if not 0 <= kept <= unannotated:
        raise ValueError(f"kept must be in [0, unannotated={unannotated}], got {kept}")
    free = unannotated - kept
    return min(1.0, budget * unannotated / free) if free else 0.0


def _checked_budget(budget: float, confidence: str) -> float:
    """``budget`` validated in [0, 1]; the bound ranks the foreground confidence."""
    budget = check_unit("exclusion_budget", budget)
    if confidence != "foreground":
        raise ValueError(
            f"exclusion_budget ranks the foreground confidence: it needs confidence "
            f"'foreground', got {confidence!r}"
        )
    return budget


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
    sample_prob: Optional[float] = None,
    annotated_fraction: Optional[float] = None,
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
        rho: exclusivity threshold, in [0, 1] with "foreground"/"margin" (``rho = 1`` keeps
            every term: plain cross-entropy; ``rho = 0`` drops every unannotated term), >= 0
            (logit units) with "logit_margin".
        use_sigmoid: binary sigmoid logits instead of a softmax over C classes.
        confidence: "foreground": kept where 1 - p(background) < rho (paper Eq. 7; with sigmoid,
            the foreground probability); "margin": top-1 minus top-2 class probability < rho;
            "logit_margin": top-1 minus top-2 raw logit <= rho (note the <=, rho in logit
            units), which reproduces ``ece_loss.ExclusiveCrossEntropyLoss`` (ece-loss 1.0.0)
            exactly when its background sampling is off. With sigmoid logits x, the two classes'
            logits are (0, x): margin |2 sigmoid(x) - 1|, logit margin |x|.
        focal_alpha, focal_gamma: focal reweighting of the unannotated terms (Eq. 8), alpha in
            [0, 1], gamma >= 0; on when either is given, a missing one defaults to alpha = 1,
            gamma = 0.
        sample_prob: probability in [0, 1] of keeping each unannotated term; None: 1, or
            :func:`background_keep_prob` of ``annotated_fraction`` when that is given.
        annotated_fraction: the share f in (0, 1] of the objects that carry a label; sets the
            keep probability (:func:`background_keep_prob`) where ``sample_prob`` is None.
        ignore_index: target value of elements left out entirely.
        reduction: "mean" (sum over the number of non-ignored elements, so ``rho=1`` equals
            ``F.cross_entropy(..., ignore_index=...)``; 0 when all are ignored), "sum" or
            "none" (per element, shape of ``target``, 0 where ignored or dropped).

    Returns:
        The loss, float32 for float16/bfloat16 logits (computed in float32), else the logits'
        dtype.

    Raises:
        ValueError: mismatched shapes, non-floating logits, non-integer target, target values
            outside the classes, unknown confidence or reduction, a setting outside its range
            (the message names it).
    """
    if sample_prob is None:
        sample_prob = (
            1.0 if annotated_fraction is None else background_keep_prob(annotated_fraction)
        )
    s = _check_settings(
        rho, confidence, focal_alpha, focal_gamma, sample_prob, ignore_index, reduction
    )
    logits, target = _check_inputs(logits, target, use_sigmoid)
    if annotated is not None:
        annotated = _check_annotated(annotated, target)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # as autocast does for cross-entropy: no fp16 overflow
    if use_sigmoid:
        _check_binary_target(target, s.ignore_index, annotated)
        # sigmoid(x) is the softmax over the two logits (0, x): the same maths, one code path
        logits = torch.stack((torch.zeros_like(logits), logits), dim=1)

    if s.plain:  # every term kept: exactly F.cross_entropy
        class_target = target
        if annotated is not None:  # unannotated elements are background
            class_target = target.masked_fill(~(annotated | (target == s.ignore_index)), 0)
        ce = _cross_entropy(logits, class_target, s.ignore_index, s.reduction)
        if s.reduction != "mean":
            return ce
        count = torch.count_nonzero(target != s.ignore_index)
        return torch.where(count > 0, ce, torch.zeros_like(ce))  # all ignored: 0, not NaN
    return _ExclusiveCrossEntropyFn.apply(logits, target, annotated, s)


# rho from which no unannotated term is excluded in practice: the model's scores are then those
# of cross-entropy with background sampling, which LabelFrequencyEstimate reads.
_NO_EXCLUSION = 0.99


def _foreground_probability(logits: Tensor, shape: torch.Size, use_sigmoid: bool) -> Tensor:
    """1 - p(background) per element, shaped ``shape`` (the target's), in float32, no grad."""
    with torch.no_grad():
        if use_sigmoid:
            return torch.sigmoid(logits.reshape(shape).float())
        return 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]


def _foreground_scores(
    logits: Tensor, target: Tensor, annotated: Optional[Tensor], use_sigmoid: bool, ignore: int
) -> tuple[Tensor, Tensor]:
    """The foreground probability (1 - p(background)) of the non-ignored elements, and where
    they are annotated foreground."""
    valid = target != ignore
    labelled = (target != 0) & valid
    if annotated is not None:
        labelled &= annotated.bool()
    scores = _foreground_probability(logits, target.shape, use_sigmoid)
    return scores[valid], labelled[valid]


class ExclusiveCrossEntropy(nn.Module):
    """Exclusive cross-entropy (Panteli et al., ICCV 2021, Eq. 7/8) with rho on a schedule.

    ``set_progress(p)`` (p = fraction of training done, in [0, 1]) moves rho along
    ``schedule`` and the keep probability along ``sampling_schedule``; :attr:`rho` and
    :attr:`sample_prob` give the current values. See :func:`exclusive_cross_entropy`.

    Args:
        schedule: rho over training progress; anything
            :func:`sparse_ext.losses.schedules.build_schedule` accepts (a schedule, a number, a
            name such as "constant" or "paper_table2", a dict with a "type"). Default: constant
            0.5. Its values must lie in rho's range (see :func:`exclusive_cross_entropy`),
            checked here on its start/end and on a grid of progress values.
        sampling_schedule: probability in [0, 1] of keeping an unannotated term over training
            progress (e.g. "reference_sampling"); None keeps all, or, once an annotated fraction
            is known, :func:`background_keep_prob` of it.
        annotated_fraction: the share f in (0, 1] of the objects that carry a label (also
            :meth:`set_annotated_fraction`); used only where ``sampling_schedule`` is None.
            While :attr:`fraction_check_pending` (set by a training loop that will call
            :meth:`check_annotated_fraction`, e.g. MMSeg's ``SparseLossAnnealingHook``), f is
            capped at :data:`~sparse_ext.losses.fraction.UNCHECKED_FRACTION_CEILING`.
        exclusion_budget: the largest share of the unannotated elements that rho may exclude
            per call, in [0, 1] (:func:`beyond_exclusion_budget`; the most confident ones stay
            excluded); None: no bound, the paper's Eq. 7. Needs ``confidence="foreground"``.
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
        annotated_fraction: Optional[float] = None,
        exclusion_budget: Optional[float] = None,
        ignore_index: int = 255,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if exclusion_budget is not None:
            exclusion_budget = _checked_budget(exclusion_budget, confidence)
        self.exclusion_budget = exclusion_budget
        self.annotated_fraction: Optional[float] = None
        if annotated_fraction is not None:
            self.set_annotated_fraction(annotated_fraction)
        check_choice("confidence", confidence, CONFIDENCE_MODES)
        check_choice("reduction", reduction, REDUCTIONS)
        check_focal(focal_alpha, focal_gamma)
        self.schedule = build_schedule(schedule)
        check_schedule("schedule (rho)", self.schedule, *rho_range(confidence))
        self.sampling_schedule = None
        if sampling_schedule is not None:
            self.sampling_schedule = build_schedule(sampling_schedule)
            check_schedule("sampling_schedule (keep probability)", self.sampling_schedule, 0, 1)
        self.use_sigmoid = bool(use_sigmoid)
        self.confidence = confidence
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.progress = 0.0
        self.fraction_estimate = LabelFrequencyEstimate()
        self.checked_fraction: Optional[float] = None
        self.checked_estimate: Optional[float] = None
        self.fraction_check_pending = False

    def set_progress(self, p: float) -> None:
        """Set the fraction of training done (clamped to [0, 1])."""
        self.progress = _clamp01(p)

    def set_annotated_fraction(self, annotated_fraction: float) -> None:
        """Set the share f in (0, 1] of the objects that carry a label."""
        self.annotated_fraction = check_fraction("annotated_fraction", annotated_fraction)

    @property
    def estimating(self) -> bool:
        """Whether the forward feeds :attr:`fraction_estimate`: from
        :data:`~sparse_ext.losses.fraction.FRACTION_ESTIMATE_START` to ``FRACTION_ESTIMATE_END``
        of training, while rho excludes nothing (so that unannotated objects are scored like the
        annotated ones)."""
        return (
            FRACTION_ESTIMATE_START <= self.progress < FRACTION_ESTIMATE_END
            and self.rho >= _NO_EXCLUSION
        )

    def check_annotated_fraction(
        self, estimate: Optional[float], tolerance: float = FRACTION_TOLERANCE
    ) -> float:
        """Compare the annotated fraction with ``estimate`` (e.g. :attr:`fraction_estimate`'s
        value) and train on with :func:`~sparse_ext.losses.fraction.checked_fraction` of the
        two (kept in :attr:`checked_fraction`, the estimate in :attr:`checked_estimate`); returns
        it. Only the keep probability derived from f changes (not an explicit
        ``sampling_schedule``)."""
        if self.annotated_fraction is None:
            raise ValueError("check_annotated_fraction: no annotated_fraction set")
        self.checked_fraction = checked_fraction(self.annotated_fraction, estimate, tolerance)
        self.checked_estimate = estimate
        self.fraction_check_pending = False
        return self.checked_fraction

    @property
    def rho(self) -> float:
        """The exclusivity threshold at the current progress."""
        return float(self.schedule(self.progress))

    @property
    def sample_prob(self) -> float:
        """The probability of keeping an unannotated term at the current progress."""
        if self.sampling_schedule is not None:
            return float(self.sampling_schedule(self.progress))
        if self.checked_fraction is not None:
            return background_keep_prob(self.checked_fraction)
        if self.annotated_fraction is not None:
            f = self.annotated_fraction
            if self.fraction_check_pending:
                f = min(f, UNCHECKED_FRACTION_CEILING)
            return background_keep_prob(f)
        return 1.0

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        annotated: Optional[Tensor] = None,
        *,
        ignore_index: Optional[int] = None,
        reduction: Optional[str] = None,
        exclusion_budget: Optional[float] = None,
    ) -> Tensor:
        """The loss at the current progress; ``ignore_index``, ``reduction`` and
        ``exclusion_budget`` (e.g. a per-batch estimate of pi_u) override the module's."""
        ignore = self.ignore_index if ignore_index is None else ignore_index
        budget = self.exclusion_budget
        if exclusion_budget is not None:
            budget = _checked_budget(exclusion_budget, self.confidence)
        if budget is not None and self.rho < 1.0:
            target, annotated = self._within_budget(logits, target, annotated, ignore, budget)
        loss = exclusive_cross_entropy(
            logits,
            target,
            annotated,
            self.rho,
            use_sigmoid=self.use_sigmoid,
            confidence=self.confidence,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            sample_prob=self.sample_prob,
            ignore_index=ignore,
            reduction=self.reduction if reduction is None else reduction,
        )
        if self.estimating and torch.is_grad_enabled():
            self.fraction_estimate.update(
                *_foreground_scores(logits, target, annotated, self.use_sigmoid, ignore)
            )
        return loss

    def _within_budget(
        self,
        logits: Tensor,
        target: Tensor,
        annotated: Optional[Tensor],
        ignore: int,
        budget: float,
    ) -> tuple[Tensor, Tensor]:
        """(target, annotated) with the exclusions beyond ``budget`` turned into annotated
        background (:func:`beyond_exclusion_budget`)."""
        logits, checked = _check_inputs(logits, target, self.use_sigmoid)
        labelled = checked != 0 if annotated is None else _check_annotated(annotated, checked)
        unannotated = ~labelled & (checked != ignore)
        foreground = _foreground_probability(logits, checked.shape, self.use_sigmoid)
        beyond = beyond_exclusion_budget(foreground, unannotated, self.rho, budget)
        return checked.masked_fill(beyond, 0), labelled | beyond

    def extra_repr(self) -> str:
        parts = [f"schedule={self.schedule!r}"]
        if self.exclusion_budget is not None:
            parts.append(f"exclusion_budget={self.exclusion_budget:g}")
        if self.sampling_schedule is not None:
            parts.append(f"sampling_schedule={self.sampling_schedule!r}")
        elif self.annotated_fraction is not None:
            parts.append(f"annotated_fraction={self.annotated_fraction:g}")
            if self.checked_fraction not in (None, self.annotated_fraction):
                parts.append(f"checked_fraction={self.checked_fraction:g}")
        parts.append(f"confidence={self.confidence!r}")
        if self.use_sigmoid:
            parts.append("use_sigmoid=True")
        if self.focal_alpha is not None or self.focal_gamma is not None:
            parts.append(f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}")
        parts.append(f"ignore_index={self.ignore_index}, reduction={self.reduction!r}")
        parts.append(f"progress={self.progress:.4g}")
        return ", ".join(parts)
