"""``segment``: whole slides in, nucleus tables, summaries and QC pictures out."""

from nucflow.pipeline.config import InferenceConfig, SegmentConfig, TissueConfig, load_segment_config
from nucflow.pipeline.run import Progress, SegmentResult, SlideResult, segment

__all__ = [
    "InferenceConfig",
    "Progress",
    "SegmentConfig",
    "SegmentResult",
    "SlideResult",
    "TissueConfig",
    "load_segment_config",
    "segment",
]
