"""``segment``: whole slides in, nucleus tables, summaries and QC pictures out.

The names are imported on first use (:mod:`nucflow._lazy`), and :func:`segment` loads Ray,
torch and the post-processing only when a slide has work left (:mod:`nucflow.pipeline.outputs`).
"""

from typing import TYPE_CHECKING

from nucflow._lazy import lazy_exports

if TYPE_CHECKING:
    from nucflow.pipeline.config import InferenceConfig, SegmentConfig, TissueConfig, load_segment_config
    from nucflow.pipeline.run import Progress, SegmentResult, SlideResult, segment

_EXPORTS = {
    **dict.fromkeys(("InferenceConfig", "SegmentConfig", "TissueConfig", "load_segment_config"),
                    "nucflow.pipeline.config"),
    **dict.fromkeys(("Progress", "SegmentResult", "SlideResult", "segment"), "nucflow.pipeline.run"),
}

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

__getattr__ = lazy_exports(__name__, _EXPORTS)
