"""IHC scores of a nucleus table: intensity classes, H-score, labelling index, Ki67 hot spot.

Each nucleus carries a DAB intensity class (column ``dab_intensity``: 0 negative, 1, 2, 3 for
1+, 2+, 3+) from its mean DAB optical density and the stain profile's thresholds
(:meth:`nucflow.postprocess.PostprocessConfig.intensity`). From those:

- **labelling index** (%): positive nuclei (1+ and above) per 100 nuclei;
- **H-score** (0-300): ``1 x %1+ + 2 x %2+ + 3 x %3+`` (McCarty et al. 1985), None for a
  profile that grades positive/negative only;
- **hot spot**: the field of the profile's area (default 0.2 mm², a circle: the round
  high-power field of a 40x microscope objective that hot-spot counts are made in) holding
  the most positive nuclei, and the labelling index inside it. Candidate field centres are
  every positive nucleus and a square grid of pitch ``size / 4`` (``size``: the circle's
  radius or half the square's side) over the positive nuclei; counts come from a KD-tree.
  Ties go to the field with the higher index, then the smaller y, then x.

Scores are computed on the nucleus table (centroids in µm), for a whole slide and for each
region of interest. Nothing here knows about tiles or Dask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.spatial import cKDTree

from nucflow.stain import StainVectors

__all__ = [
    "AREA_BINS_UM2", "CLASS_COLOURS", "DAB_BINS", "INTENSITY_CLASSES", "HotSpot", "ScoreAccumulator",
    "ScoringProfile", "class_name", "h_score", "hot_spot", "hot_spot_candidates", "score_nuclei",
]

#: QuPath's names of the intensity classes, in order of the ``dab_intensity`` column.
INTENSITY_CLASSES = ("Negative", "1+", "2+", "3+")

#: QuPath's default colours (RGB 0-255) of its Negative, Positive and 1+/2+/3+ classes.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "Negative": (112, 112, 225),
    "Positive": (200, 50, 50),
    "1+": (255, 215, 0),
    "2+": (225, 150, 50),
    "3+": (200, 50, 50),
}

#: Histogram bins the summary keeps for the cohort report (last bin also counts larger values).
AREA_BINS_UM2 = np.arange(0.0, 205.0, 5.0)
DAB_BINS = np.round(np.arange(0.0, 1.55, 0.05), 2)


class ScoringProfile(Protocol):
    """The stain-profile settings scoring reads (:class:`nucflow.postprocess.PostprocessConfig`)."""

    dab_threshold: float
    intensity_thresholds: tuple[float, ...]
    hotspot_area_mm2: float
    hotspot_shape: str


def class_name(intensity: int, *, graded: bool) -> str:
    """QuPath class of an intensity: Negative, 1+/2+/3+ (graded) or Positive (ungraded)."""
    if intensity <= 0:
        return "Negative"
    return INTENSITY_CLASSES[intensity] if graded else "Positive"


def h_score(intensity: np.ndarray, *, graded: bool = True) -> float | None:
    """H-score (0-300) of nuclei with these intensity classes; None when ungraded or no nucleus."""
    intensity = np.asarray(intensity)
    if not graded or intensity.size == 0:
        return None
    return float(100.0 * np.clip(intensity, 0, 3).sum() / intensity.size)


@dataclass(frozen=True)
class HotSpot:
    """The field with the most positive nuclei: its centre (µm), shape, size and counts."""

    x_um: float
    y_um: float
    shape: str
    area_mm2: float
    size_um: float  # circle: radius; square: half the side
    positive: int
    nuclei: int

    @property
    def labelling_index_percent(self) -> float:
        return 100.0 * self.positive / self.nuclei if self.nuclei else 0.0

    def as_dict(self, *, um_per_level0_px: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "shape": self.shape, "area_mm2": self.area_mm2, "size_um": round(self.size_um, 3),
            "centre_x_um": round(self.x_um, 3), "centre_y_um": round(self.y_um, 3),
            "positive": self.positive, "nuclei": self.nuclei,
            "labelling_index_percent": round(self.labelling_index_percent, 3),
        }
        if um_per_level0_px:
            out["centre_x"] = round(self.x_um / um_per_level0_px, 2)
            out["centre_y"] = round(self.y_um / um_per_level0_px, 2)
            out["size_px"] = round(self.size_um / um_per_level0_px, 2)
        return out


def _field(area_mm2: float, shape: str) -> tuple[float, float]:
    """(size in µm, Minkowski p) of a field: a circle's radius (p=2) or half a square's side (p=inf)."""
    area_um2 = area_mm2 * 1e6
    if shape == "circle":
        return math.sqrt(area_um2 / math.pi), 2.0
    if shape == "square":
        return math.sqrt(area_um2) / 2.0, math.inf
    raise ValueError(f"hot spot shape must be 'circle' or 'square', got {shape!r}")


def hot_spot_candidates(x_um: np.ndarray, y_um: np.ndarray, size_um: float) -> np.ndarray:
    """Candidate field centres (n, 2): the points themselves and a grid of pitch ``size / 4`` over them."""
    points = np.column_stack([x_um, y_um]).astype(np.float64)
    if points.size == 0:
        return points.reshape(0, 2)
    pitch = size_um / 4.0
    low, high = points.min(axis=0), points.max(axis=0)
    gx = np.arange(low[0], high[0] + pitch, pitch)
    gy = np.arange(low[1], high[1] + pitch, pitch)
    grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    return np.concatenate([points, grid])


def hot_spot(
    x_um: np.ndarray, y_um: np.ndarray, positive: np.ndarray, *, area_mm2: float = 0.2, shape: str = "circle"
) -> HotSpot | None:
    """The field of ``area_mm2`` (``shape`` circle or square) with the most positive nuclei.

    ``x_um``, ``y_um``: nucleus centroids; ``positive``: their calls. A nucleus is in a field
    when its centroid is (on the boundary counts). None when no nucleus is positive.
    """
    x_um, y_um = np.asarray(x_um, np.float64), np.asarray(y_um, np.float64)
    positive = np.asarray(positive, bool)
    size, p = _field(area_mm2, shape)
    if not positive.any():
        return None
    px, py = x_um[positive], y_um[positive]
    candidates = hot_spot_candidates(px, py, size)
    counts = cKDTree(np.column_stack([px, py])).query_ball_point(candidates, size, p=p, return_length=True)
    best = int(counts.max())
    tied = candidates[counts == best]
    totals = cKDTree(np.column_stack([x_um, y_um])).query_ball_point(tied, size, p=p, return_length=True)
    pick = np.lexsort((tied[:, 0], tied[:, 1], totals))[0]  # fewest nuclei = highest index, then y, x
    return HotSpot(x_um=float(tied[pick, 0]), y_um=float(tied[pick, 1]), shape=shape, area_mm2=area_mm2,
                   size_um=size, positive=best, nuclei=int(totals[pick]))


def score_nuclei(
    x_um: np.ndarray, y_um: np.ndarray, intensity: np.ndarray, profile: ScoringProfile,
    *, um_per_level0_px: float | None = None,
) -> dict[str, Any]:
    """Counts per intensity class, labelling index, H-score and hot spot of a set of nuclei."""
    intensity = np.asarray(intensity)
    graded = len(profile.intensity_thresholds) > 0
    counts = np.bincount(np.clip(intensity, 0, 3).astype(np.int64), minlength=4)
    n, positive = int(intensity.size), int(counts[1:].sum())
    spot = hot_spot(x_um, y_um, intensity > 0, area_mm2=profile.hotspot_area_mm2, shape=profile.hotspot_shape)
    score = h_score(intensity, graded=graded)
    return {
        "nuclei": n,
        "positive": positive,
        "labelling_index_percent": round(100.0 * positive / n, 3) if n else 0.0,
        "intensity_counts": {"Negative": int(counts[0]), **(
            {name: int(c) for name, c in zip(INTENSITY_CLASSES[1:], counts[1:], strict=True)}
            if graded else {"Positive": positive})},
        "h_score": None if score is None else round(score, 3),
        "hot_spot": None if spot is None else spot.as_dict(um_per_level0_px=um_per_level0_px),
    }


class ScoreAccumulator:
    """Gathers what scoring needs from a nucleus table part by part (a few numbers per nucleus).

    ``add(part, regions)`` takes a nucleus table part and, optionally, the name of the region
    each nucleus lies in (None: outside every region); :meth:`summary` scores the whole and
    each region, and gives area and DAB histograms for the cohort report.
    """

    def __init__(self, profile: ScoringProfile) -> None:
        self.profile = profile
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._intensity: list[np.ndarray] = []
        self._regions: list[np.ndarray] = []
        self._area_hist = np.zeros(len(AREA_BINS_UM2) - 1, np.int64)
        self._dab_hist = np.zeros(len(DAB_BINS) - 1, np.int64)

    def add(self, part: Mapping[str, Any], regions: Iterable[str | None] | None = None) -> None:
        x = np.asarray(part["centroid_x_um"], np.float64)
        self._x.append(x)
        self._y.append(np.asarray(part["centroid_y_um"], np.float64))
        self._intensity.append(np.asarray(part["dab_intensity"], np.int8))
        self._regions.append(np.full(x.size, None, object) if regions is None else np.asarray(list(regions), object))
        self._area_hist += _histogram(part["area_um2"], AREA_BINS_UM2)
        self._dab_hist += _histogram(part["dab_od"], DAB_BINS)

    def summary(
        self, *, um_per_level0_px: float | None = None, region_areas_mm2: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Scores of all nuclei and of each region (every region of ``region_areas_mm2``, with
        its tissue area, even one without nuclei), the intensity class bounds and histograms."""
        x, y, intensity, regions = (
            np.concatenate(parts) if parts else np.zeros(0, dtype)
            for parts, dtype in ((self._x, float), (self._y, float), (self._intensity, np.int8),
                                 (self._regions, object))
        )
        out = score_nuclei(x, y, intensity, self.profile, um_per_level0_px=um_per_level0_px)
        areas = dict(region_areas_mm2 or {})
        names = list(areas) + sorted({r for r in regions if r is not None} - set(areas))
        if names:
            out["regions"] = {
                name: {**score_nuclei(x[regions == name], y[regions == name], intensity[regions == name],
                                      self.profile, um_per_level0_px=um_per_level0_px),
                       **(_area_figures(areas[name], int((regions == name).sum())) if name in areas else {})}
                for name in names
            }
        out["intensity_bounds"] = [self.profile.dab_threshold, *self.profile.intensity_thresholds]
        vectors = getattr(self.profile, "stain_vectors", None)
        if isinstance(vectors, StainVectors):  # the ones used (estimated for this slide, or why not)
            out["stain_vectors"] = vectors.summary()
        out["histograms"] = {
            "area_um2": {"edges": AREA_BINS_UM2.tolist(), "counts": self._area_hist.tolist()},
            "dab_od": {"edges": DAB_BINS.tolist(), "counts": self._dab_hist.tolist()},
        }
        return out


def _area_figures(area_mm2: float, nuclei: int) -> dict[str, float]:
    """A region's tissue area and nucleus density (0 where it has no tissue)."""
    return {"tissue_area_mm2": round(area_mm2, 4),
            "nuclei_per_mm2": round(nuclei / area_mm2, 2) if area_mm2 > 0 else 0.0}


def _histogram(values: Any, edges: np.ndarray) -> np.ndarray:
    """Counts per bin of ``edges``; values past the last edge go to the last bin, NaN nowhere."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0]
