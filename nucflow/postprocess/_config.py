"""Post-processing settings per stain profile (``nucflow/configs/stains/<name>.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucflow.config import (
    CONFIG_DIR,
    InvalidValue,
    at_least,
    between,
    check_fields,
    config_file,
    load_config,
    odd,
    one_of,
    positive,
    setting,
)
from nucflow.errors import ConfigError
from nucflow.stain import StainVectors

__all__ = [
    "PixelSizes", "PostprocessConfig", "dab_intensity", "dab_positive", "load_stain_profile", "stain_profiles",
]

STAIN_DIR = CONFIG_DIR / "stains"


@dataclass(frozen=True)
class PixelSizes:
    """The physical settings of a :class:`PostprocessConfig` in pixels of one resolution."""

    min_distance: int
    min_area: int
    max_diameter: int
    max_hole_area: int
    erosion: int
    expansion: int
    halo: int
    min_dynamic: float = 0.0


#: The classes a nucleus can get: QuPath's Negative / Positive (positive/negative only) or 1+ / 2+ / 3+.
CLASS_NAMES = ("Negative", "Positive", "1+", "2+", "3+")


@dataclass(frozen=True)
class PostprocessConfig:
    """How a probability map becomes labelled nuclei, and when a nucleus is DAB-positive.

    Pixel settings (``median_size``, ``opening_radius``, ``closing_radius``) apply at the
    probability map's resolution; physical ones (µm, µm²) are converted with its µm/px.
    A nucleus is DAB-positive when its mean DAB optical density is at least ``dab_threshold``
    and at least ``dab_min_fraction`` of its hematoxylin + DAB density (dark hematoxylin
    leaks into the DAB channel of the standard stain vectors). ``expand_um`` grows every
    label by that many µm after the watershed (into background only), before the size limits;
    a profile may set it (``ki67`` does, chosen on the validation table), and a model trained
    on shrunk masks adds its card's ``mask_shrink_um`` to it. It is rounded to whole pixels
    (0.25 µm is 1 px at 0.25 µm/px, the bundled model's, and 0 px at 0.5 µm/px, the baselines').
    ``interior_markers`` is set from the model card of an "interior" head (the map is the mean of
    S's mask and interior channels), never in a profile: nuclei are the map at or above
    ``threshold / 2`` and the watershed markers are the interiors, the map at or above
    ``(1 + threshold) / 2``, instead of the distance transform's maxima.

    ``min_dynamic_um`` (0 = off): a distance maximum is a watershed marker only if its dynamic
    is at least this many µm, i.e. the distance falls at least that far on every path from it
    to a higher maximum of its component (an h-maximum): a shallow bump on a nucleus' outline
    or a waist of an elongated nucleus is not a second nucleus. A component's highest maximum
    always stays.

    ``stain_gate`` (0 = off) applies to a model's map, not to the baselines: in each tile's core,
    a pixel more DAB than hematoxylin whose hematoxylin + DAB optical density is under
    ``stain_gate`` times the median density of the core's nucleus pixels (probability at least
    ``threshold``) gets probability 0 (:func:`nucflow.stain.stain_gate`): light-brown cytoplasm
    and stroma, not nuclei.

    Scoring (see :mod:`nucflow.scoring`): a positive nucleus is 1+, and 2+ / 3+ from the
    mean DAB OD ``intensity_thresholds`` (two increasing values above ``dab_threshold``;
    empty: positive/negative only, no H-score). The Ki67 hot spot is the field of
    ``hotspot_area_mm2`` (a ``hotspot_shape`` "circle" or "square") holding the most
    positive nuclei. ``class_colours`` replaces QuPath's colour (RGB 0-255) of a class
    (Negative, Positive, 1+, 2+, 3+) in the QuPath GeoJSON and the QC picture.

    ``stain_vectors`` (see :mod:`nucflow.stain`) unmixes the nuclei's hematoxylin and DAB densities:
    "fixed" (Ruifrok and Johnston's), "macenko" (estimated per slide on its thumbnail's tissue,
    the fixed ones when that fails) or ``{hematoxylin: [r, g, b], dab: [r, g, b]}``.
    """

    stain_profile: str = "ki67"
    threshold: float = setting(0.5, between(0, 1))
    median_size: int = setting(5, odd())
    opening_radius: int = setting(1, at_least(0))
    closing_radius: int = setting(1, at_least(0))
    fill_holes: bool = True
    min_distance_um: float = setting(3.0, positive())
    min_dynamic_um: float = setting(0.0, at_least(0))
    min_area_um2: float = setting(10.0, at_least(0))
    max_diameter_um: float = setting(30.0, positive())
    erosion_um: float = setting(0.0, at_least(0))
    expand_um: float = setting(0.0, at_least(0))
    interior_markers: bool = False
    dab_threshold: float = 0.18
    dab_min_fraction: float = setting(0.4, between(0, 1, closed=True))
    intensity_thresholds: tuple[float, ...] = (0.4, 0.6)
    hotspot_area_mm2: float = setting(0.2, positive())
    hotspot_shape: str = setting("circle", one_of("circle", "square"))
    class_colours: dict[str, list[int]] = field(default_factory=dict)
    stain_vectors: str | StainVectors = "fixed"
    stain_gate: float = setting(0.0, at_least(0))

    def __post_init__(self) -> None:
        check_fields(self)
        bounds = (self.dab_threshold, *self.intensity_thresholds)
        if len(self.intensity_thresholds) not in (0, 2) or any(
            not (low < high) for low, high in zip(bounds, bounds[1:], strict=False)
        ):
            raise InvalidValue(
                "intensity_thresholds", list(self.intensity_thresholds),
                f"be two increasing mean DAB ODs above dab_threshold (2+ and 3+ lower bounds; "
                f"dab_threshold {self.dab_threshold} is 1+), or [] for positive/negative only",
                template="{key} must {requirement}; got {value!r}",
            )
        for name, rgb in self.class_colours.items():
            if name not in CLASS_NAMES or not (isinstance(rgb, list | tuple) and len(rgb) == 3 and all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb)):
                raise InvalidValue(
                    f"class_colours.{name}", rgb, f"name a class ({', '.join(CLASS_NAMES)}) and be [R, G, B], "
                    "integers 0-255", template="{key} must {requirement}; got {value!r}",
                )

        if isinstance(self.stain_vectors, str) and self.stain_vectors not in ("fixed", "macenko"):
            raise InvalidValue("stain_vectors", self.stain_vectors, "be 'fixed', 'macenko' or "
                               "{hematoxylin: [r, g, b], dab: [r, g, b]}")

    def intensity(self, dab_od: np.ndarray, hematoxylin_od: np.ndarray) -> np.ndarray:
        """DAB intensity class (0, 1, 2, 3 for negative, 1+, 2+, 3+) of nuclei (see :func:`dab_intensity`)."""
        return dab_intensity(dab_od, self.positive(dab_od, hematoxylin_od), self.intensity_thresholds)

    def positive(self, dab_od: np.ndarray, hematoxylin_od: np.ndarray) -> np.ndarray:
        """The positivity call of nuclei with these mean DAB and hematoxylin ODs (see :func:`dab_positive`)."""
        return dab_positive(dab_od, hematoxylin_od, dab_threshold=self.dab_threshold,
                            dab_min_fraction=self.dab_min_fraction)

    def in_pixels(self, mpp: float) -> PixelSizes:
        """The physical settings at ``mpp`` µm/px, and the block halo they need."""
        if not mpp > 0:
            raise ConfigError(f"mpp must be > 0 µm/px, got {mpp}")
        diameter = math.ceil(self.max_diameter_um / mpp)
        erosion = round(self.erosion_um / mpp)
        expansion = round(self.expand_um / mpp)
        min_distance = max(1, round(self.min_distance_um / mpp))
        # Each filter reaches this far beyond a nucleus; the halo must cover a whole nucleus
        # plus every footprint so a block sees what the whole map would.
        reach = (
            self.median_size // 2
            + 2 * (self.opening_radius + self.closing_radius)
            + min_distance
            + erosion
            + 2 * expansion
        )
        return PixelSizes(
            min_distance=min_distance,
            min_area=math.ceil(self.min_area_um2 / mpp**2),
            max_diameter=diameter,
            max_hole_area=math.ceil(math.pi * diameter**2 / 4),
            erosion=erosion,
            expansion=expansion,
            halo=diameter + reach + 2,
            min_dynamic=self.min_dynamic_um / mpp,
        )


def dab_positive(
    dab_od: np.ndarray, hematoxylin_od: np.ndarray, *, dab_threshold: float, dab_min_fraction: float
) -> np.ndarray:
    """DAB positivity of nuclei from their mean optical densities (base 10): the one rule that
    ``segment``'s ``dab_positive`` column and ``evaluate``'s Ki67 calls both use.

    A nucleus is positive when its mean DAB OD is at least ``dab_threshold`` and at least
    ``dab_min_fraction`` of its hematoxylin + DAB OD. NaN densities are never positive.
    """
    dab = np.asarray(dab_od, np.float64)
    stained = dab + np.asarray(hematoxylin_od, np.float64)
    return (dab >= dab_threshold) & (dab >= dab_min_fraction * stained)


def dab_intensity(dab_od: np.ndarray, positive: np.ndarray, thresholds: tuple[float, ...]) -> np.ndarray:
    """DAB intensity class of nuclei, int8: 0 when not ``positive``, else 1 (1+), plus one for
    each of ``thresholds`` (the 2+ and 3+ lower bounds of the mean DAB OD) reached."""
    dab = np.asarray(dab_od, np.float64)
    grade = np.ones(dab.shape, np.int8)
    for bound in thresholds:
        grade += dab >= bound
    return np.where(np.asarray(positive, bool), grade, 0).astype(np.int8)


def stain_profiles() -> list[str]:
    """Names of the stain profiles shipped in ``nucflow/configs/stains``."""
    return sorted(p.name.removesuffix(".yaml") for p in STAIN_DIR.iterdir() if p.name.endswith(".yaml"))


def load_stain_profile(name_or_path: str | Path) -> PostprocessConfig:
    """Load a stain profile by name (``"ki67"``, ``"her2"``) or from a YAML file path.

    Raises
    ------
    ConfigError
        If the name is unknown, the file is missing, or it holds an unknown key.
    """
    return load_config(PostprocessConfig, config_file(name_or_path, "stains", what="stain profile"))
