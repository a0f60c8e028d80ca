"""Scoring segmentations against ground truth: the paper's metrics, truth readers, reports."""

from nucflow.evaluation._truth import (
    TRUTH_FORMATS,
    Truth,
    detect_format,
    pair_files,
    read_image,
    read_labels,
    read_truth,
)
from nucflow.evaluation.metrics import (
    METRICS,
    Counts,
    aji,
    balanced_accuracy,
    count_instances,
    count_points,
    detection_f1,
    dice,
    object_dice,
    object_hausdorff,
    panoptic_quality,
    precision,
    recall,
)

__all__ = [
    "METRICS",
    "TRUTH_FORMATS",
    "Counts",
    "Truth",
    "aji",
    "balanced_accuracy",
    "count_instances",
    "count_points",
    "detect_format",
    "detection_f1",
    "dice",
    "object_dice",
    "object_hausdorff",
    "pair_files",
    "panoptic_quality",
    "precision",
    "read_image",
    "read_labels",
    "read_truth",
    "recall",
]
