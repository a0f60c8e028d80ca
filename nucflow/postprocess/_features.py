"""Per-nucleus measurements of a labelled region: shape, stain optical density, outline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import shapely
from contourpy import contour_generator
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb

from nucflow.errors import InputError

__all__ = [
    "COLUMNS",
    "MapGeometry",
    "RegionStats",
    "RgbReader",
    "read_rgb_from_array",
    "region_stats",
    "stain_od",
]

#: ``read_rgb(row, col, rows, cols) -> (rows, cols, 3) uint8``, in probability-map pixels.
RgbReader = Callable[[int, int, int, int], np.ndarray]

#: Non-geometry columns of a nucleus table, in order, with their dtypes.
COLUMNS: dict[str, str] = {
    "id": "int64",
    "centroid_x": "float64",
    "centroid_y": "float64",
    "centroid_x_um": "float64",
    "centroid_y_um": "float64",
    "area_um2": "float64",
    "perimeter_um": "float64",
    "eccentricity": "float64",
    "solidity": "float64",
    "hematoxylin_od": "float64",
    "dab_od": "float64",
    "dab_positive": "bool",
    "mean_probability": "float64",
}

# Base-10 optical density of each 8-bit intensity, floored at 1e-6 transmission as
# skimage's separate_stains does (which works in natural log divided by ln 1e-6).
_OD_OF_BYTE = -np.log10(np.maximum(np.arange(256) / 255.0, 1e-6))


@dataclass(frozen=True)
class MapGeometry:
    """Where a probability map lies on its slide.

    Map pixel ``(r, c)`` covers level-0 pixels ``offset + [r, r + 1) * scale`` (continuous
    coordinates, pixel ``i`` spanning ``[i, i + 1)``), so its centre is at
    ``offset + (r + 0.5) * scale``; µm are level-0 pixels times ``slide_mpp``.
    """

    mpp: float
    level0_offset: tuple[float, float] = (0.0, 0.0)
    level0_scale: float = 1.0
    slide_mpp: float | None = None

    @property
    def um_per_level0_px(self) -> float:
        """µm per level-0 pixel (``slide_mpp``, else derived from ``mpp`` and the scale)."""
        return self.slide_mpp if self.slide_mpp else self.mpp / self.level0_scale

    def to_level0(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map pixel indices (float) to level-0 continuous ``(x, y)`` coordinates."""
        x = self.level0_offset[1] + (np.asarray(cols) + 0.5) * self.level0_scale
        y = self.level0_offset[0] + (np.asarray(rows) + 0.5) * self.level0_scale
        return x, y


def read_rgb_from_array(rgb: np.ndarray) -> RgbReader:
    """An :data:`RgbReader` over an in-memory (rows, cols, 3) uint8 image, white past its edges."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"RGB image must be (rows, cols, 3) uint8, got {rgb.shape} {rgb.dtype}")

    def read(row: int, col: int, rows: int, cols: int) -> np.ndarray:
        out = np.full((rows, cols, 3), 255, np.uint8)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + rows, rgb.shape[0]), min(col + cols, rgb.shape[1])
        if r1 > r0 and c1 > c0:
            out[r0 - row : r1 - row, c0 - col : c1 - col] = rgb[r0:r1, c0:c1]
        return out

    return read


def stain_od(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and DAB optical density (base 10) by colour deconvolution.

    Parameters
    ----------
    rgb : np.ndarray, shape (..., 3), uint8

    Returns
    -------
    (np.ndarray, np.ndarray)
        Hematoxylin and DAB OD, each of shape (...) float64, >= 0: ``skimage.color.rgb2hed``
        (Ruifrok-Johnston vectors) in base-10 units, i.e. 6 times its values; white is 0.
    """
    hed = np.maximum(_OD_OF_BYTE[rgb] @ hed_from_rgb, 0.0)
    return hed[..., 0], hed[..., 2]


@dataclass(frozen=True)
class RegionStats:
    """Pixel counts and moments of every label of a labelled region.

    Coordinates are taken relative to each label's bounding-box corner, so the sums are
    small exact integers: a nucleus gets bit-identical measures in any block that holds it.
    """

    boxes: list[tuple[slice, slice] | None]  # ndimage.find_objects, label i at i - 1
    start: np.ndarray  # (labels + 1, 2) int64: bounding-box corner (row, col)
    sums: np.ndarray  # (labels + 1, 6) float64: n, Σdr, Σdc, Σdr², Σdc², Σdr·dc


def region_stats(labels: np.ndarray) -> RegionStats:
    """Counts and moments of the labels 1..max of a (rows, cols) int label image."""
    count = int(labels.max(initial=0))
    boxes = ndi.find_objects(labels, max_label=count)
    start = np.zeros((count + 1, 2), np.int64)
    for index, box in enumerate(boxes, start=1):
        if box is not None:
            start[index] = box[0].start, box[1].start
    flat = labels.ravel()
    d_row = (np.arange(labels.shape[0])[:, None] - start[labels, 0]).ravel().astype(np.float64)
    d_col = (np.arange(labels.shape[1])[None, :] - start[labels, 1]).ravel().astype(np.float64)
    weights = (None, d_row, d_col, d_row * d_row, d_col * d_col, d_row * d_col)
    sums = np.stack([np.bincount(flat, weights=w, minlength=count + 1) for w in weights], axis=1)
    return RegionStats(boxes=boxes, start=start, sums=sums)


def region_measures(
    labels: np.ndarray,
    stats: RegionStats,
    indices: np.ndarray,
    prob: np.ndarray,
    rgb: np.ndarray | None,
    *,
    geometry: MapGeometry,
    origin: tuple[int, int],
    dab_threshold: float,
    dab_min_fraction: float,
) -> tuple[dict[str, np.ndarray], list[shapely.Polygon]]:
    """Measure the nuclei ``indices`` of ``labels`` (a region of the map at ``origin``).

    ``rgb`` covers the same region as ``labels`` (None: OD columns are NaN, none positive).
    Perimeter and solidity are those of the outline polygon (through pixel-edge midpoints).
    Returns the columns of :data:`COLUMNS` except ``id``, and level-0 outlines.
    """
    outlines = _outlines(labels, stats, indices, geometry=geometry, origin=origin)
    columns = _moment_columns(stats, indices, geometry=geometry, origin=origin)
    columns["perimeter_um"] = shapely.length(outlines) * geometry.um_per_level0_px
    columns["solidity"] = shapely.area(outlines) / shapely.area(shapely.convex_hull(outlines))
    means = _label_means(labels, stats.sums[:, 0], prob, rgb)
    columns["mean_probability"] = means["probability"][indices]
    columns["hematoxylin_od"] = means["hematoxylin"][indices]
    columns["dab_od"] = means["dab"][indices]
    dab, stained = columns["dab_od"], columns["dab_od"] + columns["hematoxylin_od"]
    columns["dab_positive"] = (dab >= dab_threshold) & (dab >= dab_min_fraction * stained)
    return columns, list(outlines)


def _moment_columns(
    stats: RegionStats, indices: np.ndarray, *, geometry: MapGeometry, origin: tuple[int, int]
) -> dict[str, np.ndarray]:
    n, s_r, s_c, s_rr, s_cc, s_rc = stats.sums[indices].T
    mean_r, mean_c = s_r / n, s_c / n
    rows = (stats.start[indices, 0] + origin[0]) + mean_r
    cols = (stats.start[indices, 1] + origin[1]) + mean_c
    x, y = geometry.to_level0(rows, cols)
    um = geometry.um_per_level0_px
    return {
        "centroid_x": x,
        "centroid_y": y,
        "centroid_x_um": x * um,
        "centroid_y_um": y * um,
        "area_um2": n * geometry.mpp**2,
        "eccentricity": _eccentricity(
            (s_rr - s_r * mean_r) / n, (s_cc - s_c * mean_c) / n, (s_rc - s_r * mean_c) / n
        ),
    }


def _eccentricity(var_r: np.ndarray, var_c: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Eccentricity of the ellipse with the same second moments (as skimage's regionprops)."""
    half_sum = (var_r + var_c) / 2
    root = np.hypot((var_r - var_c) / 2, cov)
    major, minor = half_sum + root, np.maximum(half_sum - root, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(major > 0, np.sqrt(1.0 - minor / major), 0.0)


def _label_means(
    labels: np.ndarray, sizes: np.ndarray, prob: np.ndarray, rgb: np.ndarray | None
) -> dict[str, np.ndarray]:
    inside = labels.ravel() > 0
    flat = labels.ravel()[inside]
    count = len(sizes) - 1
    sizes = np.maximum(sizes, 1)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=values, minlength=count + 1) / sizes

    means = {"probability": mean(prob.ravel()[inside] / 255.0)}
    if rgb is None:
        means["hematoxylin"] = means["dab"] = np.full(count + 1, np.nan)
    else:
        hematoxylin, dab = stain_od(rgb.reshape(-1, 3)[inside])
        means["hematoxylin"], means["dab"] = mean(hematoxylin), mean(dab)
    return means


def _outlines(
    labels: np.ndarray,
    stats: RegionStats,
    indices: np.ndarray,
    *,
    geometry: MapGeometry,
    origin: tuple[int, int],
) -> np.ndarray:
    """Level-0 outlines of the nuclei ``indices``: an object array of shapely Polygons."""
    rings = [_ring(labels, stats.boxes[index - 1], int(index)) for index in indices]
    if not rings:
        return np.zeros(0, dtype=object)
    rows_cols = np.concatenate(rings)
    x, y = geometry.to_level0(rows_cols[:, 0] + origin[0], rows_cols[:, 1] + origin[1])
    ring_of = np.repeat(np.arange(len(rings)), [len(ring) for ring in rings])
    polygons = shapely.polygons(shapely.linearrings(np.column_stack([x, y]), indices=ring_of))
    return shapely.simplify(polygons, 0.0)  # drops collinear vertices: same shape, a third


def _ring(labels: np.ndarray, box: tuple[slice, slice] | None, index: int) -> np.ndarray:
    """The boundary of one label through its pixel-edge midpoints (longest ring), (k, 2) rows/cols."""
    assert box is not None, "every measured label has a bounding box"
    crop = labels[box] == index
    padded = np.zeros((crop.shape[0] + 2, crop.shape[1] + 2))
    padded[1:-1, 1:-1] = crop
    lines = contour_generator(z=padded, line_type="Separate").lines(0.5)
    x_y = np.asarray(max(lines, key=len))  # type: ignore[arg-type]
    return np.column_stack([x_y[:, 1] + (box[0].start - 1), x_y[:, 0] + (box[1].start - 1)])
