"""Framework-agnostic metrics (numpy/scipy/scikit-image only)."""

# -- detection (Detectron2 adapter engineer)
from sparse_ext.metrics.detection import (
    DEFAULT_SCORE_THRESHOLDS,
    DetectionCounts,
    average_recall_precision,
    box_iou,
    count_detections,
    detection_f1,
    exclusive_recall,
    exclusive_recall_per_class,
    match_boxes,
)

# -- segmentation and max-min (MMSeg adapter engineer)
from sparse_ext.metrics.maxmin import classification_error, f1_minus, f1_plus
from sparse_ext.metrics.segmentation import (
    InstanceOverlaps,
    ObjectCounts,
    aggregated_jaccard_index,
    aji_counts,
    binary_confusion,
    boundary_band,
    connected_components,
    dice,
    foreground_mask,
    instance_overlaps,
    iou,
    masked_dice,
    masked_iou,
    match_objects,
    object_counts,
    object_f1,
)

__all__ = [
    # detection
    "DEFAULT_SCORE_THRESHOLDS",
    "DetectionCounts",
    "average_recall_precision",
    "box_iou",
    "count_detections",
    "detection_f1",
    "exclusive_recall",
    "exclusive_recall_per_class",
    "match_boxes",
    # segmentation and max-min
    "InstanceOverlaps",
    "ObjectCounts",
    "aggregated_jaccard_index",
    "aji_counts",
    "binary_confusion",
    "boundary_band",
    "classification_error",
    "connected_components",
    "dice",
    "f1_minus",
    "f1_plus",
    "foreground_mask",
    "instance_overlaps",
    "iou",
    "masked_dice",
    "masked_iou",
    "match_objects",
    "object_counts",
    "object_f1",
]
