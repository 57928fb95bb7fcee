"""RPN whose objectness loss is a partial-annotation loss (config MODEL.SPARSE.RPN_LOSS).

Objectness logits are sigmoid logits. Sampled anchors labelled 1 (matched to an annotation) are the
positives, anchors labelled 0 (matched to none) the unannotated samples, anchors labelled -1 stay
ignored. Anchor regression is Detectron2's, unchanged.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes
from fvcore.nn import sigmoid_focal_loss
from torch import nn

from sparse_ext.detectron2.config import check_loss_name, sparse_loss_options
from sparse_ext.detectron2.hooks import log_pu_prior, storage_progress
from sparse_ext.losses import bde_weights, nnpu_loss

__all__ = ["SparseRPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class SparseRPN(RPN):
    """RPN with ``MODEL.SPARSE.RPN_LOSS`` in ``ce``, ``focal``, ``ece``, ``nnpu``, ``bde``
    (``MODEL.PROPOSAL_GENERATOR.NAME: "SparseRPN"``); only :meth:`losses` differs from Detectron2's.

    ``ce``, ``focal``, ``ece`` and ``bde`` are sums over the sampled anchors divided by Detectron2's
    RPN normaliser (BATCH_SIZE_PER_IMAGE x images), so ``ece`` with rho = 1 equals ``ce``; ``nnpu``
    is the PU risk, a mean by construction. ``bde`` densities come from this iteration's decoded
    anchors of the same image (detached; the PRE_NMS_TOPK_TRAIN highest objectness scores).
    """

    @configurable
    def __init__(
        self,
        *,
        loss_name: str = "ce",
        ece_loss: Optional[nn.Module] = None,
        pu_options: Optional[Dict[str, Any]] = None,
        focal_options: Optional[Dict[str, Any]] = None,
        bde_options: Optional[Dict[str, Any]] = None,
        max_iter: int = 0,
        unknown_fraction: Optional[str] = None,
        **kwargs,
    ):
        """
        Args:
            loss_name: one of :data:`sparse_ext.detectron2.config.VALID_LOSSES`.
            ece_loss: the ExclusiveCrossEntropy module (``loss_name="ece"``; sigmoid, sum).
            pu_options: keyword arguments of ``nnpu_loss`` (``prior`` required for nnpu).
            focal_options: ``alpha`` and ``gamma`` of ``sigmoid_focal_loss``.
            bde_options: ``iou_threshold`` and ``score_threshold`` of ``bde_weights``.
            max_iter: SOLVER.MAX_ITER, the denominator of training progress.
            unknown_fraction: why the loss cannot train (a pi_u to derive from an unknown
                annotated fraction; the prior or bound is then unset): raised by ``losses``.
            kwargs: RPN's arguments.
        """
        loss_name = check_loss_name(loss_name, "loss_name")
        if loss_name == "ece" and ece_loss is None:
            raise ValueError("loss_name 'ece' needs ece_loss (build it with add_sparse_config)")
        if loss_name == "nnpu" and (pu_options or {}).get("prior") is None and not unknown_fraction:
            raise ValueError("loss_name 'nnpu' needs pu_options with a 'prior'")
        super().__init__(**kwargs)
        self.loss_name = loss_name
        self.ece_loss = ece_loss
        self.pu_options = dict(pu_options or {})
        self.focal_options = dict(focal_options or {"alpha": 0.25, "gamma": 2.0})
        self.bde_options = dict(bde_options or {})
        self.max_iter = int(max_iter)
        self.unknown_fraction = unknown_fraction
        self._progress: Optional[float] = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(sparse_loss_options(cfg, "rpn"))
        return ret

    def set_progress(self, progress: float) -> None:
        """Fix training progress in [0, 1] (else: EventStorage iter / max_iter)."""
        self._progress = float(progress)

    @property
    def progress(self) -> float:
        if self._progress is not None:
            return self._progress
        p = storage_progress(self.max_iter)
        return 0.0 if p is None else p

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        if self.unknown_fraction:
            raise ValueError(self.unknown_fraction)
        losses = super().losses(
            anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )
        if self.loss_name == "ce":
            return losses
        labels = torch.stack(gt_labels)  # (N, R): 1 annotated, 0 unannotated, -1 ignored
        logits = cat(pred_objectness_logits, dim=1)
        valid = labels >= 0
        x, y = logits[valid], labels[valid].long()
        normalizer = self.batch_size_per_image * len(gt_labels)
        if x.numel() == 0:
            loss_cls = logits.sum() * 0.0
        elif self.loss_name == "focal":
            loss_cls = (
                sigmoid_focal_loss(
                    x,
                    y.to(x.dtype),
                    alpha=self.focal_options["alpha"],
                    gamma=self.focal_options["gamma"],
                    reduction="sum",
                )
                / normalizer
            )
        elif self.loss_name == "ece":
            self.ece_loss.set_progress(self.progress)
            loss_cls = self.ece_loss(x, y) / normalizer
        elif self.loss_name == "nnpu":
            loss_cls = nnpu_loss(x, y, **self.pu_options)
            log_pu_prior("rpn/pu_prior", y == 1, self.pu_options)
        else:
            weights = self._bde_weights(anchors, logits, labels, pred_anchor_deltas)
            loss_cls = (
                F.binary_cross_entropy_with_logits(
                    x, y.to(x.dtype), weight=weights[valid].to(x.dtype), reduction="sum"
                )
                / normalizer
            )
        losses["loss_rpn_cls"] = loss_cls * self.loss_weight.get("loss_rpn_cls", 1.0)
        return losses

    @torch.no_grad()
    def _bde_weights(
        self,
        anchors: List[Boxes],
        logits: torch.Tensor,
        labels: torch.Tensor,
        pred_anchor_deltas: List[torch.Tensor],
    ) -> torch.Tensor:
        anchor_boxes = Boxes.cat(anchors).tensor
        pred_boxes = cat(
            self._decode_proposals(anchors, [d.detach() for d in pred_anchor_deltas]), dim=1
        )  # (N, R, 4)
        scores = logits.detach().sigmoid()
        topk = min(self.pre_nms_topk[True], scores.shape[1])
        weights = torch.ones_like(scores)
        for i in range(labels.shape[0]):
            unannotated = labels[i] == 0
            if not unannotated.any():
                continue
            top_scores, top_idx = scores[i].topk(topk)
            weights[i, unannotated] = bde_weights(
                anchor_boxes[unannotated], pred_boxes[i, top_idx], top_scores, **self.bde_options
            ).to(weights.dtype)
        return weights
