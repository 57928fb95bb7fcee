"""sparse_ext's losses in MMSeg's loss contract (MODELS): wiring only, the maths is in
:mod:`sparse_ext.losses`.

Each module follows MMSeg's decode-head loss interface: ``forward(cls_score, label, weight=None,
ignore_index=255, **kwargs)`` with ``cls_score`` (N, C, H, W) logits (or (N, 1, H, W) sigmoid
logits for a binary head with ``out_channels=1``) and ``label`` (N, H, W); ``loss_weight``
scales the result and ``loss_name`` (prefix ``loss_``) names it in the log. Switch a stock
config with one line::

    decode_head=dict(loss_decode=dict(type="ExclusiveCrossEntropyLoss", loss_weight=1.0))

- ``ExclusiveCrossEntropyLoss``: partial annotations, label 0 = background or unannotated,
  1..C-1 annotated classes, ``ignore_index`` ignored (Panteli et al., ICCV 2021, Eq. 7/8).
- ``NonNegativePULoss``: annotated pixels (label > 0) are the positives, label-0 pixels the
  unlabeled set, ``prior`` the expected fraction of object pixels (Zhao et al., MICCAI 2021).
- ``OneHotFocalLoss``: MMSeg's own ``FocalLoss`` (the focal baseline) fed one-hot targets, so
  that it also runs on CPU.
- ``LabelSuperResolutionLoss``: one low-resolution label per block through the block-label map
  of ``LoadBlockLabel`` (Zhao, Hou et al., "Label super resolution with inter-instance loss",
  arXiv 2019), with the (eta, rho) table from a file.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.losses import FocalLoss
from mmseg.registry import MODELS
from torch import Tensor

from sparse_ext.losses._validate import (
    check_fraction,
    check_nonnegative,
    check_range,
    check_unit,
)
from sparse_ext.losses.exclusive_cross_entropy import ExclusiveCrossEntropy
from sparse_ext.losses.fraction import LabelledShare, fallback_annotated_fraction, object_share
from sparse_ext.losses.label_super_resolution import (
    check_lsr_settings,
    load_lsr_table,
    lsr_loss,
    mode_with_warmup,
)
from sparse_ext.losses.nnpu import check_nnpu_settings, nnpu_loss, unlabeled_prior
from sparse_ext.mmseg.transforms import (
    NO_PIXEL_LABEL,
    codes_to_labels,
    decode_block_label_map,
    max_block_code,
)

__all__ = [
    "ExclusiveCrossEntropyLoss",
    "LabelSuperResolutionLoss",
    "NonNegativePULoss",
    "OneHotFocalLoss",
]


def _check_loss_name(loss_name: str) -> str:
    if not loss_name.startswith("loss_"):
        raise ValueError(f"loss_name must start with 'loss_' to be optimised, got {loss_name!r}")
    return loss_name


def _check_labels(cls_score: Tensor, label: Tensor, ignore_index: int) -> int:
    """Raise a ValueError naming the label values outside the head's classes; returns C."""
    if cls_score.dim() != label.dim() + 1 or cls_score.shape[2:] != label.shape[1:]:
        raise ValueError(
            f"cls_score {tuple(cls_score.shape)} and label {tuple(label.shape)} do not match: "
            "expected (N, C, H, W) and (N, H, W)"
        )
    num_classes = max(cls_score.shape[1], 2)  # one sigmoid channel = 2 classes
    bad = (label != ignore_index) & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = torch.unique(label[bad]).tolist()
        raise ValueError(
            f"label values {values[:10]} are outside the classes 0..{num_classes - 1} and "
            f"ignore_index {ignore_index}"
        )
    return num_classes


@MODELS.register_module()
class ExclusiveCrossEntropyLoss(nn.Module):
    """Exclusive cross-entropy (Panteli et al., ICCV 2021, Eq. 7; focal variant Eq. 8).

    Annotated pixels (label 1..C-1) get plain CE; label-0 pixels count as background only
    where the model's confidence is below rho. Mean over the non-ignored pixels, so with
    ``schedule=1.0`` (no focal, no sampling) it equals MMSeg's ``CrossEntropyLoss`` with
    ``avg_non_ignore=True``. Add ``SparseLossAnnealingHook`` to anneal rho or the sampling.

    Args:
        schedule: rho, or its schedule over training progress (anything
            ``sparse_ext.losses.schedules.build_schedule`` accepts: a number, a name such as
            "constant" or "paper_table2", a dict like ``dict(type="sigmoid", ...)``); its
            values must lie in [0, 1] (>= 0, logit units, with "logit_margin").
        sampling_schedule: probability in [0, 1] of keeping an unannotated term (the reference
            code's background sampling), a schedule like ``schedule``. None (default): the keep
            probability that the annotated fraction gives
            (:func:`sparse_ext.losses.background_keep_prob`); ``1.0`` keeps every term (ECE as
            published).
        annotated_fraction: the share f in (0, 1] of the nuclei that carry a label. None: what
            the training data recorded (``SparseLossAnnealingHook`` hands it over before
            training), else :data:`sparse_ext.losses.fraction.FALLBACK_ANNOTATED_FRACTION` with a
            warning at the first step.
        use_sigmoid: binary head with one output channel (``out_channels=1``).
        confidence: "foreground" (paper), "margin" or "logit_margin" (reference code).
        focal_alpha, focal_gamma: focal re-weighting of the unannotated terms (Eq. 8), alpha
            in [0, 1], gamma >= 0.
        loss_weight: weight of the loss, >= 0. Settings out of range raise a ValueError naming
            them when the model is built.
        loss_name: name of the loss item (``loss_`` prefix).
    """

    def __init__(
        self,
        schedule: Any = 0.5,
        sampling_schedule: Any = None,
        annotated_fraction: Optional[float] = None,
        use_sigmoid: bool = False,
        confidence: str = "foreground",
        focal_alpha: Optional[float] = None,
        focal_gamma: Optional[float] = None,
        loss_weight: float = 1.0,
        loss_name: str = "loss_ece",
    ) -> None:
        super().__init__()
        self.criterion = ExclusiveCrossEntropy(
            schedule=schedule,
            sampling_schedule=sampling_schedule,
            annotated_fraction=annotated_fraction,
            use_sigmoid=use_sigmoid,
            confidence=confidence,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
        )
        self.use_sigmoid = use_sigmoid
        self.loss_weight = check_nonnegative("loss_weight", loss_weight)
        self._loss_name = _check_loss_name(loss_name)

    @property
    def annotated_fraction(self) -> Optional[float]:
        return self.criterion.annotated_fraction

    def set_annotated_fraction(self, annotated_fraction: float) -> None:
        self.criterion.set_annotated_fraction(annotated_fraction)

    def set_progress(self, progress: float) -> None:
        self.criterion.set_progress(progress)

    def forward(
        self,
        cls_score: Tensor,
        label: Tensor,
        weight: Optional[Tensor] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> Tensor:
        _check_labels(cls_score, label, ignore_index)
        if self.criterion.sampling_schedule is None and self.annotated_fraction is None:
            self.set_annotated_fraction(fallback_annotated_fraction(type(self).__name__))
        if weight is None:
            loss = self.criterion(cls_score, label, ignore_index=ignore_index)
        else:  # a pixel sampler's weights (MMSeg's OHEM): weighted mean over non-ignored pixels
            per_pixel = self.criterion(
                cls_score, label, ignore_index=ignore_index, reduction="none"
            )
            valid = (label != ignore_index).to(per_pixel.dtype)
            loss = (per_pixel * weight * valid).sum() / valid.sum().clamp_min(1.0)
        return self.loss_weight * loss

    @property
    def loss_name(self) -> str:
        return self._loss_name


@MODELS.register_module()
class SampledCrossEntropyLoss(ExclusiveCrossEntropyLoss):
    """Cross-entropy with the unannotated pixels kept as background with the probability the
    annotated fraction f gives (:func:`sparse_ext.losses.background_keep_prob`): the
    recommended partial-annotation recipe (docs/benchmarks: it matched or beat ECE on both
    datasets). It is :class:`ExclusiveCrossEntropyLoss` with rho fixed at 1 (no exclusion): the
    reference ECE code's background sampling (Panteli et al., ICCV 2021), matched to f.

    An unannotated nucleus pixel is then background with expected weight (1 - f) s against f as
    foreground, so its cross-entropy optimum is p = 1 / (1 + c) = 0.8 whatever f, while every
    background pixel is still pulled towards background (ECE stops pulling once p > rho).

    Args:
        annotated_fraction: the share f in (0, 1] of the nuclei that carry a label; None: what
            the training data recorded (``SparseLossAnnealingHook`` hands it over), else the
            fallback with a warning.
        use_sigmoid: binary head with one output channel.
        loss_weight: weight of the loss, >= 0.
        loss_name: name of the loss item (``loss_`` prefix).
    """

    def __init__(
        self,
        annotated_fraction: Optional[float] = None,
        use_sigmoid: bool = False,
        loss_weight: float = 1.0,
        loss_name: str = "loss_sampled_ce",
    ) -> None:
        super().__init__(
            schedule=1.0,
            annotated_fraction=annotated_fraction,
            use_sigmoid=use_sigmoid,
            loss_weight=loss_weight,
            loss_name=loss_name,
        )


@MODELS.register_module()
class NonNegativePULoss(nn.Module):
    """Non-negative PU loss on pixels (Zhao et al., MICCAI 2021, Eq. 9-12).

    Pixels with a label 1..C-1 are the positives, label-0 pixels the unlabeled set, ignored
    pixels are left out. Softmax heads put background at class 0; a one-channel head uses
    sigmoid logits.

    The prior: a fixed ``prior`` (the paper's mode, Eq. 12), or, when ``prior`` is None
    (default), the per-batch sampled prior pi_b = Np/N + (Nu/N) pi_u of
    :func:`sparse_ext.losses.nnpu.nnpu_loss` (``prior_mode="sampled"``), with pi_u from the
    annotated fraction f and the object share q = l / f of the pixels, l the running share of
    labelled pixels (:func:`sparse_ext.losses.nnpu.unlabeled_prior`,
    :func:`sparse_ext.losses.fraction.object_share`): the labelled pixels then get plain CE and
    only the unlabeled ones the PU risk.

    Args:
        prior: a fixed expected fraction of object pixels, in (0, 1); None: derived from f.
        annotated_fraction: the share f in (0, 1] of the nuclei that carry a label (with
            ``prior=None``). None: what the training data recorded (``SparseLossAnnealingHook``),
            else :data:`sparse_ext.losses.fraction.FALLBACK_ANNOTATED_FRACTION` with a warning.
        mode: "detection" (E_x over positive + unlabeled pixels, the paper's) or "classic"
            (fixed prior only).
        nonnegative: "clamp", "kiryo" or "none".
        beta, gamma: Kiryo et al.'s nnPU parameters (``nonnegative="kiryo"``), beta >= 0,
            gamma in [0, 1].
        loss_weight: weight of the loss.
        loss_name: name of the loss item (``loss_`` prefix).
    """

    def __init__(
        self,
        prior: Optional[float] = None,
        annotated_fraction: Optional[float] = None,
        mode: str = "detection",
        nonnegative: str = "clamp",
        beta: float = 0.0,
        gamma: float = 1.0,
        loss_weight: float = 1.0,
        loss_name: str = "loss_nnpu",
    ) -> None:
        super().__init__()
        if prior is None:
            settings = check_nnpu_settings(0.0, mode, nonnegative, beta, gamma, "sampled")
        else:
            settings = check_nnpu_settings(prior, mode, nonnegative, beta, gamma)
        self.prior = None if prior is None else settings.prior
        self.annotated_fraction: Optional[float] = None
        if annotated_fraction is not None:
            self.set_annotated_fraction(annotated_fraction)
        self.labelled_share = LabelledShare()
        self.mode = settings.mode
        self.nonnegative = settings.nonnegative
        self.beta = settings.beta
        self.gamma = settings.gamma
        self.loss_weight = check_nonnegative("loss_weight", loss_weight)
        self._loss_name = _check_loss_name(loss_name)

    def set_annotated_fraction(self, annotated_fraction: float) -> None:
        self.annotated_fraction = check_fraction("annotated_fraction", annotated_fraction)

    def _prior(self, labels: Tensor) -> tuple[float, str]:
        """The prior for this batch and its mode (see the class docstring)."""
        if self.prior is not None:
            return self.prior, "fixed"
        if self.annotated_fraction is None:
            self.set_annotated_fraction(fallback_annotated_fraction(type(self).__name__))
        share = self.labelled_share.update(int(torch.count_nonzero(labels)), labels.numel())
        q = object_share(share, self.annotated_fraction)
        return unlabeled_prior(self.annotated_fraction, q), "sampled"

    def forward(
        self,
        cls_score: Tensor,
        label: Tensor,
        weight: Optional[Tensor] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> Tensor:
        if weight is not None:
            raise ValueError("NonNegativePULoss does not take pixel weights (a pixel sampler)")
        _check_labels(cls_score, label, ignore_index)
        valid = (label != ignore_index).reshape(-1)
        labels = label.reshape(-1)[valid]
        if cls_score.shape[1] == 1:
            logits = cls_score.reshape(-1)[valid]
            labels = (labels > 0).long()
            background_index = None
        else:
            logits = cls_score.permute(0, 2, 3, 1).reshape(-1, cls_score.shape[1])[valid]
            background_index = 0
        prior, prior_mode = self._prior(labels)
        loss = nnpu_loss(
            logits,
            labels,
            prior,
            background_index=background_index,
            prior_mode=prior_mode,
            mode=self.mode,
            nonnegative=self.nonnegative,
            beta=self.beta,
            gamma=self.gamma,
        )
        return self.loss_weight * loss

    @property
    def loss_name(self) -> str:
        return self._loss_name


@MODELS.register_module()
class OneHotFocalLoss(FocalLoss):
    """MMSeg's ``FocalLoss`` (sigmoid focal loss, the focal baseline) with one-hot targets.

    mmseg 1.2.2's ``FocalLoss`` builds one-hot targets from a label map only on CUDA; its CPU
    branch indexes them with ``[:, num_classes]`` and fails. This subclass passes the one-hot
    targets itself (MMSeg's own working branch) and the non-ignored pixels as weights, so the
    maths is MMSeg's (``py_sigmoid_focal_loss``, mean over pixels x classes as MMSeg's) on any
    device. A one-channel head (``out_channels=1``) gets the foreground indicator. gamma >= 0
    and alpha (a float or one per class) in [0, 1] are checked when the model is built.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        gamma: float = 2.0,
        alpha: Union[float, list] = 0.5,
        reduction: str = "mean",
        class_weight: Optional[list] = None,
        loss_weight: float = 1.0,
        loss_name: str = "loss_focal",
    ) -> None:
        gamma = check_nonnegative("gamma", gamma)
        if isinstance(alpha, (list, tuple)):
            alpha = [check_unit(f"alpha[{i}]", a) for i, a in enumerate(alpha)]
        else:
            alpha = check_unit("alpha", alpha)
        super().__init__(
            use_sigmoid=use_sigmoid,
            gamma=gamma,
            alpha=alpha,
            reduction=reduction,
            class_weight=class_weight,
            loss_weight=check_nonnegative("loss_weight", loss_weight),
            loss_name=_check_loss_name(loss_name),
        )

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Optional[Tensor] = None,
        avg_factor: Optional[int] = None,
        reduction_override: Optional[str] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> Tensor:
        if target.shape == pred.shape:
            return super().forward(
                pred, target, weight, avg_factor, reduction_override, ignore_index, **kwargs
            )
        _check_labels(pred, target, ignore_index)
        valid = target != ignore_index
        if pred.shape[1] == 1:
            one_hot = (target == 1).unsqueeze(1)
        else:
            one_hot = F.one_hot(target.masked_fill(~valid, 0), pred.shape[1]).permute(0, 3, 1, 2)
        pixel_weight = valid.to(pred.dtype) if weight is None else weight * valid
        return super().forward(
            pred,
            one_hot.to(pred.dtype),
            pixel_weight.reshape(-1),
            avg_factor,
            reduction_override,
            ignore_index,
            **kwargs,
        )


def _table_tensors(table: Union[str, dict]) -> tuple[Tensor, Tensor, list]:
    if isinstance(table, str):
        eta, rho, classes = load_lsr_table(table)
    elif isinstance(table, dict) and {"eta", "rho"} <= set(table):
        eta, rho, classes = table["eta"], table["rho"], list(table.get("classes", []))
    else:
        raise TypeError("table must be a path to table.json or a dict with 'eta' and 'rho'")
    eta = torch.as_tensor(np.asarray(eta, dtype=np.float32))
    rho = torch.as_tensor(np.asarray(rho, dtype=np.float32))
    if eta.dim() != 2 or eta.shape != rho.shape:
        raise ValueError(f"eta {tuple(eta.shape)} and rho {tuple(rho.shape)} must both be (L, Z)")
    return eta, rho, list(classes)


@MODELS.register_module()
class LabelSuperResolutionLoss(nn.Module):
    """Label super-resolution statistics matching (Zhao, Hou et al., arXiv 2019, Eq. 1-11,
    Appendix A).

    Works with MMSeg's stock decode heads: ``LoadBlockLabel`` (with ``LSRBlockDataset``) writes
    each block's low-resolution labels into its label map (see :mod:`sparse_ext.mmseg.transforms`
    for the encoding); this loss reads one label tuple back per block, takes the block's
    non-padding pixels as ``valid_mask`` and calls :func:`sparse_ext.losses.lsr_loss`. Blocks
    with no valid pixel are left out. ``highres_weight > 0`` adds cross-entropy on the pixels
    that carry a high-res label (the paper's "& high res" variants): loss = LSR + w * CE.

    Args:
        table: path of the joint-distribution table (``table.json`` of ``lsr-blocks``) or a
            dict with ``eta`` and ``rho`` (L x Z); L must equal the head's classes.
        mode: "intra", "inter" or "intra_inter".
        alpha: scale of rho, in [0, 1] (Appendix A, Eq. 17).
        variance_floor: keeps the log term bounded, > 0 (both reference codes use 0.03).
        distance: "reference" (default: the reference LSR code's interval distance, Malkin
            et al., ICLR 2019), "eq5" (Eq. 5/9 as published; its minimum is collapsed, it does
            not train) or "gaussian" (-log N(eta; mu, rho^2 + sigma2); prefers blurry maps); see
            :mod:`sparse_ext.losses.label_super_resolution`.
        highres_weight: weight of the high-res CE term; 0 disables it.
        intra_warmup: share of training, in [0, 1), during which the inter modes match the
            intra-instance statistics (Eq. 5) instead; ``SparseLossAnnealingHook`` tells the
            loss how far training has got (the shipped LSR configs have it). Block statistics
            alone do not say which pixels are nuclei: from a random start the inter mode alone
            matched them on HGSC with another structure on one of three seeds, from the intra
            mode's start on none (docs/benchmarks, LSR section).
        loss_weight: weight of the loss.
        loss_name: name of the loss item (``loss_`` prefix).
    """

    def __init__(
        self,
        table: Union[str, dict],
        mode: str = "intra_inter",
        alpha: float = 1.0,
        variance_floor: float = 0.03,
        distance: str = "reference",
        highres_weight: float = 0.0,
        intra_warmup: float = 0.0,
        loss_weight: float = 1.0,
        loss_name: str = "loss_lsr",
    ) -> None:
        super().__init__()
        mode, distance, alpha, variance_floor = check_lsr_settings(
            mode, distance, alpha, variance_floor
        )
        self.distance = distance
        eta, rho, self.classes = _table_tensors(table)
        self.register_buffer("eta", eta, persistent=False)
        self.register_buffer("rho", rho, persistent=False)
        self.num_labels = int(eta.shape[1])
        self.max_code = max_block_code(int(eta.shape[0]), self.num_labels)
        self.mode = mode
        self.alpha = alpha
        self.variance_floor = variance_floor
        self.highres_weight = check_nonnegative("highres_weight", highres_weight)
        self.intra_warmup = check_range("intra_warmup", intra_warmup, 0.0, 1.0, high_open=True)
        self.progress: Optional[float] = None
        self.loss_weight = check_nonnegative("loss_weight", loss_weight)
        self._loss_name = _check_loss_name(loss_name)

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (``SparseLossAnnealingHook``): ends the intra warm-up."""
        self.progress = float(progress)

    def block_labels(self, label: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Block-label maps (N, H, W) -> (keep (N,) bool: blocks with valid pixels, z (n, L) of
        the kept blocks, valid (N, H, W) pixels)."""
        valid, codes, _ = decode_block_label_map(label)
        has = valid.flatten(1).any(1)
        if not has.any():
            raise ValueError(
                "LabelSuperResolutionLoss: no block labels in the batch (label values < 256); "
                "put LoadBlockLabel in the train pipeline (with LSRBlockDataset)"
            )
        flat = codes.flatten(1)
        top = flat.amax(1)
        low = torch.where(valid.flatten(1), flat, torch.full_like(flat, self.max_code + 1)).amin(1)
        if (top != low)[has].any():
            raise ValueError(
                "a block's label map is not constant: a transform mixed blocks (e.g. mosaic or "
                "cut-mix); LSR needs one label per block"
            )
        if (top[has] > self.max_code).any():
            raise KeyError(
                f"block label codes {top[has][top[has] > self.max_code].tolist()} are not in "
                f"the table ({self.eta.shape[0]} classes x {self.num_labels} labels)"
            )
        z = codes_to_labels(top[has], int(self.eta.shape[0]), self.num_labels)
        return has, z, valid

    def forward(
        self,
        cls_score: Tensor,
        label: Tensor,
        weight: Optional[Tensor] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> Tensor:
        if weight is not None:
            raise ValueError("LabelSuperResolutionLoss does not take pixel weights")
        if cls_score.shape[1] != self.eta.shape[0]:
            raise ValueError(
                f"the head predicts {cls_score.shape[1]} classes, the LSR table has "
                f"{self.eta.shape[0]} ({self.classes}): set num_classes to the table's classes"
            )
        if cls_score.shape[2:] != label.shape[1:]:
            raise ValueError(
                f"cls_score {tuple(cls_score.shape)} and label {tuple(label.shape)} do not match"
            )
        keep, z, valid = self.block_labels(label)
        loss = lsr_loss(
            cls_score[keep],
            z,
            self.eta.to(cls_score.dtype),
            self.rho.to(cls_score.dtype),
            mode=mode_with_warmup(self.mode, self.intra_warmup, self.progress, self.training),
            alpha=self.alpha,
            variance_floor=self.variance_floor,
            valid_mask=valid[keep],
            distance=self.distance,
        )
        if self.highres_weight > 0:
            _, _, pixel = decode_block_label_map(label)
            target = pixel.masked_fill(pixel == NO_PIXEL_LABEL, ignore_index)
            _check_labels(cls_score, target, ignore_index)
            if (target != ignore_index).any():
                ce = F.cross_entropy(cls_score, target, ignore_index=ignore_index)
                loss = loss + self.highres_weight * ce
        return self.loss_weight * loss

    @property
    def loss_name(self) -> str:
        return self._loss_name
