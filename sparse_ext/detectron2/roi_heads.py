"""Faster R-CNN box classifier trained with a partial-annotation loss (config MODEL.SPARSE.ROI_LOSS).

Sampled proposals matched to an annotation (IoU >= ROI_HEADS.IOU_THRESHOLDS) keep their class;
proposals matched to no annotation (Detectron2's background label, the last index) are the
unannotated samples of the sparse losses. Box regression is Detectron2's, unchanged.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, build_box_head
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou
from fvcore.nn import sigmoid_focal_loss
from torch import nn

from sparse_ext.detectron2.config import check_loss_name, sparse_loss_options
from sparse_ext.detectron2.hooks import log_pu_prior, log_scalar, storage_progress
from sparse_ext.losses import (
    bde_weights,
    budget_among_excludable,
    estimated_unlabeled_prior,
    nnpu_loss,
)

__all__ = ["SparseFastRCNNOutputLayers", "SparseROIHeads"]


class SparseFastRCNNOutputLayers(FastRCNNOutputLayers):
    """FastRCNNOutputLayers whose classification loss is ``ce``, ``focal``, ``ece``, ``nnpu`` or
    ``bde``; only :meth:`losses` differs from Detectron2's.

    - ``ce``: Detectron2's loss, untouched.
    - ``focal``: ``fvcore.nn.sigmoid_focal_loss`` on the K foreground logits (one-hot targets, the
      background/unannotated row all zeros), summed and divided by the number of proposals like
      Detectron2's ``USE_SIGMOID_CE`` loss; inference scores with sigmoid accordingly.
    - ``ece``: :class:`sparse_ext.losses.ExclusiveCrossEntropy` with rho annealed by training
      progress (the EventStorage's iter / SOLVER.MAX_ITER, or :meth:`set_progress`).
    - ``nnpu``: :func:`sparse_ext.losses.nnpu_loss` with the background at the last index.
    - ``bde``: cross-entropy whose unannotated terms are weighted by
      :func:`sparse_ext.losses.bde_weights`, from this iteration's own detached predictions of the
      same image (each proposal's regressed box for its best foreground class, with that score).
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        loss_name: str = "ce",
        ece_loss: Optional[nn.Module] = None,
        pu_options: Optional[Dict[str, Any]] = None,
        focal_options: Optional[Dict[str, Any]] = None,
        bde_options: Optional[Dict[str, Any]] = None,
        ece_budget_fraction: Optional[float] = None,
        ece_keep_background_iou: Optional[float] = None,
        ece_keep_background_score: Optional[float] = None,
        ece_foreground_iou: float = 0.5,
        max_iter: int = 0,
        unknown_fraction: Optional[str] = None,
        **kwargs,
    ):
        """
        Args:
            loss_name: one of :data:`sparse_ext.detectron2.config.VALID_LOSSES`.
            ece_loss: the ExclusiveCrossEntropy module (``loss_name="ece"``; softmax, mean).
            pu_options: keyword arguments of ``nnpu_loss`` (``prior`` required for nnpu).
            focal_options: ``alpha`` and ``gamma`` of ``sigmoid_focal_loss``.
            bde_options: ``iou_threshold`` and ``score_threshold`` of ``bde_weights``.
            ece_budget_fraction: the annotated fraction f with which ``ece`` bounds its
                exclusions by pi_u estimated per batch (:meth:`SparseROIHeads._sample_proposals`
                counts the candidates); None: the module's own budget.
            ece_keep_background_iou: ``ece`` keeps the background term of the unannotated
                proposals whose IoU with their best-matching annotation reaches this (below the
                foreground threshold: badly placed boxes on labelled objects, not missing
                labels); None: every unannotated proposal may be excluded (the paper).
            ece_keep_background_score: with ``ece_keep_background_iou``, the rule also holds
                around pseudo-annotations: the regressed boxes of the unannotated proposals
                whose foreground score reaches this (NMS at ``test_nms_thresh``), for the
                proposals whose IoU with one stays below ``ece_foreground_iou``.
            ece_foreground_iou: the ROI head's foreground IoU threshold.
            max_iter: SOLVER.MAX_ITER, the denominator of training progress.
            unknown_fraction: why the loss cannot train (a pi_u to derive from an unknown
                annotated fraction; the prior or bound is then unset): raised by ``losses``.
            kwargs: FastRCNNOutputLayers' arguments.
        """
        loss_name = check_loss_name(loss_name, "loss_name")
        if loss_name == "focal":
            kwargs["use_sigmoid_ce"] = True
        elif loss_name != "ce" and (kwargs.get("use_sigmoid_ce") or kwargs.get("use_fed_loss")):
            raise ValueError(
                f"ROI loss '{loss_name}' is a softmax loss: set MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE "
                "and USE_FED_LOSS to False"
            )
        if loss_name == "ece" and ece_loss is None:
            raise ValueError("loss_name 'ece' needs ece_loss (build it with add_sparse_config)")
        if loss_name == "nnpu" and (pu_options or {}).get("prior") is None and not unknown_fraction:
            raise ValueError("loss_name 'nnpu' needs pu_options with a 'prior'")
        super().__init__(input_shape, **kwargs)
        self.loss_name = loss_name
        self.ece_loss = ece_loss
        self.pu_options = dict(pu_options or {})
        self.focal_options = dict(focal_options or {"alpha": 0.25, "gamma": 2.0})
        self.bde_options = dict(bde_options or {})
        self.ece_budget_fraction = ece_budget_fraction
        self.ece_keep_background_iou = ece_keep_background_iou
        if ece_keep_background_score is not None and ece_keep_background_iou is None:
            raise ValueError("ece_keep_background_score needs ece_keep_background_iou")
        self.ece_keep_background_score = ece_keep_background_score
        self.ece_foreground_iou = float(ece_foreground_iou)
        self.max_iter = int(max_iter)
        self.unknown_fraction = unknown_fraction
        self._progress: Optional[float] = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(sparse_loss_options(cfg, "roi"))
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

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        if self.unknown_fraction:
            raise ValueError(self.unknown_fraction)
        losses = super().losses(predictions, proposals)  # box regression and logging, as stock
        if self.loss_name == "ce":
            return losses
        scores, _ = predictions
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals)
            else torch.empty(0, dtype=torch.long, device=scores.device)
        )
        if scores.numel() == 0:
            loss_cls = scores.sum() * 0.0
        elif self.loss_name == "focal":
            loss_cls = self._focal_loss(scores, gt_classes)
        elif self.loss_name == "ece":
            loss_cls = self._ece_loss(
                scores,
                gt_classes,
                self._estimated_budget(proposals),
                self._kept_background(predictions, proposals, gt_classes),
            )
        elif self.loss_name == "nnpu":
            loss_cls = nnpu_loss(
                scores, gt_classes, background_index=self.num_classes, **self.pu_options
            )
            log_pu_prior("fast_rcnn/pu_prior", gt_classes != self.num_classes, self.pu_options)
        else:
            loss_cls = self._bde_loss(predictions, proposals, gt_classes)
        losses["loss_cls"] = loss_cls * self.loss_weight.get("loss_cls", 1.0)
        return losses

    def _focal_loss(self, scores: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        target = F.one_hot(gt_classes, self.num_classes + 1)[:, : self.num_classes]
        loss = sigmoid_focal_loss(
            scores[:, : self.num_classes],
            target.to(scores.dtype),
            alpha=self.focal_options["alpha"],
            gamma=self.focal_options["gamma"],
            reduction="sum",
        )
        return loss / scores.shape[0]

    def _estimated_budget(self, proposals: List[Instances]) -> Optional[float]:
        """pi_u of this batch's unannotated proposals (None unless ``ece_budget_fraction``):
        :func:`sparse_ext.losses.estimated_unlabeled_prior` of the candidate counts that
        :class:`SparseROIHeads` records on each image's sampled proposals."""
        if self.ece_budget_fraction is None:
            return None
        counts = [
            (int(p.candidates_on_annotated[0]), int(p.unlabeled_candidates[0]))
            for p in proposals
            if len(p) and p.has("candidates_on_annotated")
        ]
        if len(counts) != sum(1 for p in proposals if len(p)):
            raise RuntimeError(
                "MODEL.SPARSE.ECE.EXCLUSION_BUDGET -2 counts the candidates in the ROI sampler: "
                "use MODEL.ROI_HEADS.NAME 'SparseROIHeads'"
            )
        budget = estimated_unlabeled_prior(
            sum(c[0] for c in counts), sum(c[1] for c in counts), self.ece_budget_fraction
        )
        log_scalar("fast_rcnn/ece_budget", budget)
        return budget

    def _kept_background(
        self,
        predictions: Tuple[torch.Tensor, torch.Tensor],
        proposals: List[Instances],
        gt_classes: torch.Tensor,
    ) -> Optional[torch.Tensor]:
        """The unannotated proposals that keep their background term (None unless
        ``ece_keep_background_iou``): IoU with the annotation Detectron2 matched them to (their
        best one) at least ``ece_keep_background_iou``; images without annotations have none.
        With ``ece_keep_background_score`` also those near a pseudo-annotation
        (:meth:`_near_detections`)."""
        if self.ece_keep_background_iou is None:
            return None
        overlap = [
            matched_pairwise_iou(p.proposal_boxes, p.gt_boxes)
            if p.has("gt_boxes")
            else torch.zeros(len(p), device=gt_classes.device)
            for p in proposals
        ]
        kept = cat(overlap) >= self.ece_keep_background_iou
        if self.ece_keep_background_score is not None:
            kept |= self._near_detections(predictions, proposals)
        kept &= gt_classes == self.num_classes
        log_scalar("fast_rcnn/ece_kept_background", kept.float().mean().item())
        return kept

    def _near_detections(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> torch.Tensor:
        """Per proposal: is its best IoU with a pseudo-annotation of its image in
        [``ece_keep_background_iou``, ``ece_foreground_iou``)? The pseudo-annotations are the
        regressed boxes of the image's unannotated proposals whose foreground score reaches
        ``ece_keep_background_score``, after class-wise NMS at ``test_nms_thresh`` (as
        Detectron2's inference keeps detections): a proposal on part of an object the model
        detects is a background sample of Fast R-CNN's rule (Girshick, ICCV 2015), not a
        missing label."""
        near = []
        for boxes, fg_score, fg_class, props in self._best_class_boxes(predictions, proposals):
            confident = (props.gt_classes == self.num_classes) & (
                fg_score >= self.ece_keep_background_score
            )
            best = torch.zeros(len(props), device=fg_score.device)
            if confident.any():
                keep = batched_nms(
                    boxes[confident],
                    fg_score[confident],
                    fg_class[confident],
                    self.test_nms_thresh,
                )
                pseudo = Boxes(boxes[confident][keep])
                best = pairwise_iou(props.proposal_boxes, pseudo).max(dim=1).values
            near.append((best >= self.ece_keep_background_iou) & (best < self.ece_foreground_iou))
        return cat(near)

    def _best_class_boxes(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Instances]]:
        """Per image, from this iteration's detached predictions: each proposal's regressed box
        for its best foreground class, that class's score and index, and the image's
        proposals."""
        scores, deltas = predictions
        detached = (scores.detach(), deltas.detach())
        for boxes, probs, props in zip(
            self.predict_boxes(detached, proposals),
            self.predict_probs(detached, proposals),
            proposals,
        ):
            n = len(props)
            fg_score, fg_class = probs[:, : self.num_classes].max(dim=1)
            if boxes.shape[1] > 4:  # class-specific regression: the best class's box
                boxes = boxes.view(n, -1, 4)[torch.arange(n, device=boxes.device), fg_class]
            yield boxes, fg_score, fg_class, props

    def _ece_loss(
        self,
        scores: torch.Tensor,
        gt_classes: torch.Tensor,
        budget: Optional[float] = None,
        kept_background: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        self.ece_loss.set_progress(self.progress)
        # sparse_ext puts the background first, Detectron2 last: rotate classes by one.
        bg = self.num_classes
        logits = torch.cat([scores[:, bg:], scores[:, :bg]], dim=1)
        target = torch.remainder(gt_classes + 1, bg + 1)
        if kept_background is None:
            return self.ece_loss(logits, target, exclusion_budget=budget)
        budget = self.ece_loss.exclusion_budget if budget is None else budget
        if budget is not None:  # per batch or the module's own: the same rescaling
            budget = budget_among_excludable(
                budget, int((target == 0).sum()), int(kept_background.sum())
            )
        return self.ece_loss(
            logits, target, (target != 0) | kept_background, exclusion_budget=budget
        )

    def _bde_loss(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances], gt_classes
    ) -> torch.Tensor:
        scores, _ = predictions
        weights = torch.ones_like(scores[:, 0], dtype=torch.float32)
        start = 0
        for boxes, fg_score, _, props in self._best_class_boxes(predictions, proposals):
            n = len(props)
            unannotated = props.gt_classes == self.num_classes
            if unannotated.any():
                w = bde_weights(
                    props.proposal_boxes.tensor[unannotated],
                    boxes,
                    fg_score,
                    **self.bde_options,
                )
                weights[start : start + n][unannotated] = w.to(weights.dtype)
            start += n
        ce = F.cross_entropy(scores, gt_classes, reduction="none")
        return (weights.to(ce.dtype) * ce).sum() / scores.shape[0]


@ROI_HEADS_REGISTRY.register()
class SparseROIHeads(StandardROIHeads):
    """StandardROIHeads with a :class:`SparseFastRCNNOutputLayers` box predictor
    (``MODEL.ROI_HEADS.NAME: "SparseROIHeads"``).

    The predictor is built once, in the place of Detectron2's: ``_init_box_head`` below builds the
    pooler, the box head and then the predictor as ``StandardROIHeads._init_box_head`` does, so the
    parameters draw the same random numbers in the same order and, with
    ``MODEL.SPARSE.ROI_LOSS: ce`` and the same seed, the model is stock Detectron2's, weights and
    losses bit for bit (no stock predictor is built and thrown away).
    """

    #: (candidates on an annotation, candidates on none) per image, while sampling for a box
    #: predictor that estimates its exclusion budget.
    _candidate_counts: Optional[List[Tuple[int, int]]] = None

    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """Detectron2's sampling; when the box predictor estimates its exclusion budget
        (``ece_budget_fraction``), each image's sampled proposals also carry the counts of its
        candidates before sampling: ``candidates_on_annotated`` (matched to an annotation, the
        appended annotation boxes not counted) and ``unlabeled_candidates`` (matched to none)."""
        if self.box_predictor.ece_budget_fraction is None:
            return super().label_and_sample_proposals(proposals, targets)
        self._candidate_counts = []
        try:
            sampled = super().label_and_sample_proposals(proposals, targets)
            counts = self._candidate_counts
        finally:
            self._candidate_counts = None
        for inst, (on_annotated, unlabeled) in zip(sampled, counts):
            device = inst.gt_classes.device
            inst.candidates_on_annotated = torch.full((len(inst),), on_annotated, device=device)
            inst.unlabeled_candidates = torch.full((len(inst),), unlabeled, device=device)
        return sampled

    def _sample_proposals(
        self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor, gt_classes: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._candidate_counts is not None:
            appended = len(gt_classes) if self.proposal_append_gt else 0
            on_annotated = max(int((matched_labels == 1).sum()) - appended, 0)
            self._candidate_counts.append((on_annotated, int((matched_labels == 0).sum())))
        return super()._sample_proposals(matched_idxs, matched_labels, gt_classes)

    @classmethod
    def _init_box_head(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> Dict[str, Any]:
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        pooler_resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        in_channels = {input_shape[f].channels for f in in_features}
        if len(in_channels) != 1:  # the box head is shared by the FPN levels
            raise ValueError(
                f"ROI_HEADS.IN_FEATURES {in_features} differ in channels: {in_channels}"
            )
        box_pooler = ROIPooler(
            output_size=pooler_resolution,
            scales=tuple(1.0 / input_shape[k].stride for k in in_features),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        box_head = build_box_head(
            cfg,
            ShapeSpec(
                channels=in_channels.pop(), height=pooler_resolution, width=pooler_resolution
            ),
        )
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_head": box_head,
            "box_predictor": SparseFastRCNNOutputLayers(cfg, box_head.output_shape),
        }
