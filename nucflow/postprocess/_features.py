"""Per-nucleus measurements of a labelled region: shape, stain optical density, outline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import cast

import numpy as np
import shapely
from contourpy import LineType, contour_generator

from nucflow.errors import InputError
from nucflow.postprocess._config import dab_intensity, dab_positive
from nucflow.slide.tiles import crop_padded
from nucflow.stain import StainVectors, stain_od

__all__ = [
    "COLUMNS",
    "MapGeometry",
    "RegionStats",
    "RgbReader",
    "Runs",
    "box_slices",
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
    "dab_intensity": "int8",
    "mean_probability": "float64",
}

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
        return crop_padded(rgb, row, col, rows, cols)

    return read


@dataclass(frozen=True)
class RegionStats:
    """Pixel counts and moments of every label of a labelled region.

    Coordinates are taken relative to each label's bounding-box corner, so the sums are
    small exact integers: a nucleus gets bit-identical measures in any block that holds it.
    """

    start: np.ndarray  # (labels + 1, 2) int64: bounding-box corner (row, col)
    sums: np.ndarray  # (labels + 1, 6) float64: n, Σdr, Σdc, Σdr², Σdc², Σdr·dc
    runs: Runs  # the labels' row runs they were counted from
    stop: np.ndarray  # (labels + 1, 2) int64: bounding-box end (row, col), past the last pixel

    @cached_property
    def boxes(self) -> list[tuple[slice, slice] | None]:
        """``ndimage.find_objects``' slices (label i at i - 1), built when first asked for."""
        return box_slices(self.start, self.stop)


@dataclass(frozen=True)
class Runs:
    """The labelled pixels of a (rows, cols) label image as row runs, in raster order."""

    label: np.ndarray  # (runs,) int64, > 0
    start: np.ndarray  # (runs,) int64: flat index of the run's first pixel
    length: np.ndarray  # (runs,) int64

    @classmethod
    def of(cls, labels: np.ndarray) -> Runs:
        """The runs of equal non-zero labels along each row of ``labels``."""
        new = np.empty(labels.shape, bool)
        new[:, 0] = True
        np.not_equal(labels[:, 1:], labels[:, :-1], out=new[:, 1:])
        start = np.flatnonzero(new)  # every run, background too; none crosses a row end
        length = np.diff(start, append=labels.size)
        label = labels.ravel()[start].astype(np.int64)
        inside = label > 0
        return cls(label=label[inside], start=start[inside], length=length[inside])

    def extent(self, count: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """The bounding boxes of the labels 1..``count`` of a ``cols``-wide image as their
        first and past-the-end (row, col), (count + 1, 2) int64 each; 0 for absent labels and
        the background (``ndi.find_objects``' slices, as arrays)."""
        row, col = np.divmod(self.start, cols)
        # Rows from the first and last run (raster order), columns by min / max.
        first = np.zeros(count + 1, np.int64)
        last = np.zeros(count + 1, np.int64)
        first[self.label[::-1]] = row[::-1]
        last[self.label] = row + 1
        left = np.full(count + 1, cols, np.int64)
        right = np.zeros(count + 1, np.int64)
        np.minimum.at(left, self.label, col)
        np.maximum.at(right, self.label, col + self.length)
        present = np.zeros(count + 1, bool)
        present[self.label] = True
        corner = np.where(present[:, None], np.column_stack([first, left]), 0)
        stop = np.where(present[:, None], np.column_stack([last, right]), 0)
        corner[0] = stop[0] = 0
        return corner, stop

    def pixels(self, which: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of the pixels of the runs ``which`` (bool, default all), in raster
        order (``np.flatnonzero`` of their labels' mask), and each pixel's label."""
        label, start, length = (
            (self.label, self.start, self.length) if which is None
            else (self.label[which], self.start[which], self.length[which])
        )
        before = np.cumsum(length) - length  # pixels of the runs before each run
        index = np.arange(int(length.sum()), dtype=np.int64) + np.repeat(start - before, length)
        return index, np.repeat(label, length)


def box_slices(start: np.ndarray, stop: np.ndarray) -> list[tuple[slice, slice] | None]:
    """``ndi.find_objects``' list from bounding boxes as :meth:`Runs.extent` gives them
    (label i at i - 1; None where a label is absent, its box empty)."""
    return [
        (slice(r0, r1), slice(c0, c1)) if r1 else None
        for r0, c0, r1, c1 in zip(start[1:, 0].tolist(), start[1:, 1].tolist(), stop[1:, 0].tolist(),
                                  stop[1:, 1].tolist(), strict=True)
    ]


def region_stats(labels: np.ndarray) -> RegionStats:
    """Counts and moments of the labels 1..max of a (rows, cols) int label image.

    Summed over the row runs of each label (closed forms of a run's Σc and Σc²) in exact
    integer arithmetic, then moved to the bounding-box corner: the same numbers as summing
    every pixel's offsets from the corner, with a pass over the image instead of several.
    """
    count = int(labels.max(initial=0))
    runs = Runs.of(labels)
    label, n = runs.label, runs.length
    row, col = np.divmod(runs.start, labels.shape[1])
    start, stop = runs.extent(count, labels.shape[1])
    # Per run (absolute coordinates, integers): Σc, Σc², Σr, Σr², Σr·c.
    s_c = n * col + n * (n - 1) // 2
    s_cc = n * col * col + col * n * (n - 1) + (n - 1) * n * (2 * n - 1) // 6
    totals = np.zeros((count + 1, 6), np.int64)
    for j, values in enumerate((n, n * row, s_c, n * row * row, s_cc, row * s_c)):
        np.add.at(totals[:, j], label, values)
    size, s_r, s_c, s_rr, s_cc, s_rc = totals.T
    r0, c0 = start[:, 0], start[:, 1]
    sums = np.column_stack([
        size,
        s_r - size * r0,
        s_c - size * c0,
        s_rr - 2 * r0 * s_r + size * r0 * r0,
        s_cc - 2 * c0 * s_c + size * c0 * c0,
        s_rc - c0 * s_r - r0 * s_c + size * r0 * c0,
    ]).astype(np.float64)
    return RegionStats(start=start, sums=sums, runs=runs, stop=stop)


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
    intensity_thresholds: tuple[float, ...] = (),
    stain_vectors: StainVectors | str | None = None,
) -> tuple[dict[str, np.ndarray], list[shapely.Polygon]]:
    """Measure the nuclei ``indices`` of ``labels`` (a region of the map at ``origin``).

    ``rgb`` covers the same region as ``labels`` (None: OD columns are NaN, none positive),
    unmixed with ``stain_vectors`` (None: the fixed ones; see :func:`nucflow.stain.stain_od`).
    Perimeter and solidity are those of the outline polygon (through pixel-edge midpoints).
    Returns the columns of :data:`COLUMNS` except ``id``, and level-0 outlines.
    """
    outlines = _outlines(labels, stats, indices, geometry=geometry, origin=origin)
    columns = _moment_columns(stats, indices, geometry=geometry, origin=origin)
    columns["perimeter_um"] = shapely.length(outlines) * geometry.um_per_level0_px
    columns["solidity"] = shapely.area(outlines) / shapely.area(shapely.convex_hull(outlines))
    means = _label_means(stats, indices, prob, rgb, stain_vectors)
    columns["mean_probability"] = means["probability"][indices]
    columns["hematoxylin_od"] = means["hematoxylin"][indices]
    columns["dab_od"] = means["dab"][indices]
    columns["dab_positive"] = dab_positive(columns["dab_od"], columns["hematoxylin_od"],
                                           dab_threshold=dab_threshold, dab_min_fraction=dab_min_fraction)
    columns["dab_intensity"] = dab_intensity(columns["dab_od"], columns["dab_positive"], intensity_thresholds)
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
    stats: RegionStats, indices: np.ndarray, prob: np.ndarray, rgb: np.ndarray | None,
    stain_vectors: StainVectors | str | None = None,
) -> dict[str, np.ndarray]:
    """Mean probability and stain ODs of the labels ``indices`` (others' means are 0), from
    those labels' pixels only (a block's halo nuclei are labelled, never measured), taken
    from their runs in raster order."""
    sizes = stats.sums[:, 0]
    count = len(sizes) - 1
    wanted = np.zeros(count + 1, bool)
    wanted[indices] = True
    inside, flat = stats.runs.pixels(wanted[stats.runs.label])
    sizes = np.maximum(sizes, 1)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=values, minlength=count + 1) / sizes

    means = {"probability": mean(prob.ravel()[inside] / 255.0)}
    if rgb is None:
        means["hematoxylin"] = means["dab"] = np.full(count + 1, np.nan)
    else:
        hematoxylin, dab = stain_od(np.take(rgb.reshape(-1, 3), inside, axis=0), stain_vectors)  # take: 4x [inside]
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
    """Level-0 outlines of the nuclei ``indices``: an object array of shapely Polygons.

    Each outline is the nucleus' boundary through its pixel-edge midpoints (the 0.5 contour
    of its mask; the longest ring if it has holes), without collinear vertices.
    """
    if indices.size == 0:
        return np.zeros(0, dtype=object)
    rows_cols, ring_of = _rings(stats, indices, labels.shape[1])
    x, y = geometry.to_level0(rows_cols[:, 0] + origin[0], rows_cols[:, 1] + origin[1])
    return shapely.polygons(shapely.linearrings(np.column_stack([x, y]), indices=ring_of))


def _rings(stats: RegionStats, indices: np.ndarray, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Every nucleus' ring in one marching-squares pass: (k, 2) rows/cols and ring number.

    The masks of the labels ``indices`` (of a ``cols``-wide label image) are packed on shelves
    into one image, each in a cell with a 1-px empty border so their contours stay apart; one
    contour call traces them all, and each line goes back to its nucleus by where it starts
    (its cell).
    """
    starts = stats.start[indices]
    heights, widths = (stats.stop[indices] - starts + 2).T
    tops, lefts, shelf, shape = _shelves(heights, widths)
    # Each cell's mask from its label's row runs: +1 where a run starts, -1 after it ends, summed
    # along the packed image (cells keep runs apart, and a run ends before its cell's empty border).
    cell_of = np.full(len(stats.sums), -1, np.int64)
    cell_of[indices] = np.arange(indices.size)
    cell = cell_of[stats.runs.label]
    packed_runs = cell >= 0
    cell, run_length = cell[packed_runs], stats.runs.length[packed_runs]
    row, col = np.divmod(stats.runs.start[packed_runs], cols)
    first = (tops[cell] + 1 + row - starts[cell, 0]) * shape[1] + (lefts[cell] + 1 + col - starts[cell, 1])
    edges = np.zeros(shape[0] * shape[1] + 1)
    edges[first] = 1.0
    edges[first + run_length] = -1.0
    packed = np.cumsum(edges[:-1]).reshape(shape)
    x, y = _pixel_grid(*shape)
    lines = contour_generator(x=x, y=y, z=packed, line_type=LineType.ChunkCombinedOffset).lines(0.5)
    chunk_points, chunk_offsets = cast(tuple[list[np.ndarray], list[np.ndarray]], lines)
    points, offsets = chunk_points[0], chunk_offsets[0].astype(np.int64)
    length = np.diff(offsets)
    # A cell by its shelf, then its left edge: one sorted key per cell, and per line start.
    shelf_tops = np.unique(tops)
    cell_key = shelf * shape[1] + lefts
    by_key = np.argsort(cell_key)
    x0, y0 = points[offsets[:-1], 0], points[offsets[:-1], 1]
    line_key = (np.searchsorted(shelf_tops, y0, side="right") - 1) * shape[1] + x0
    owner = by_key[np.searchsorted(cell_key[by_key], line_key, side="right") - 1]
    order = np.lexsort((-length, owner))  # longest line of each nucleus first
    chosen = order[np.r_[True, np.diff(owner[order]) != 0]]
    # Gather the chosen lines without their closing point (a repeat of the first).
    keep = length[chosen] - 1
    ring_of = np.repeat(np.arange(chosen.size), keep)
    within = np.arange(ring_of.size) - np.repeat(np.cumsum(keep) - keep, keep)
    x_y = points[offsets[chosen][ring_of] + within]
    cell = owner[chosen][ring_of]
    rows = x_y[:, 1] - 1 - tops[cell] + starts[cell, 0]
    cols = x_y[:, 0] - 1 - lefts[cell] + starts[cell, 1]
    corner = _corners(np.column_stack([rows, cols]), ring_of)
    return np.column_stack([rows, cols])[corner], ring_of[corner]


#: (rows, cols) -> column and row index grids kept for the contour calls (see _pixel_grid).
_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _pixel_grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row indices of a (rows, cols) image as float64 (what ``contour_generator``
    builds with ``np.meshgrid`` when given none, over half its set-up time): views of grids
    kept per width, grown as needed (one width, the shelves', in practice)."""
    kept = _GRIDS.get(cols)
    if kept is None or kept[0].shape[0] < rows:
        x, y = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(max(rows, 256), dtype=np.float64))
        kept = _GRIDS[cols] = (x, y)  # a whole tuple at once: other threads see the old or the new grids
    return kept[0][:rows], kept[1][:rows]


def _shelves(
    heights: np.ndarray, widths: np.ndarray, width: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Pack rectangles on shelves at most ``width`` wide (or the widest), tallest first.

    Returns each one's top and left, its shelf number (shelves in order, tops increasing),
    and the packed shape.
    """
    width = max(width, int(widths.max()))
    tops, lefts, shelf = (np.zeros(heights.size, np.int64) for _ in range(3))
    top = left = height = number = 0
    for i in np.argsort(-heights, kind="stable"):
        if left + widths[i] > width:
            top, left, height, number = top + height, 0, 0, number + 1
        tops[i], lefts[i], shelf[i] = top, left, number
        left += widths[i]
        height = max(height, int(heights[i]))
    return tops, lefts, shelf, (top + height, width)


def _corners(ring_points: np.ndarray, ring_of: np.ndarray) -> np.ndarray:
    """Which vertices of closed rings (concatenated, without closing points) are not collinear
    with their neighbours; coordinates are multiples of 0.5, so the test is exact."""
    change = ring_of[1:] != ring_of[:-1]
    first = np.flatnonzero(np.r_[True, change])  # each ring's first and last vertex, in ring order
    last = np.flatnonzero(np.r_[change, True])
    before = np.empty_like(ring_points)
    before[1:] = ring_points[:-1]
    before[first] = ring_points[last]
    after = np.empty_like(ring_points)
    after[:-1] = ring_points[1:]
    after[last] = ring_points[first]
    d_in = ring_points - before
    d_out = after - ring_points
    return d_in[:, 0] * d_out[:, 1] != d_in[:, 1] * d_out[:, 0]
