"""Label super-resolution (LSR) losses: pixel masks from block-level labels.

Zhao, Hou et al., "Label super resolution with inter-instance loss", arXiv 2019, Eq. 1-11 and
Appendix A; Malkin et al., "Label super-resolution networks", ICLR 2019.
Every image block k carries a low-resolution label z; for each high-resolution class l the table
gives eta[l, z] and rho[l, z], the mean and standard deviation of the fraction of class-l pixels in
blocks with label z (rho is scaled by alpha everywhere below, Appendix A, Eq. 17). With p the
softmax of the network over the valid pixels X_k of block k,

    mu_k = mean_{X_k} p,   v_k = sum_{X_k} p (1 - p) / |X_k|   (Eq. 3 as printed),
    sigma2_k = v_k / |X_k| = sum_{X_k} p (1 - p) / |X_k|^2       (Appendix Eq. 14/16).

Three distances match these statistics to the table (``distance``):

- ``"reference"`` (the default): the interval distance of the reference LSR code (Malkin et al.,
  ICLR 2019, as in calebrob6/land-cover's ``sr_loss``, Keras and PyTorch ports),

      D = relu(|mu - eta| - rho)^2 / (sigma2 + rho^2 + 1e-6) + log(v + floor)

  with floor = ``variance_floor`` (0.03 there). A mean inside eta +- rho costs nothing; outside,
  the miss is scaled by the table's and the prediction's spread (no sigma2 factor in the
  numerator). The log term is the pixels' Bernoulli variance in Eq. 3's form: it rewards
  confident pixels and cannot stand in for a missed mean, so a collapsed prediction pays for
  every mean it misses. land-cover divides by |X|^2 in both places; here the log reads v and the
  denominator sigma2 = v / |X| (Eq. 14), the split reported for Zhao, Hou et al.'s training code
  (issue 13; that code was not available to check).
- ``"eq5"``: Eq. 5 / Eq. 9 as published, with the floor inside the log,

      D = 0.5 * sigma2 * (eta - mu)^2 / (rho^2 + sigma2)^2 + 0.5 * log(2 pi (sigma2 + floor)).

  Kept to reproduce the paper's formula; it does not train. Its minimum is collapsed: at
  sigma2 = 0 the mean term vanishes whatever mu is and the log term is smallest, so a network
  that predicts one saturated map for every block (sigma2 -> 0; in the inter mode: the same mean
  for every block of a label) reaches the global minimum 0.5 * log(2 pi floor) without matching
  any mean. Every Eq. 5/9 run of the HeLa LSR benchmark ended there (Dice 0).
- ``"gaussian"``: -log N(eta; mu, rho^2 + sigma2), the negative log-likelihood of the table's mean
  under the predicted count distribution widened by the table's spread (floor in the log),

      D = 0.5 * (eta - mu)^2 / (rho^2 + sigma2) + 0.5 * log(2 pi (rho^2 + sigma2 + floor)).

  It has no collapsed minimum, but nothing in it rewards confident pixels: a blurry map with
  p = eta in every pixel matches every mean and is preferred to the true mask (it argmaxes to
  background wherever eta < 0.5). A variant written for this package, not from either paper.

Modes (``mode``) set which (mu, sigma2) are matched:

- ``"intra"`` (Eq. 5): every block matches (mu_k, sigma2_k) on its own; a (l, z) group's distance
  is the mean of its blocks' distances.
- ``"inter"`` (Eq. 8/9): the blocks of a (l, z) group in the batch are instances of one
  distribution: mu = mean_k mu_k, sigma2 = mean_k (mu_k - mu)^2. A group of one block has
  variance 0.
- ``"intra_inter"`` (Eq. 11): sigma2 = mean_k sigma2_k + mean_k mu_k^2 - mu^2.

In the inter modes the reference distance's log term reads the group's spread,
log(mean_k v_k + mean_k (mu_k - mu)^2 + floor): the blocks' pixel variance (Eq. 3, as in the
intra mode) plus the variance of their means. In the reference code the log term and the
denominator read the same variance (up to Eq. 14's 1 / |X|), so a variance that makes a missed
mean cheap costs in the log; a log term of the pixel variance alone (mean_k log(v_k + floor), an
earlier form here) left the spread of a label's blocks free, and an H&E intra+inter run met the
labels' means with up to half of a label's blocks saturated at 0 or 1 (block shares spread up
to 0.4 around the mean, the true masks' 0.03) and nuclei in the wrong places (Dice 0.006 on the
test frames; docs/benchmarks, LSR section; tools/lsr_block_check.py shows a model's per-label
shares). In every mode the loss is the mean, over the (l, z) groups present in the batch, of
the group's distance (the reference codes sum over l; with a fixed number of classes that is a
constant factor).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from sparse_ext.losses._validate import check_choice, check_positive, check_range, check_unit

__all__ = [
    "LabelSuperResolutionLoss",
    "check_lsr_settings",
    "load_lsr_table",
    "lsr_loss",
    "mode_with_warmup",
]

MODES = ("intra", "inter", "intra_inter")
DISTANCES = ("reference", "eq5", "gaussian")
_REFERENCE_EPS = 1e-6  # the reference codes' constant in the interval distance's denominator
_TINY = 1e-12  # keeps D finite where rho = 0 and sigma2 = 0 (a table cell from a single block)


def check_lsr_settings(
    mode: str, distance: str, alpha: Any, variance_floor: Any
) -> tuple[str, str, float, float]:
    """The settings validated: alpha in [0, 1] (Appendix A, Eq. 17), variance_floor > 0 (the
    log's variance floor keeps the distance bounded); a ValueError names the one out of range."""
    return (
        check_choice("mode", mode, MODES),
        check_choice("distance", distance, DISTANCES),
        check_unit("alpha", alpha),
        check_positive("variance_floor", variance_floor),
    )


def _distance(
    mu: Tensor, sigma2: Tensor, eta: Tensor, rho: Tensor, variance_floor: float, kind: str
) -> Tensor:
    """Eq. 5 / Eq. 9 (``"eq5"``) or the Gaussian likelihood form (``"gaussian"``), each with the
    log's variance floor (see the module docstring)."""
    if kind == "gaussian":
        variance = rho.square() + sigma2
        return 0.5 * (eta - mu).square() / variance.clamp_min(_TINY) + 0.5 * torch.log(
            2 * math.pi * (variance + variance_floor)
        )
    denominator = (rho.square() + sigma2).square().clamp_min(_TINY)
    return 0.5 * sigma2 * (eta - mu).square() / denominator + 0.5 * torch.log(
        2 * math.pi * (sigma2 + variance_floor)
    )


def _interval_term(mu: Tensor, sigma2: Tensor, eta: Tensor, rho: Tensor) -> Tensor:
    """The reference distance's matching term, relu(|mu - eta| - rho)^2 / (sigma2 + rho^2 + 1e-6)
    (Malkin et al., ICLR 2019; zero inside eta +- rho)."""
    miss = torch.relu((mu - eta).abs() - rho)
    return miss.square() / (sigma2 + rho.square() + _REFERENCE_EPS)


def _table(eta: Tensor, rho: Tensor, num_classes: int, like: Tensor) -> tuple[Tensor, Tensor]:
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    eta = torch.as_tensor(eta, dtype=dtype, device=like.device)
    rho = torch.as_tensor(rho, dtype=dtype, device=like.device)
    if eta.dim() != 2 or eta.shape != rho.shape:
        raise ValueError(
            f"eta and rho must both be (classes, labels) tables, got {tuple(eta.shape)} and "
            f"{tuple(rho.shape)}"
        )
    if eta.shape[0] != num_classes:
        raise ValueError(f"the table has {eta.shape[0]} classes, the logits {num_classes}")
    if (rho < 0).any() or not torch.isfinite(eta).all() or not torch.isfinite(rho).all():
        raise ValueError("eta must be finite and rho finite and non-negative")
    return eta, rho


def mode_with_warmup(
    mode: str, intra_warmup: float, progress: Optional[float], training: bool = True
) -> str:
    """The mode of a training step: "intra" (Eq. 5) while ``progress`` (the share of training
    done) is below ``intra_warmup``, else ``mode``. Outside training, or with no warm-up, the
    mode itself. The inter modes match a label's statistics over blocks only, which from a
    random start can fit another structure than the nuclei (HGSC, one of three seeds;
    docs/benchmarks, LSR section); the intra statistics, block by block, give them a start.

    Raises a RuntimeError when a warm-up needs a progress that nobody set.
    """
    if not training or intra_warmup == 0 or mode == "intra":
        return mode
    if progress is None:
        raise RuntimeError(
            "LabelSuperResolutionLoss: intra_warmup needs the training progress (set_progress; "
            'in MMSeg, dict(type="SparseLossAnnealingHook") in custom_hooks)'
        )
    return "intra" if progress < intra_warmup else mode


def lsr_loss(
    logits: Tensor,
    block_labels: Tensor,
    eta: Tensor,
    rho: Tensor,
    *,
    mode: str = "intra_inter",
    alpha: float = 1.0,
    variance_floor: float = 0.03,
    valid_mask: Optional[Tensor] = None,
    distance: str = "reference",
) -> Tensor:
    """LSR statistics-matching loss (see the module docstring).

    Args:
        logits: (N, L, H, W): N blocks, L high-resolution classes.
        block_labels: (N,) low-resolution label z of each block, or (N, L) one label per class.
        eta, rho: (L, Z) mean and standard deviation of class fractions per label.
        mode: ``"intra"``, ``"inter"`` or ``"intra_inter"``.
        alpha: scale of rho, in [0, 1] (Appendix A, Eq. 17).
        variance_floor: added to the variance inside the log, > 0 (0.03 in the reference codes).
        valid_mask: optional (N, H, W) bool, the pixels that belong to the block (padding and
            non-tissue excluded); blocks without a valid pixel are left out.
        distance: ``"reference"`` (the reference code's interval distance, the default),
            ``"eq5"`` (Eq. 5/9 as published; collapsed minimum, does not train) or
            ``"gaussian"`` (-log N(eta; mu, rho^2 + sigma2); prefers blurry maps).

    Returns a float32 scalar (float64 for float64 logits); a batch without any valid block gives a
    zero that keeps a ``grad_fn``.
    """
    mode, distance, alpha, variance_floor = check_lsr_settings(
        mode, distance, alpha, variance_floor
    )
    if logits.dim() != 4:
        raise ValueError(f"logits must be (N, L, H, W), got {tuple(logits.shape)}")
    n, num_classes = logits.shape[:2]
    eta, rho = _table(eta, rho, num_classes, logits)
    num_labels = eta.shape[1]
    z = torch.as_tensor(block_labels, device=logits.device)
    if z.dtype.is_floating_point or z.dtype == torch.bool:
        raise ValueError(f"block_labels must be integers, got {z.dtype}")
    if z.shape == (n,):
        z = z[:, None].expand(n, num_classes)
    elif z.shape != (n, num_classes):
        raise ValueError(
            f"block_labels must be ({n},) or ({n}, {num_classes}), got {tuple(z.shape)}"
        )
    z = z.long()
    outside = (z < 0) | (z >= num_labels)
    if outside.any():
        raise ValueError(
            f"the eta/rho table ({num_classes} classes x {num_labels} labels) does not cover "
            f"block label z={int(z[outside][0])}"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    p = logits.softmax(dim=1)
    if valid_mask is None:
        weight = torch.ones_like(p[:, :1])
    else:
        if valid_mask.shape != (n, *logits.shape[2:]):
            raise ValueError(
                f"valid_mask must be {(n, *logits.shape[2:])}, got {tuple(valid_mask.shape)}"
            )
        weight = valid_mask[:, None].to(p.dtype)
    count = weight.sum(dim=(2, 3))  # (N, 1)
    keep = count[:, 0] > 0
    if not keep.any():
        return logits.sum() * 0.0
    count = count[keep]
    mu = (p * weight).sum(dim=(2, 3))[keep] / count
    v = (p * (1 - p) * weight).sum(dim=(2, 3))[keep] / count  # Eq. 3
    sigma2 = v / count  # Eq. 14/16
    # one group per (class l, label z), index l * Z + z, matching eta.reshape(-1)
    group = (torch.arange(num_classes, device=z.device) * num_labels + z[keep]).reshape(-1)
    mu, v, sigma2 = mu.reshape(-1), v.reshape(-1), sigma2.reshape(-1)
    eta, rho = eta.reshape(-1).to(p.dtype), alpha * rho.reshape(-1).to(p.dtype)

    def group_mean(values: Tensor) -> Tensor:
        total = values.new_zeros(num_classes * num_labels).index_add_(0, group, values)
        return total / size.clamp_min(1)

    size = torch.zeros(num_classes * num_labels, dtype=p.dtype, device=p.device)
    size.index_add_(0, group, torch.ones_like(mu))
    present = size > 0
    if mode == "intra":
        if distance == "reference":
            per_block = _interval_term(mu, sigma2, eta[group], rho[group]) + torch.log(
                v + variance_floor
            )
        else:
            per_block = _distance(mu, sigma2, eta[group], rho[group], variance_floor, distance)
        return group_mean(per_block)[present].mean()
    mean_mu = group_mean(mu)
    if mode == "inter":  # Eq. 8
        variance = group_mean((mu - mean_mu[group]).square())
    else:  # Eq. 11
        variance = (group_mean(sigma2) + group_mean(mu.square()) - mean_mu.square()).clamp_min(0)
    if distance == "reference":
        spread = group_mean(v) + group_mean((mu - mean_mu[group]).square())
        per_group = _interval_term(mean_mu, variance, eta, rho) + torch.log(spread + variance_floor)
    else:
        per_group = _distance(mean_mu, variance, eta, rho, variance_floor, distance)
    return per_group[present].mean()


def load_lsr_table(path: Union[str, Path]) -> tuple[Tensor, Tensor, list[str]]:
    """(eta, rho, classes) from the ``table.json`` written by ``sparse-ext convert lsr-blocks``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LSR table not found: {path}")
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    for key in ("eta", "rho"):
        if not isinstance(table, dict) or key not in table:
            raise KeyError(f"{path} lacks the key {key!r}")
    try:
        eta = torch.tensor(table["eta"], dtype=torch.float32)
        rho = torch.tensor(table["rho"], dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: eta/rho must be (classes, labels) number tables ({err})"
        ) from None
    if eta.dim() != 2 or eta.shape != rho.shape:
        raise ValueError(
            f"{path}: eta {tuple(eta.shape)} and rho {tuple(rho.shape)} must be equal 2-D tables"
        )
    classes = [str(c) for c in table.get("classes", range(eta.shape[0]))]
    if len(classes) != eta.shape[0]:
        raise ValueError(f"{path}: {len(classes)} classes but eta has {eta.shape[0]} rows")
    return eta, rho, classes


class LabelSuperResolutionLoss(nn.Module):
    """Module form of :func:`lsr_loss`; the table is a path to ``table.json`` or (eta, rho).
    ``intra_warmup``: share of training, in [0, 1), spent on the intra statistics before the
    inter modes (:func:`mode_with_warmup`; ``set_progress`` moves it)."""

    def __init__(
        self,
        eta: Union[Tensor, str, Path, None] = None,
        rho: Optional[Tensor] = None,
        *,
        mode: str = "intra_inter",
        alpha: float = 1.0,
        variance_floor: float = 0.03,
        distance: str = "reference",
        intra_warmup: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(eta, (str, Path)):
            if rho is not None:
                raise ValueError("give either a table path or eta and rho, not both")
            eta, rho, self.classes = load_lsr_table(eta)
        elif eta is None or rho is None:
            raise ValueError("LabelSuperResolutionLoss needs a table path or eta and rho")
        else:
            self.classes = [str(i) for i in range(len(eta))]
        settings = check_lsr_settings(mode, distance, alpha, variance_floor)
        self.mode, self.distance, self.alpha, self.variance_floor = settings
        self.intra_warmup = check_range("intra_warmup", intra_warmup, 0.0, 1.0, high_open=True)
        self.progress: Optional[float] = None
        self.register_buffer("eta", torch.as_tensor(eta, dtype=torch.float32))
        self.register_buffer("rho", torch.as_tensor(rho, dtype=torch.float32))

    def forward(
        self, logits: Tensor, block_labels: Tensor, valid_mask: Optional[Tensor] = None
    ) -> Tensor:
        return lsr_loss(
            logits,
            block_labels,
            self.eta,
            self.rho,
            mode=mode_with_warmup(self.mode, self.intra_warmup, self.progress, self.training),
            alpha=self.alpha,
            variance_floor=self.variance_floor,
            valid_mask=valid_mask,
            distance=self.distance,
        )

    def set_progress(self, progress: float) -> None:
        """Share of training done, in [0, 1]: ends the intra warm-up (``intra_warmup``)."""
        self.progress = float(progress)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, distance={self.distance!r}, alpha={self.alpha}, "
            f"table={tuple(self.eta.shape)}"
        )
