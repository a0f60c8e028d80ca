"""Scoring segmentations against ground truth: the paper's metrics, truth readers, reports."""

from nucflow.evaluation._evaluate import EVALUATION_METHODS, PRED_METHOD, evaluate, positive_calls
from nucflow.evaluation._report import SCOPES, EvaluationReport, ImageScore, write_report
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
    "EVALUATION_METHODS",
    "METRICS",
    "PRED_METHOD",
    "SCOPES",
    "TRUTH_FORMATS",
    "Counts",
    "EvaluationReport",
    "ImageScore",
    "Truth",
    "aji",
    "balanced_accuracy",
    "count_instances",
    "count_points",
    "detect_format",
    "detection_f1",
    "dice",
    "evaluate",
    "object_dice",
    "object_hausdorff",
    "pair_files",
    "panoptic_quality",
    "positive_calls",
    "precision",
    "read_image",
    "read_labels",
    "read_truth",
    "recall",
    "write_report",
]
