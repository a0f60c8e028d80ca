"""Settings of ``nucflow segment`` (``nucflow/configs/segment.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nucflow.config import CONFIG_DIR, load_config
from nucflow.errors import ConfigError

__all__ = ["DEFAULT_SEGMENT_CONFIG", "InferenceConfig", "SegmentConfig", "TissueConfig", "load_segment_config"]

DEFAULT_SEGMENT_CONFIG = CONFIG_DIR / "segment.yaml"


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection on the slide thumbnail (see :func:`nucflow.slide.tissue_mask`)."""

    thumbnail_size: int = 1024
    min_saturation: float = 0.07
    max_luminance: float = 0.86
    min_area_um2: float = 20_000.0


@dataclass(frozen=True)
class InferenceConfig:
    """Tiling and numerics of the model actors.

    ``tile_size`` None picks the smallest valid size with a core of at least 512 px. How
    many actors run, and their batch sizes, are cluster-side settings
    (:class:`nucflow.cluster.ClusterConfig`, ``nucflow/configs/cluster.yaml``).
    """

    margin: int = 32
    tile_size: int | None = None
    amp: bool = True
    channels_last: bool = True
    max_retries: int = 3
    tta: str = "none"

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ConfigError(f"inference.margin must be >= 0, got {self.margin}")
        from nucflow.inference.predictors import TTA_MODES

        if self.tta not in TTA_MODES:
            raise ConfigError(f"inference.tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")
        if self.max_retries < 0:
            raise ConfigError(f"inference.max_retries must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class SegmentConfig:
    """Everything ``segment`` does besides its inputs and outputs.

    ``method`` is ``unet`` (the trained model), ``threshold`` or ``deconvolution`` (the
    paper's baselines, run at ``baseline_mpp`` µm/px). ``model_mpp`` runs the model at another
    working resolution than its card's (None: the card's). ``stain_profile`` names a file of
    ``nucflow/configs/stains/`` (or is a path to one) with the post-processing settings.
    """

    method: str = "unet"
    model: str | None = None
    model_mpp: float | None = None
    stain_profile: str = "ki67"
    baseline_mpp: float = 0.5
    baseline_sigma: float = 1.0
    postprocess_block: int = 1024
    postprocess_cpus: float = 0.0
    postprocess_threads: int | None = None
    tissue: TissueConfig = field(default_factory=TissueConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        if self.postprocess_threads is not None and self.postprocess_threads < 1:
            raise ConfigError(f"postprocess_threads must be >= 1 or null, got {self.postprocess_threads}")
        for name in ("baseline_mpp", "model_mpp"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 < value < 100):
                raise ConfigError(f"{name} must be a positive number of µm per pixel, got {value!r}")
        if self.postprocess_cpus < 0:
            raise ConfigError(f"postprocess_cpus must be >= 0, got {self.postprocess_cpus}")


def load_segment_config(path: str | Path | None = None) -> SegmentConfig:
    """``nucflow/configs/segment.yaml`` (or ``path``), strictly checked."""
    return load_config(SegmentConfig, path if path is not None else DEFAULT_SEGMENT_CONFIG)
