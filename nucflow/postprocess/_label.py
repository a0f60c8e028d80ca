"""The paper's post-processing of a probability map into labelled nuclei, in memory."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import expand_labels, watershed

from nucflow.errors import InputError
from nucflow.postprocess._config import PixelSizes, PostprocessConfig
from nucflow.postprocess._device import ArrayBackend, backend

__all__ = ["as_uint8_probability", "label_nuclei"]

_EIGHT = np.ones((3, 3), bool)


def as_uint8_probability(prob: np.ndarray) -> np.ndarray:
    """A probability map as uint8 0-255 (float in [0, 1] scaled and rounded; bool as 0/255).

    Parameters
    ----------
    prob : np.ndarray, shape (rows, cols), uint8 0-255, float in [0, 1] or bool

    Returns
    -------
    np.ndarray, shape (rows, cols), uint8
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise InputError(f"probability map must be 2-D (rows, cols), got shape {prob.shape}")
    if prob.dtype == np.uint8:
        return prob
    if prob.dtype == np.bool_:
        return prob.astype(np.uint8) * np.uint8(255)
    if not np.issubdtype(prob.dtype, np.floating):
        raise InputError(f"probability map must be uint8 or float, got dtype {prob.dtype}")
    return np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


def label_nuclei(
    prob: np.ndarray, *, mpp: float, config: PostprocessConfig, device: str = "cpu",
    within: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Label nuclei in a probability map with the paper's post-processing.

    Threshold, median filter, opening and closing, optional filling of nucleus-sized holes,
    distance transform, markers at its local maxima (or, for an "interior" head, the
    interiors: see ``PostprocessConfig.interior_markers``), watershed; labels grown by
    ``expand_um`` (models trained on shrunk masks); objects smaller than
    ``min_area_um2`` or wider than ``max_diameter_um`` are dropped; then the optional
    per-nucleus erosion (HER2), and labels renumbered 1..N.

    Parameters
    ----------
    prob : np.ndarray, shape (rows, cols), uint8 0-255, float in [0, 1] or bool (a mask)
    mpp : float
        µm per pixel of ``prob``.
    config : PostprocessConfig
    device : ``"cpu"`` or ``"gpu"`` (:func:`nucflow.postprocess._device.resolve_device`): where
        the pixel-wise steps up to the distance maxima run; the labels are the same.
    within : (row0, row1, col0, col1), optional
        Only nuclei that can have their centroid in this window are wanted (a block's core):
        connected foreground components whose bounding box misses it are not split or
        labelled (0). The other labels are the same, renumbered in the same order. Ignored
        when labels are grown (``expand_um``): growth depends on the neighbours.

    Returns
    -------
    np.ndarray, shape (rows, cols), int32
        0 for background, 1..N for nuclei.
    """
    px = config.in_pixels(mpp)
    labels = split_labels(prob, mpp=mpp, config=config, device=device, within=None if px.expansion else within)
    if px.expansion:
        labels = expand_labels(labels, px.expansion)
    keep = plausible(labels, px=px)
    if px.erosion:
        labels = erode_labels(np.where(keep[labels], labels, 0), px.erosion)
        keep &= np.bincount(labels.ravel(), minlength=keep.size) > 0
    # Renumber the kept labels 1..N in order (relabel_sequential) with one lookup.
    new_id = np.where(keep, np.cumsum(keep, dtype=np.int32), 0).astype(np.int32)
    return new_id[labels]


def split_labels(
    prob: np.ndarray, *, mpp: float, config: PostprocessConfig, device: str = "cpu",
    within: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """The labels of :func:`label_nuclei` before they are grown, filtered and renumbered.

    Threshold, filters, markers and watershed (:func:`split_touching`); each label is a
    marker's number (``ndi.label`` order of the markers, so in the order of the final
    labels), with gaps. ``within`` as in :func:`label_nuclei`, without the growth exception.
    """
    px = config.in_pixels(mpp)
    on = backend(device)
    prob = on.asarray(as_uint8_probability(prob))
    mask = foreground_mask(prob, config=config, px=px, on=on)
    if config.interior_markers:
        squared = on.squared_distance(mask)
        peaks = _majority(prob >= math.ceil((1.0 + config.threshold) / 2.0 * 255.0), config.median_size, on) & mask
    else:
        squared, peaks = distance_maxima(mask, px=px, on=on)
    return split_touching(on.to_host(mask), px=px, squared=on.to_host(squared), peaks=on.to_host(peaks),
                          within=within)


def foreground_mask(
    prob: Any, *, config: PostprocessConfig, px: PixelSizes, on: ArrayBackend | None = None
) -> Any:
    """Threshold, median filter, opening, closing and hole filling of a uint8 map; bool.

    ``prob`` and the result live on ``on``'s device (NumPy arrays on the CPU by default).
    """
    on = on or backend("cpu")
    xp = on.xp
    # An "interior" head's map is ~0.5 on a nucleus' edge: the nucleus starts at half the threshold.
    threshold = config.threshold / 2.0 if config.interior_markers else config.threshold
    mask = _majority(prob >= math.ceil(threshold * 255.0), config.median_size, on)
    if config.opening_radius:
        footprint = disk(config.opening_radius).astype(bool)
        mask = _dilate(_erode(mask, footprint, xp), footprint, xp)
    if config.closing_radius:
        footprint = disk(config.closing_radius).astype(bool)
        mask = _erode(_dilate(mask, footprint, xp), footprint, xp)
    if config.fill_holes:  # component labelling: on the CPU
        mask = on.asarray(fill_small_holes(on.to_host(mask), px.max_hole_area, px.max_diameter))
    return mask


def _majority(mask: Any, size: int, on: ArrayBackend) -> Any:
    """The ``size`` x ``size`` median filter of a bool mask, i.e. its majority (borders
    mirrored, as ``ndi.median_filter``'s "reflect"): the count of set pixels as two 1-D box
    sums, each a sum of shifted views (exact in uint8 up to 15 x 15), much cheaper than a
    median, a 2-D convolution or ``correlate1d``."""
    if size <= 1:
        return mask
    counts = _box_sum(_box_sum(mask.view(on.xp.uint8), size, 0, on.xp), size, 1, on.xp)
    return counts > (size * size) // 2


def _box_sum(values: Any, size: int, axis: int, xp: Any) -> Any:
    """Sums of ``size`` (odd) consecutive values along ``axis``, mirrored at the ends."""
    half = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = xp.pad(values, pad, mode="symmetric")
    length = values.shape[axis]

    def shifted(start: int) -> Any:
        return padded[start : start + length] if axis == 0 else padded[:, start : start + length]

    out = shifted(0).copy()
    for start in range(1, size):
        out += shifted(start)
    return out


def distance_maxima(mask: Any, *, px: PixelSizes, on: ArrayBackend) -> tuple[Any, Any]:
    """The exact squared distance transform of ``mask`` and its local maxima within
    ``px.min_distance`` (bool), on ``on``'s device."""
    squared = on.squared_distance(mask)
    size = 2 * px.min_distance + 1
    if on.device == "gpu":
        largest = on.ndi.maximum_filter(squared, size=size)
    else:
        largest = _window_max(_window_max(squared, size, 1), size, 0)
    peaks = (squared == largest) & mask
    return squared, peaks


def _window_max(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Maximum over ``size`` (odd) consecutive values along ``axis`` of a non-negative
    array: ``ndi.maximum_filter1d`` (its mirrored border adds only values already in each
    window, and zero padding adds none above them) as maxima of shifted views: the maxima of
    ``step`` consecutive values, then of those ``step`` apart, about 2 sqrt(size) passes."""
    half, length = size // 2, values.shape[axis]
    step = max(1, math.isqrt(size))
    moved = values if axis == 1 else values.T
    padded = np.zeros((moved.shape[0], length + 2 * half), values.dtype)
    padded[:, half : half + length] = moved
    runs = padded[:, : padded.shape[1] - step + 1].copy()  # runs[j]: max of padded[j : j + step]
    for offset in range(1, step):
        np.maximum(runs, padded[:, offset : offset + runs.shape[1]], out=runs)
    out = runs[:, :length].copy()
    starts = [*range(step, size - step + 1, step), size - step]  # runs covering [i, i + size)
    for start in starts:
        np.maximum(out, runs[:, start : start + length], out=out)
    return out if axis == 1 else out.T


def _erode(mask: Any, footprint: np.ndarray, xp: Any = np) -> Any:
    """Binary erosion with the outside as background (``ndi.binary_erosion``'s default), as
    an AND of shifted views: a few vector passes for the small disks used here."""
    return _combine(mask, footprint, xp.logical_and, xp)


def _dilate(mask: Any, footprint: np.ndarray, xp: Any = np) -> Any:
    """Binary dilation by a symmetric footprint (``ndi.binary_dilation``), as an OR of shifts."""
    return _combine(mask, footprint, xp.logical_or, xp)


def _combine(mask: Any, footprint: np.ndarray, op: Any, xp: Any) -> Any:
    r_half, c_half = footprint.shape[0] // 2, footprint.shape[1] // 2
    padded = xp.pad(mask, ((r_half, r_half), (c_half, c_half)))
    rows, cols = mask.shape
    out = mask.copy()
    for r, c in np.argwhere(footprint):
        op(out, padded[r : r + rows, c : c + cols], out=out)
    return out


def fill_small_holes(mask: np.ndarray, max_area: int, max_extent: int) -> np.ndarray:
    """Fill background components of at most ``max_area`` px and ``max_extent`` px on each
    side (a hole a nucleus could hold) that do not touch the border.

    Bounding the extent keeps the decision local (a block whose halo is wider decides as the
    whole map would; a thin gap can be small in area and long) and leaves lumens and gaps
    between nuclei alone; ring-shaped predictions become discs.
    """
    holes, count = ndi.label(~mask)
    if count == 0:
        return mask
    sizes = np.bincount(holes.ravel(), minlength=count + 1)
    extents = [0] + [max(rows.stop - rows.start, cols.stop - cols.start) for rows, cols in ndi.find_objects(holes)]
    fill = (sizes <= max_area) & (np.array(extents) <= max_extent)
    fill[0] = False
    border = np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
    fill[border] = False
    return mask | fill[holes]


def split_touching(
    mask: np.ndarray, *, px: PixelSizes, squared: np.ndarray | None = None, peaks: np.ndarray | None = None,
    within: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Watershed of the negated distance transform from its local maxima; int32 labels.

    The flooding priority is the squared distance (descending), ties broken by raster order:
    every pixel has its own exact priority, so the result does not depend on how the heap
    orders equal values, and a block labels a nucleus exactly as the whole map does.
    A component holding a single marker floods whole, so only components with several
    markers go through the watershed, each on its own bounding-box crop (components never
    meet, and raster order within a crop is raster order within the map): the same labels
    as one watershed over the whole mask, at a fraction of its cost. With ``within`` (row0,
    row1, col0, col1), components whose bounding box misses that window stay 0.
    """
    # Exact squared distances (integers) and their maxima (``distance_maxima``, given when
    # they were computed on a GPU); maxima and flooding order are the distance's.
    if squared is None or peaks is None:
        squared, peaks = distance_maxima(mask, px=px, on=backend("cpu"))
    components, count = ndi.label(mask)
    _seed_unmarked_components(peaks, components, count, squared)
    markers, _ = ndi.label(peaks, structure=_EIGHT)
    at = np.flatnonzero(peaks)
    component_at, marker_at = components.ravel()[at], markers.ravel()[at]
    # Distinct (component, marker) pairs: one marker in a component -> the component is its label.
    pairs = np.unique(component_at.astype(np.int64) * (int(marker_at.max(initial=0)) + 1) + marker_at)
    pair_component, pair_marker = np.divmod(pairs, int(marker_at.max(initial=0)) + 1)
    per_component = np.bincount(pair_component, minlength=count + 1)
    single = np.zeros(count + 1, np.int32)
    lone = per_component[pair_component] == 1
    single[pair_component[lone]] = pair_marker[lone]
    boxes = ndi.find_objects(components)
    if within is not None:
        r0, r1, c0, c1 = within
        away = [i for i, (rows, cols) in enumerate(boxes, start=1)
                if rows.stop <= r0 or rows.start >= r1 or cols.stop <= c0 or cols.start >= c1]
        single[away] = 0
        per_component[away] = 0
    labels = single[components]
    for index in np.flatnonzero(per_component > 1):
        _flood_component(labels, components, int(index), boxes[index - 1], squared, markers)
    return labels


def _flood_component(
    labels: np.ndarray, components: np.ndarray, index: int, box: tuple[slice, slice], squared: np.ndarray,
    markers: np.ndarray,
) -> None:
    """Watershed component ``index`` (bounding box ``box``) from its markers into ``labels``, in place.

    Each component floods alone on its bounding-box crop: components never meet, and raster
    order within a crop is raster order within the map, so it floods exactly as in one
    watershed over the whole mask, with a heap that holds one component's front (one heap
    for all of them is slower, even when the crops are packed into one call).
    """
    member = components[box] == index
    distance = squared[box]
    priority = np.arange(distance.size, dtype=np.float64).reshape(distance.shape)
    priority -= distance * np.float64(distance.size)
    # watershed zeroes the markers outside the mask itself (other components' markers)
    flooded = watershed(priority, markers[box], mask=member)
    np.copyto(labels[box], flooded, where=member, casting="unsafe")


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


def erode_labels(labels: np.ndarray, radius: int) -> np.ndarray:
    """Erode every label by a disk of ``radius`` px, also where two nuclei touch."""
    footprint = disk(radius)
    inside = ndi.minimum_filter(labels, footprint=footprint) == ndi.maximum_filter(
        labels, footprint=footprint
    )
    return np.where(inside, labels, 0)


def plausible(labels: np.ndarray, *, px: PixelSizes) -> np.ndarray:
    """Which labels 0..max to keep (bool): at least ``px.min_area`` px (and present), at most
    ``px.max_diameter`` px wide (bounding box); never the background."""
    count = int(labels.max(initial=0))
    return plausible_sizes(np.bincount(labels.ravel(), minlength=count + 1), ndi.find_objects(labels), px=px)


def plausible_sizes(sizes: np.ndarray, boxes: list, *, px: PixelSizes) -> np.ndarray:
    """:func:`plausible` from the labels' pixel counts (0..max) and ``ndi.find_objects`` boxes."""
    keep = (sizes >= px.min_area) & (sizes > 0)
    for index, box in enumerate(boxes, start=1):
        if box is not None and max(s.stop - s.start for s in box) > px.max_diameter:
            keep[index] = False
    keep[0] = False
    return keep
