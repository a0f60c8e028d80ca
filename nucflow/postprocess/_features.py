"""Per-nucleus measurements of a labelled region: shape, stain optical density, outline."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import shapely
from skimage.color import rgb2hed
from skimage.measure import find_contours, regionprops
from skimage.measure._regionprops import RegionProperties

from nucflow.errors import InputError

__all__ = ["COLUMNS", "MapGeometry", "RgbReader", "read_rgb_from_array", "stain_od"]

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

# skimage's separate_stains divides natural logs by ln(1e-6); times 6 gives base-10 OD.
_OD_PER_SKIMAGE_UNIT = -math.log10(1e-6)


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
    rgb : np.ndarray, shape (rows, cols, 3), uint8

    Returns
    -------
    (np.ndarray, np.ndarray)
        Hematoxylin and DAB OD, each (rows, cols) float64, >= 0 (Ruifrok-Johnston vectors,
        ``skimage.color.rgb2hed``; white is 0).
    """
    hed = rgb2hed(rgb) * _OD_PER_SKIMAGE_UNIT
    return hed[..., 0], hed[..., 2]


def region_measures(
    labels: np.ndarray,
    indices: np.ndarray,
    prob: np.ndarray,
    rgb: np.ndarray | None,
    *,
    geometry: MapGeometry,
    origin: tuple[int, int],
    dab_threshold: float,
) -> tuple[dict[str, np.ndarray], list[shapely.Polygon]]:
    """Measure the nuclei ``indices`` of ``labels`` (a region of the map at ``origin``).

    ``rgb`` covers the same region as ``labels`` (None: OD columns are NaN, none positive).
    Returns the columns of :data:`COLUMNS` except ``id``, and level-0 outlines.
    """
    count = int(labels.max())
    props = regionprops(labels)
    by_label = {p.label: p for p in props}
    chosen = [by_label[int(i)] for i in indices]
    columns = _shape_columns(chosen, geometry=geometry, origin=origin)
    means = _label_means(labels, count, prob, rgb)
    columns["mean_probability"] = means["probability"][indices]
    columns["hematoxylin_od"] = means["hematoxylin"][indices]
    columns["dab_od"] = means["dab"][indices]
    columns["dab_positive"] = columns["dab_od"] >= dab_threshold
    outlines = [_outline(p, geometry=geometry, origin=origin) for p in chosen]
    return columns, outlines


def _shape_columns(
    props: list[RegionProperties], *, geometry: MapGeometry, origin: tuple[int, int]
) -> dict[str, np.ndarray]:
    mpp = geometry.mpp
    centroids = np.array([p.centroid for p in props], float).reshape(-1, 2)
    x, y = geometry.to_level0(centroids[:, 0] + origin[0], centroids[:, 1] + origin[1])
    um = geometry.um_per_level0_px
    return {
        "centroid_x": x,
        "centroid_y": y,
        "centroid_x_um": x * um,
        "centroid_y_um": y * um,
        "area_um2": np.array([p.area for p in props], float) * mpp**2,
        "perimeter_um": np.array([p.perimeter for p in props], float) * mpp,
        "eccentricity": np.array([p.eccentricity for p in props], float),
        "solidity": np.array([p.solidity for p in props], float),
    }


def _label_means(
    labels: np.ndarray, count: int, prob: np.ndarray, rgb: np.ndarray | None
) -> dict[str, np.ndarray]:
    flat = labels.ravel()
    sizes = np.maximum(np.bincount(flat, minlength=count + 1), 1)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=values.ravel(), minlength=count + 1) / sizes

    means = {"probability": mean(prob.astype(np.float64) / 255.0)}
    if rgb is None:
        means["hematoxylin"] = means["dab"] = np.full(count + 1, np.nan)
    else:
        hematoxylin, dab = stain_od(rgb)
        means["hematoxylin"], means["dab"] = mean(hematoxylin), mean(dab)
    return means


def _outline(
    prop: RegionProperties, *, geometry: MapGeometry, origin: tuple[int, int]
) -> shapely.Polygon:
    """The nucleus boundary through the pixel-edge midpoints (longest contour), level 0."""
    padded = np.pad(prop.image, 1).astype(np.float32)
    contour = max(find_contours(padded, 0.5, fully_connected="high"), key=len)
    rows = contour[:, 0] + prop.bbox[0] - 1 + origin[0]
    cols = contour[:, 1] + prop.bbox[1] - 1 + origin[1]
    x, y = geometry.to_level0(rows, cols)
    return shapely.Polygon(np.column_stack([x, y]))
