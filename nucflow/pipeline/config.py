"""Settings of ``nucflow segment`` (``nucflow/configs/segment.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nucflow.config import (
    CONFIG_DIR,
    InvalidValue,
    at_least,
    between,
    check_fields,
    load_config,
    one_of,
    positive,
    setting,
)
from nucflow.methods import DEVICES, METHODS, TTA_MODES

__all__ = ["DEFAULT_SEGMENT_CONFIG", "InferenceConfig", "SegmentConfig", "TissueConfig", "load_segment_config"]

DEFAULT_SEGMENT_CONFIG = CONFIG_DIR / "segment.yaml"


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection on the slide thumbnail (see :func:`nucflow.slide.tissue_mask`)."""

    thumbnail_size: int = setting(1024, at_least(16))
    min_saturation: float = setting(0.07, between(0, 1, closed=True))
    max_luminance: float = setting(0.86, between(0, 1, closed=True))
    min_area_um2: float = setting(20_000.0, at_least(0))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class InferenceConfig:
    """Tiling and numerics of the model actors.

    ``tile_size`` None picks the smallest valid size with a core of at least 512 px. How
    many actors run, and their batch sizes, are cluster-side settings
    (:class:`nucflow.cluster.ClusterConfig`, ``nucflow/configs/cluster.yaml``).
    """

    margin: int = setting(32, at_least(0))
    tile_size: int | None = setting(None, positive())
    amp: bool = True
    channels_last: bool = True
    max_retries: int = setting(3, at_least(0))
    tta: str = setting("none", one_of(*TTA_MODES))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.tile_size is not None and not 2 * self.margin < self.tile_size:
            raise InvalidValue("margin", self.margin, f"be < tile_size/2 ({self.tile_size / 2:g}) to leave a core")


@dataclass(frozen=True)
class SegmentConfig:
    """Everything ``segment`` does besides its inputs and outputs.

    ``method`` is ``unet`` (the trained model), ``threshold`` or ``deconvolution`` (the
    paper's baselines, run at ``baseline_mpp`` µm/px). ``model_mpp`` runs the model at another
    working resolution than its card's (None: the card's). ``stain_profile`` names a file of
    ``nucflow/configs/stains/`` (or is a path to one) with the post-processing settings; None
    takes the model card's for ``unet`` and ``ki67`` for the baselines
    (:func:`nucflow.pipeline.image.with_stain_profile`).
    """

    method: str = setting("unet", one_of(*METHODS))
    model: str | None = None
    model_mpp: float | None = setting(None, between(0, 100))
    stain_profile: str | None = None
    baseline_mpp: float = setting(0.5, between(0, 100))
    baseline_sigma: float = setting(1.0, at_least(0))
    postprocess_block: int = setting(1024, at_least(16))
    postprocess_cpus: float = setting(0.0, at_least(0))
    postprocess_threads: int | None = setting(None, positive())
    postprocess_device: str = setting("auto", one_of(*DEVICES))
    tissue: TissueConfig = field(default_factory=TissueConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        check_fields(self)


def load_segment_config(path: str | Path | None = None) -> SegmentConfig:
    """``nucflow/configs/segment.yaml`` (or ``path``), strictly checked."""
    return load_config(SegmentConfig, path if path is not None else DEFAULT_SEGMENT_CONFIG)
