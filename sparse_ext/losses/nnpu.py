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
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sparse_ext.losses._validate import check_choice, check_nonnegative, check_open_unit, check_unit

__all__ = ["NonNegativePULoss", "check_nnpu_settings", "nnpu_loss"]

MODES = ("detection", "classic")
NONNEGATIVE = ("clamp", "kiryo", "none")


class _Settings(NamedTuple):
    prior: float
    mode: str
    nonnegative: str
    beta: float
    gamma: float


def check_nnpu_settings(
    prior: Any, mode: str, nonnegative: str, beta: Any, gamma: Any
) -> _Settings:
    """The settings validated: prior in (0, 1); Kiryo et al.'s beta >= 0 and gamma in [0, 1]
    (Algorithm 1); a ValueError names the first one out of range."""
    return _Settings(
        prior=check_open_unit("prior", prior),
        mode=check_choice("mode", mode, MODES),
        nonnegative=check_choice("nonnegative", nonnegative, NONNEGATIVE),
        beta=check_nonnegative("beta", beta),
        gamma=check_unit("gamma", gamma),
    )


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
    a sum of log-probabilities: sum_P log p(y) = <Y, log p> - <U, log p_bg>, and the log p_bg
    sums over all, positive and unlabeled samples. The gradient in log p is therefore
    G = a * Y plus a column b0 + b1 * U at the background, with a, b0, b1 set by the
    non-negative correction; the logits' gradient is the softmax backward of G, computed once
    in the forward. Few small ops, no autograd graph: what costs at ROI size.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, labels: Tensor, bg: int, s: _Settings
    ) -> Tensor:
        n, c = logits.shape
        # (C, N) layout: the softmax and its backward run along the outer dimension, several
        # times faster than along a last dimension of 2-3 classes; rows are contiguous
        log_p = torch.log_softmax(logits.t().contiguous(), dim=0)
        one_hot = torch.empty_like(log_p)
        torch.eq(_class_column(c, labels.device), labels.unsqueeze(0), out=one_hot)
        unlabeled = one_hot[bg]
        log_p_bg = log_p[bg]
        n_unl = unlabeled.sum()
        pi_over_np = s.prior / (n - n_unl).clamp_min(1.0)
        sum_bg = log_p_bg.sum()  # over all samples
        sum_bg_unl = torch.dot(unlabeled, log_p_bg)
        sum_bg_pos = sum_bg - sum_bg_unl
        positive_risk = pi_over_np * (sum_bg_unl - torch.dot(one_hot.view(-1), log_p.view(-1)))
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
        beta, gamma: Kiryo et al.'s beta >= 0 and gamma in [0, 1] (Algorithm 1).

    Normalisers are the real counts: without positives the positive terms vanish and E_x runs over
    the unlabeled samples; without samples the loss is a zero that keeps a ``grad_fn``. Half
    precision logits are computed in float32; the result is float32 (float64 for float64 input).

    Raises:
        ValueError: a setting outside its range (the message names it), mismatched shapes,
            labels outside the classes.
    """
    settings = check_nnpu_settings(prior, mode, nonnegative, beta, gamma)
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
    ) -> None:
        super().__init__()
        settings = check_nnpu_settings(prior, mode, nonnegative, beta, gamma)
        self.prior = settings.prior
        self.background_index = background_index
        self.mode = settings.mode
        self.nonnegative = settings.nonnegative
        self.beta = settings.beta
        self.gamma = settings.gamma

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
