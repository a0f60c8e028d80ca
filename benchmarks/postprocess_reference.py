"""The post-processing as it was before issue 13's speed-up: the reference it is measured and tested against.

A frozen copy of ``label_nuclei`` (one watershed over every component with several markers,
``relabel_sequential``) and of the per-block measures (stain means over every labelled pixel,
outlines traced from one strip of masks side by side), so that the benchmark measures the
current code beside it in the same run and the tests check that the current code gives the
same labels and the same table on real probability maps. Not used by nucflow itself.
"""

from __future__ import annotations

import math
from typing import cast

import edt
import numpy as np
import shapely
from contourpy import LineType, contour_generator
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import expand_labels, relabel_sequential, watershed

from nucflow.postprocess import MapGeometry, PostprocessConfig, RgbReader
from nucflow.postprocess._blocked import Block, _checked, owned_labels
from nucflow.postprocess._config import PixelSizes, dab_intensity, dab_positive
from nucflow.postprocess._features import RegionStats, _corners, _moment_columns, region_stats, stain_od
from nucflow.postprocess._label import as_uint8_probability, erode_labels, foreground_mask

__all__ = ["block_table", "label_nuclei"]

_EIGHT = np.ones((3, 3), bool)


def block_table(
    prob: np.ndarray, *, block: Block, read_rgb: RgbReader | None, geometry: MapGeometry, config: PostprocessConfig
) -> tuple[dict[str, np.ndarray], list[shapely.Polygon]] | None:
    """``nucflow.postprocess._blocked._block_table`` as it was: one block's nuclei and outlines."""
    prob = as_uint8_probability(prob)
    if prob.max(initial=0) < math.ceil(config.threshold * 255.0):
        return None
    labels = label_nuclei(prob, mpp=geometry.mpp, config=config)
    stats = region_stats(labels)
    origin = (block.region[0], block.region[2])
    indices = owned_labels(stats, origin=origin, core=block.core)
    if indices.size == 0:
        return None
    r0, r1, c0, c1 = block.region
    rgb = None if read_rgb is None else _checked(read_rgb(r0, c0, r1 - r0, c1 - c0), labels.shape)
    return region_measures(
        labels, stats, indices, prob, rgb,
        geometry=geometry, origin=origin,
        dab_threshold=config.dab_threshold, dab_min_fraction=config.dab_min_fraction,
        intensity_thresholds=config.intensity_thresholds,
    )


def label_nuclei(prob: np.ndarray, *, mpp: float, config: PostprocessConfig) -> np.ndarray:
    """Label nuclei in a probability map with the paper's post-processing.

    Threshold, median filter, opening and closing, optional filling of nucleus-sized holes,
    distance transform, markers at its local maxima, watershed; labels grown by
    ``expand_um`` (models trained on shrunk masks); objects smaller than
    ``min_area_um2`` or wider than ``max_diameter_um`` are dropped; then the optional
    per-nucleus erosion (HER2), and labels renumbered 1..N.

    Parameters
    ----------
    prob : np.ndarray, shape (rows, cols), uint8 0-255, float in [0, 1] or bool (a mask)
    mpp : float
        µm per pixel of ``prob``.
    config : PostprocessConfig

    Returns
    -------
    np.ndarray, shape (rows, cols), int32
        0 for background, 1..N for nuclei.
    """
    px = config.in_pixels(mpp)
    mask = foreground_mask(as_uint8_probability(prob), config=config, px=px)
    labels = split_touching(mask, px=px)
    if px.expansion:
        labels = expand_labels(labels, px.expansion)
    labels = drop_implausible(labels, px=px)
    if px.erosion:
        labels = erode_labels(labels, px.erosion)
    return relabel_sequential(labels)[0].astype(np.int32)


def split_touching(mask: np.ndarray, *, px: PixelSizes) -> np.ndarray:
    """Watershed of the negated distance transform from its local maxima; int32 labels.

    The flooding priority is the squared distance (descending), ties broken by raster order:
    every pixel has its own exact priority, so the result does not depend on how the heap
    orders equal values, and a block labels a nucleus exactly as the whole map does.
    A component holding a single marker floods whole, so only components with several
    markers go through the watershed (the same labels, at a fraction of its cost).
    """
    # Exact squared distances (integers, exact in float32) from the edt library, several
    # times faster than scipy's distance_transform_edt; maxima and order are the distance's.
    squared = edt.edtsq(mask, black_border=False, parallel=1)
    peaks = (squared == ndi.maximum_filter(squared, size=2 * px.min_distance + 1)) & mask
    components, count = ndi.label(mask)
    if px.min_dynamic > 0:
        _drop_shallow_peaks(peaks, components, squared, px.min_dynamic)
    _seed_unmarked_components(peaks, components, count, squared)
    markers = _link_markers(ndi.label(peaks, structure=_EIGHT)[0], components, px.min_distance - 1)
    # Distinct markers per component: one -> the component is that marker's label.
    pairs = np.unique(np.stack([components[peaks], markers[peaks]]), axis=1)
    per_component = np.bincount(pairs[0], minlength=count + 1)
    single = np.zeros(count + 1, np.int32)
    lone = per_component[pairs[0]] == 1
    single[pairs[0][lone]] = pairs[1][lone]
    labels = single[components]
    several = (per_component > 1)[components]
    if several.any():
        priority = np.arange(mask.size, dtype=np.float64).reshape(mask.shape)
        priority -= squared * np.float64(mask.size)
        flooded = watershed(priority, np.where(several, markers, 0), mask=several)
        labels[several] = flooded[several]
    return labels


def _link_markers(markers: np.ndarray, components: np.ndarray, reach: int) -> np.ndarray:
    """One marker for the peaks of one component at most ``reach`` px apart (Chebyshev), renumbered
    in raster order of their first pixel (pairs from a k-d tree, groups from a sparse graph)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    at = np.flatnonzero(markers)
    if reach <= 1 or at.size < 2:
        return markers
    coords = np.column_stack(np.divmod(at, markers.shape[1]))
    pairs = cKDTree(coords).query_pairs(reach + 0.5, p=np.inf, output_type="ndarray")
    component, marker = components.ravel()[at], markers.ravel()[at]
    pairs = pairs[component[pairs[:, 0]] == component[pairs[:, 1]]]
    # Pixels of one 8-connected marker stay together: each linked to its marker's node.
    count = int(marker.max())
    rows = np.concatenate([pairs[:, 0], np.arange(at.size)])
    cols = np.concatenate([pairs[:, 1], at.size + marker - 1])
    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(at.size + count,) * 2)
    group = connected_components(graph, directed=False)[1][: at.size]
    first = {}
    for g in group:  # ``at`` is in raster order
        first.setdefault(g, len(first) + 1)
    out = np.zeros_like(markers)
    out.ravel()[at] = [first[g] for g in group]
    return out


def _drop_shallow_peaks(peaks: np.ndarray, components: np.ndarray, squared: np.ndarray, dynamic: float) -> None:
    """Unmark the peaks that are not h-maxima (scikit-image's ``h_maxima``, ``dynamic`` px) of their
    component's distance, in the components whose peaks form several 8-connected groups (in place)."""
    groups = ndi.label(peaks, structure=_EIGHT)[0]
    pairs = np.unique(np.stack([components[peaks], groups[peaks]]), axis=1)
    several = np.flatnonzero(np.bincount(pairs[0]) > 1)
    boxes = ndi.find_objects(components)
    for index in several:
        box = boxes[index - 1]
        inside = components[box] == index
        height = np.where(inside, np.sqrt(squared[box], dtype=np.float64), 0.0)
        peaks[box] &= ~inside | (h_maxima(height, dynamic) > 0)


def _seed_unmarked_components(peaks: np.ndarray, components: np.ndarray, count: int, distance: np.ndarray) -> None:
    """Mark the first distance maximum of each component that a larger neighbour within
    ``min_distance`` left without a peak, so no isolated nucleus is lost (in place)."""
    marked = np.zeros(count + 1, bool)
    marked[components[peaks]] = True
    marked[0] = True
    candidates = np.flatnonzero(~marked[components])
    if candidates.size == 0:
        return
    component = components.ravel()[candidates]
    # Stable sort: by component, then highest distance, then raster order.
    order = np.lexsort((-distance.ravel()[candidates], component))
    first = order[np.r_[True, np.diff(component[order]) != 0]]
    peaks[np.unravel_index(candidates[first], peaks.shape)] = True


def drop_implausible(labels: np.ndarray, *, px: PixelSizes) -> np.ndarray:
    """Zero labels smaller than ``px.min_area`` or wider (bounding box) than ``px.max_diameter``."""
    count = int(labels.max(initial=0))
    keep = np.bincount(labels.ravel(), minlength=count + 1) >= px.min_area
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None:
            extent = max(s.stop - s.start for s in box)
            keep[index] &= extent <= px.max_diameter
    keep[0] = False
    return np.where(keep[labels], labels, 0)


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
    columns["dab_positive"] = dab_positive(columns["dab_od"], columns["hematoxylin_od"],
                                           dab_threshold=dab_threshold, dab_min_fraction=dab_min_fraction)
    columns["dab_intensity"] = dab_intensity(columns["dab_od"], columns["dab_positive"], intensity_thresholds)
    return columns, list(outlines)


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
    """Level-0 outlines of the nuclei ``indices``: an object array of shapely Polygons.

    Each outline is the nucleus' boundary through its pixel-edge midpoints (the 0.5 contour
    of its mask; the longest ring if it has holes), without collinear vertices.
    """
    if indices.size == 0:
        return np.zeros(0, dtype=object)
    rows_cols, ring_of = _rings(labels, [stats.boxes[i - 1] for i in indices], stats.start[indices], indices)
    x, y = geometry.to_level0(rows_cols[:, 0] + origin[0], rows_cols[:, 1] + origin[1])
    return shapely.polygons(shapely.linearrings(np.column_stack([x, y]), indices=ring_of))


def _rings(
    labels: np.ndarray, boxes: list, starts: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every nucleus' ring in one marching-squares pass: (k, 2) rows/cols and ring number.

    The masks are laid side by side in one strip, each with a 1-px empty border so their
    contours stay apart; one contour call traces them all, and each line goes back to its
    nucleus by where it starts in the strip.
    """
    heights = np.array([box[0].stop - box[0].start for box in boxes])
    widths = np.array([box[1].stop - box[1].start for box in boxes])
    left = np.concatenate([[0], np.cumsum(widths + 2)])  # strip column where each cell starts
    strip = np.zeros((int(heights.max()) + 2, int(left[-1])))
    for cell, (box, index) in enumerate(zip(boxes, indices, strict=True)):
        strip[1 : heights[cell] + 1, left[cell] + 1 : left[cell] + 1 + widths[cell]] = labels[box] == index
    lines = contour_generator(z=strip, line_type=LineType.ChunkCombinedOffset).lines(0.5)
    chunk_points, chunk_offsets = cast(tuple[list[np.ndarray], list[np.ndarray]], lines)
    points, offsets = chunk_points[0], chunk_offsets[0].astype(np.int64)
    length = np.diff(offsets)
    owner = np.searchsorted(left, points[offsets[:-1], 0], side="right") - 1
    order = np.lexsort((-length, owner))  # longest line of each nucleus first
    chosen = order[np.r_[True, np.diff(owner[order]) != 0]]
    # Gather the chosen lines without their closing point (a repeat of the first).
    keep = length[chosen] - 1
    ring_of = np.repeat(np.arange(chosen.size), keep)
    within = np.arange(ring_of.size) - np.repeat(np.cumsum(keep) - keep, keep)
    x_y = points[offsets[chosen][ring_of] + within]
    cell = owner[chosen][ring_of]
    rows = x_y[:, 1] - 1 + starts[cell, 0]
    cols = x_y[:, 0] - left[cell] - 1 + starts[cell, 1]
    corner = _corners(np.column_stack([rows, cols]), ring_of)
    return np.column_stack([rows, cols])[corner], ring_of[corner]
