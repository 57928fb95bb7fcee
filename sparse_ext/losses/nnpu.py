"""Non-negative positive-unlabeled (nnPU) classification risk for detection.

Zhao, Pang, Liu, Ye, "Positive-unlabeled learning for cell detection in histopathology images with
incomplete annotations", MICCAI 2021, Eq. 9-12; the non-negative correction "kiryo" follows
Kiryo, Niu, du Plessis, Sugiyama, "Positive-unlabeled learning with non-negative risk estimator",
NeurIPS 2017 (Algorithm 1).

With H(c, 0) = -log p(background) and H(c, 1) the cross-entropy towards a sample's own class,

    R = pi / Np * sum_P H(c_p, 1) + max(0, E_x[H(c, 0)] - pi / Np * sum_P H(c_p, 0))

where E_x[H(c, 0)] is estimated over unlabeled AND positive samples in mode "detection" (Eq. 10-12:
the unlabeled proposals of a detector are not a sample of the whole data, the positives must be
added back) and over the unlabeled samples only in mode "classic" (classification PU).

The prior pi (``prior_mode``):

- ``"fixed"``: pi is the ``prior`` argument, the share of true objects among ALL sampled samples
  (the paper: 0.04 with 256 ROIs per image, picked by validation recall from 0.02:0.01:0.06). When
  pi < Np / N, the negative risk keeps (1/N - pi/Np) * sum_P H(c_p, 0) > 0: it pulls the labelled
  positives toward the background.
- ``"sampled"``: ``prior`` is pi_u, the share of true objects among the sampled UNLABELED
  samples, and each batch uses

      pi_b = Np / N + (Nu / N) * pi_u                                             (sampled prior)

  (the Np labelled samples are all objects, a share pi_u of the Nu unlabeled ones). Put into
  Eq. 12 this gives the identity

      R = Np / N * mean_P H(c_p, 1)
          + Nu / N * [pi_u mean_P H(c_p, 1) + max(0, mean_U H(c, 0) - pi_u mean_P H(c_p, 0))],

  cross-entropy on the labelled samples plus Nu/N times the classic nnPU risk of Kiryo et al.
  with prior pi_u on the unlabeled ones: the labelled samples are never pulled toward the
  background, and pi_u = 0 is plain cross-entropy. :func:`unlabeled_prior` derives pi_u from the
  annotated fraction.

``surrogate``: H is the log loss -log p (Eq. 9, unbounded) or, with ``"sigmoid"``, the bounded
1 - p, which for sigmoid logits x is Kiryo et al.'s sigmoid loss sigmoid(-y x) (their Sec. 5; the
non-negative correction is derived for a bounded loss).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sparse_ext.losses._validate import (
    check_choice,
    check_nonnegative,
    check_open_unit,
    check_range,
    check_unit,
)

__all__ = [
    "NonNegativePULoss",
    "check_nnpu_settings",
    "estimated_unlabeled_prior",
    "nnpu_loss",
    "sampled_prior",
    "unlabeled_prior",
]

MODES = ("detection", "classic")
NONNEGATIVE = ("clamp", "kiryo", "none")
PRIOR_MODES = ("fixed", "sampled")
SURROGATES = ("log", "sigmoid")


class _Settings(NamedTuple):
    prior: float
    mode: str
    nonnegative: str
    beta: float
    gamma: float
    prior_mode: str = "fixed"
    surrogate: str = "log"


def check_nnpu_settings(
    prior: Any,
    mode: str,
    nonnegative: str,
    beta: Any,
    gamma: Any,
    prior_mode: str = "fixed",
    surrogate: str = "log",
) -> _Settings:
    """The settings validated: prior in (0, 1) (``prior_mode="fixed"``) or pi_u in [0, 1)
    (``"sampled"``, which needs ``mode="detection"``); Kiryo et al.'s beta >= 0 and gamma in
    [0, 1] (Algorithm 1); ``surrogate`` "log" or "sigmoid". A ValueError names the first one out
    of range."""
    prior_mode = check_choice("prior_mode", prior_mode, PRIOR_MODES)
    mode = check_choice("mode", mode, MODES)
    if prior_mode == "sampled":
        prior = check_range("prior", prior, 0.0, 1.0, high_open=True)
        if mode != "detection":
            raise ValueError(
                "prior_mode 'sampled' needs mode 'detection' (pi_b counts the labelled samples "
                f"in E_x, Eq. 10-12), got mode {mode!r}"
            )
    else:
        prior = check_open_unit("prior", prior)
    return _Settings(
        prior=prior,
        mode=mode,
        nonnegative=check_choice("nonnegative", nonnegative, NONNEGATIVE),
        beta=check_nonnegative("beta", beta),
        gamma=check_unit("gamma", gamma),
        prior_mode=prior_mode,
        surrogate=check_choice("surrogate", surrogate, SURROGATES),
    )


def unlabeled_prior(annotated_fraction: float, object_share: float) -> float:
    """pi_u, the share of true objects among the unlabeled candidates, from the annotated
    fraction f and the share q of true objects among all candidates (proposals or anchors):

        pi_u = (1 - f) q / ((1 - f) q + (1 - q)) = (1 - f) q / (1 - f q)

    (Bayes' rule with Pr(unlabeled | object) = 1 - f and Pr(unlabeled | not object) = 1: each
    object, and the candidates on it, is annotated with probability f). The samplers of Faster
    R-CNN draw the unlabeled samples uniformly from the unlabeled candidates, so pi_u is also
    their share among the sampled unlabeled samples, the ``prior`` of ``prior_mode="sampled"``.
    f = 1 gives 0 (every object labelled: the loss is cross-entropy), f -> 0 gives q.

    Args:
        annotated_fraction: f in (0, 1], the share of the objects that carry an annotation.
        object_share: q in [0, 1), the share of candidates that lie on a true object (IoU at the
            sampler's foreground threshold) when every object is annotated.
    """
    f = check_range("annotated_fraction", annotated_fraction, 0.0, 1.0, low_open=True)
    q = check_range("object_share", object_share, 0.0, 1.0, high_open=True)
    return (1.0 - f) * q / (1.0 - f * q)


def estimated_unlabeled_prior(
    on_annotated: int, unlabeled: int, annotated_fraction: float
) -> float:
    """pi_u estimated from the candidates themselves: the share of true objects among the
    ``unlabeled`` candidates, given the ``on_annotated`` candidates that lie on an annotated
    object (IoU at the sampler's foreground threshold; boxes appended from the annotations
    themselves not counted) and the annotated fraction f:

        pi_u = min(1, on_annotated * (1 - f) / (f * unlabeled))

    Each object is annotated with probability f, so the unannotated objects number (1 - f) / f
    per annotated one, and a proposal generator that cannot tell them apart puts as many
    candidates on each. Unlike :func:`unlabeled_prior` with a fixed object share q, the estimate
    follows the proposals as the RPN learns to place them on objects. Not in Zhao, Pang et al.
    (MICCAI 2021), whose pi is a constant. 0 when there is no unlabeled candidate.

    Args:
        on_annotated: candidates on an annotated object, >= 0.
        unlabeled: candidates on no annotated object, >= 0.
        annotated_fraction: f in (0, 1].
    """
    f = check_range("annotated_fraction", annotated_fraction, 0.0, 1.0, low_open=True)
    for name, n in (("on_annotated", on_annotated), ("unlabeled", unlabeled)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if unlabeled == 0:
        return 0.0
    return min(1.0, on_annotated * (1.0 - f) / (f * unlabeled))


def sampled_prior(num_positive: int, num_unlabeled: int, unlabeled_prior: float) -> float:
    """pi_b = Np / N + (Nu / N) * pi_u for a batch of Np labelled and Nu unlabeled samples
    (N = Np + Nu; 0 for an empty batch): the class prior that ``prior_mode="sampled"`` puts into
    Eq. 12 (see the module docstring)."""
    pi_u = check_range("unlabeled_prior", unlabeled_prior, 0.0, 1.0, high_open=True)
    n = num_positive + num_unlabeled
    return (num_positive + num_unlabeled * pi_u) / n if n > 0 else 0.0


def _as_softmax_logits(
    logits: Tensor, labels: Tensor, background_index: Optional[int]
) -> tuple[Tensor, Tensor, int]:
    """(logits (N, C) in float32 or float64, labels (N,) int64, background column), validated.

    Sigmoid logits x become the softmax logits (0, x) with the background in column 0: then
    -log p(background) = softplus(x) and -log p(positive) = softplus(-x), as in Eq. 9.
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    sigmoid = logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1)
    if sigmoid:
        x = logits.reshape(-1)
        if labels.reshape(-1).shape != x.shape:
            raise ValueError(
                f"labels {tuple(labels.shape)} do not match sigmoid logits {tuple(logits.shape)}"
            )
        labels = labels.reshape(-1)
        logits = torch.stack((torch.zeros_like(x), x), dim=1)
        bg = 0
    else:
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
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0 or high >= logits.shape[1]:
            if sigmoid:
                raise ValueError("with sigmoid logits labels must be 1 (positive) or 0 (unlabeled)")
            raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}], got [{low}, {high}]")
    return logits, labels.long(), bg


@functools.lru_cache(maxsize=16)
def _class_column(num_classes: int, device: torch.device) -> Tensor:
    """(C, 1) class indices 0..C-1 (cached: a new tensor costs more than the comparison)."""
    return torch.arange(num_classes, device=device).unsqueeze(1)


class _NonNegativePUFn(torch.autograd.Function):
    """The PU risk from one log-softmax, with a hand-written backward.

    With Y the one-hot labels and U = Y[:, bg] the unlabeled samples, every term of the risk is
    a sum of q = -H: q = log p (log loss) or p - 1 (sigmoid surrogate), so
    sum_P q(y) = <Y, q> - <U, q_bg>, and the q_bg sums over all, positive and unlabeled
    samples. The gradient in q is therefore G = a * Y plus a column b0 + b1 * U at the
    background, with a, b0, b1 set by the non-negative correction; the gradient in log p is G
    (log) or G * p (sigmoid), and the logits' gradient its softmax backward, computed once in
    the forward. Few small ops, no autograd graph: what costs at ROI size.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, labels: Tensor, bg: int, s: _Settings
    ) -> Tensor:
        n, c = logits.shape
        # (C, N) layout: the softmax and its backward run along the outer dimension, several
        # times faster than along a last dimension of 2-3 classes; rows are contiguous
        log_p = torch.log_softmax(logits.t().contiguous(), dim=0)
        # q = -H: log p, or p - 1 for the bounded sigmoid surrogate H = 1 - p
        q = log_p if s.surrogate == "log" else torch.expm1(log_p)
        one_hot = torch.empty_like(log_p)
        torch.eq(_class_column(c, labels.device), labels.unsqueeze(0), out=one_hot)
        unlabeled = one_hot[bg]
        log_p_bg = q[bg]
        n_unl = unlabeled.sum()
        n_pos = n - n_unl
        if s.prior_mode == "sampled":  # pi_b = Np/N + (Nu/N) pi_u, see sampled_prior
            prior = (n_pos + n_unl * s.prior) / max(n, 1)
        else:
            prior = s.prior
        pi_over_np = prior / n_pos.clamp_min(1.0)
        sum_bg = log_p_bg.sum()  # over all samples
        sum_bg_unl = torch.dot(unlabeled, log_p_bg)
        sum_bg_pos = sum_bg - sum_bg_unl
        positive_risk = pi_over_np * (sum_bg_unl - torch.dot(one_hot.view(-1), q.view(-1)))
        if s.mode == "detection":  # E_x over positive and unlabeled samples (Eq. 10-12)
            inv_n = 1.0 / max(n, 1)
            negative_risk = pi_over_np * sum_bg_pos - inv_n * sum_bg
            # d negative_risk / d log p_bg = -1/n + pi/Np * [positive]
            b0, b1 = pi_over_np - inv_n, -pi_over_np
        else:  # over the unlabeled samples only
            inv_nu = 1.0 / n_unl.clamp_min(1.0)
            negative_risk = pi_over_np * sum_bg_pos - inv_nu * sum_bg_unl
            b0, b1 = pi_over_np, -(pi_over_np + inv_nu)

        # value, and the weights kp, kn of the gradients of the positive and negative risks
        if s.nonnegative == "none":
            value, kp, kn = positive_risk + negative_risk, 1.0, 1.0
        elif s.nonnegative == "clamp":
            value = positive_risk + negative_risk.clamp_min(0.0)
            kp, kn = 1.0, (negative_risk >= 0).to(log_p.dtype)  # as clamp_min's gradient
        else:  # kiryo: below -beta, value positive_risk - beta, gradient of -gamma * negative
            defend = negative_risk < -s.beta
            value = torch.where(defend, positive_risk - s.beta, positive_risk + negative_risk)
            defend = defend.to(log_p.dtype)
            kp, kn = 1.0 - defend, 1.0 - (1.0 + s.gamma) * defend  # 1, 1 or 0, -gamma

        if ctx.needs_input_grad[0]:
            grad_log_p = torch.mul(one_hot, -pi_over_np * kp)  # positive risk, all rows
            # the background row: its positive-risk part cancels on unlabeled samples
            torch.mul(unlabeled, kn * b1, out=grad_log_p[bg]).add_(kn * b0)
            if s.surrogate == "sigmoid":  # d(p - 1)/d log p = p
                grad_log_p.mul_(torch.exp(log_p))
            direction = torch._log_softmax_backward_data(grad_log_p, log_p, 0, log_p.dtype)
            ctx.save_for_backward(direction.t())  # back to (N, C), a view
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], None, None, None]:
        (direction,) = ctx.saved_tensors
        if grad.device.type == "cpu" and float(grad) == 1.0:
            # hand the saved gradient over; autograd copies it if the graph is retained
            return direction, None, None, None
        return direction * grad, None, None, None


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
    prior_mode: str = "fixed",
    surrogate: str = "log",
) -> Tensor:
    """PU risk of Zhao et al. Eq. 10-12 (see the module docstring).

    Args:
        logits: (N, K+1) softmax logits with the background/unlabeled class at
            ``background_index`` (default: the last column, as Detectron2 and MMDet), or (N,) /
            (N, 1) sigmoid logits.
        labels: (N,) class indices; samples labelled background (0 with sigmoid logits) are the
            unlabeled set, all others the positives.
        prior: with ``prior_mode="fixed"`` the class prior pi of the positives among all
            samples, in (0, 1); with ``"sampled"`` pi_u, their share among the unlabeled
            samples, in [0, 1) (pi_b = Np/N + (Nu/N) pi_u per call; :func:`unlabeled_prior`).
        mode: ``"detection"`` (E_x over unlabeled and positive samples) or ``"classic"``.
        nonnegative: ``"clamp"`` (max(0, negative risk)), ``"kiryo"`` (Kiryo et al.: when the
            negative risk is below -beta the value is positive risk - beta and the gradient that of
            -gamma * negative risk) or ``"none"`` (unbiased PU).
        beta, gamma: Kiryo et al.'s beta >= 0 and gamma in [0, 1] (Algorithm 1).
        prior_mode: ``"fixed"`` (the paper) or ``"sampled"`` (needs ``mode="detection"``).
        surrogate: ``"log"`` (H = -log p, Eq. 9) or ``"sigmoid"`` (H = 1 - p, bounded in
            [0, 1]: Kiryo et al.'s sigmoid loss for sigmoid logits).

    Normalisers are the real counts: without positives the positive terms vanish and E_x runs over
    the unlabeled samples; without samples the loss is a zero that keeps a ``grad_fn``. Half
    precision logits are computed in float32; the result is float32 (float64 for float64 input).

    Raises:
        ValueError: a setting outside its range (the message names it), mismatched shapes,
            labels outside the classes.
    """
    settings = check_nnpu_settings(prior, mode, nonnegative, beta, gamma, prior_mode, surrogate)
    logits, labels, bg = _as_softmax_logits(logits, labels, background_index)
    return _NonNegativePUFn.apply(logits, labels, bg, settings)


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
        prior_mode: str = "fixed",
        surrogate: str = "log",
    ) -> None:
        super().__init__()
        settings = check_nnpu_settings(prior, mode, nonnegative, beta, gamma, prior_mode, surrogate)
        self.prior = settings.prior
        self.background_index = background_index
        self.mode = settings.mode
        self.nonnegative = settings.nonnegative
        self.beta = settings.beta
        self.gamma = settings.gamma
        self.prior_mode = settings.prior_mode
        self.surrogate = settings.surrogate

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
            prior_mode=self.prior_mode,
            surrogate=self.surrogate,
        )

    def extra_repr(self) -> str:
        return (
            f"prior={self.prior}, mode={self.mode!r}, nonnegative={self.nonnegative!r}, "
            f"prior_mode={self.prior_mode!r}, surrogate={self.surrogate!r}"
        )
