"""Box-density weights for unannotated negatives (the BDE baseline).

Re-implemented from the description in Li et al., "A novel loss calibration strategy for object
detection networks training on sparsely annotated pathological datasets", MICCAI 2020 (no public
code was used): an unannotated candidate box that many of the detector's own predictions overlap
probably holds an unannotated object, so its background loss is down-weighted.

    density_i = #{predicted boxes j : IoU(candidate_i, j) >= iou_threshold}
    weight_i  = 1 - density_i / max_i density_i        (1 everywhere when no prediction overlaps)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from sparse_ext.losses._validate import check_finite, check_unit

__all__ = ["bde_weights", "box_iou"]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU (M, P) of XYXY boxes: torchvision's op when installed, else the same maths."""
    try:
        from torchvision.ops import box_iou as tv_box_iou
    except ImportError:
        tv_box_iou = None
    if tv_box_iou is not None:
        return tv_box_iou(boxes1, boxes2)
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp_min(0) * (boxes1[:, 3] - boxes1[:, 1]).clamp_min(0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp_min(0) * (boxes2[:, 3] - boxes2[:, 1]).clamp_min(0)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(dim=2)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp_min(torch.finfo(inter.dtype).tiny)


def _check_boxes(name: str, boxes: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) XYXY boxes, got {tuple(boxes.shape)}")


@torch.no_grad()
def bde_weights(
    candidate_boxes: Tensor,
    predicted_boxes: Tensor,
    predicted_scores: Optional[Tensor] = None,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> Tensor:
    """Weights in [0, 1] of the candidate (unannotated) boxes, one per box, without gradient.

    Args:
        candidate_boxes: (M, 4) XYXY boxes whose background loss is to be weighted.
        predicted_boxes: (P, 4) XYXY boxes the detector predicts in the same image.
        predicted_scores: optional (P,) scores; predictions below ``score_threshold`` do not count.
        iou_threshold: overlap in [0, 1] from which a prediction counts for a candidate.
    """
    iou_threshold = check_unit("iou_threshold", iou_threshold)
    score_threshold = check_finite("score_threshold", score_threshold)
    _check_boxes("candidate_boxes", candidate_boxes)
    _check_boxes("predicted_boxes", predicted_boxes)
    if predicted_scores is not None:
        if predicted_scores.shape != predicted_boxes.shape[:1]:
            raise ValueError(
                f"predicted_scores {tuple(predicted_scores.shape)} do not match "
                f"predicted_boxes {tuple(predicted_boxes.shape)}"
            )
        predicted_boxes = predicted_boxes[predicted_scores >= score_threshold]
    dtype = candidate_boxes.dtype if candidate_boxes.dtype.is_floating_point else torch.float32
    if len(candidate_boxes) == 0 or len(predicted_boxes) == 0:
        return torch.ones(len(candidate_boxes), dtype=dtype, device=candidate_boxes.device)
    iou = box_iou(candidate_boxes.float(), predicted_boxes.float().to(candidate_boxes.device))
    density = (iou >= iou_threshold).sum(dim=1).to(dtype)
    return 1.0 - density / density.max().clamp_min(1.0)
