"""The paper's post-processing of a probability map into labelled nuclei, in memory."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import relabel_sequential, watershed

from nucflow.errors import InputError
from nucflow.postprocess._config import PixelSizes, PostprocessConfig

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


def label_nuclei(prob: np.ndarray, *, mpp: float, config: PostprocessConfig) -> np.ndarray:
    """Label nuclei in a probability map with the paper's post-processing.

    Threshold, median filter, opening and closing, optional filling of nucleus-sized holes,
    distance transform, markers at its local maxima, watershed; objects smaller than
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
    labels = drop_implausible(split_touching(mask, px=px), px=px)
    if px.erosion:
        labels = erode_labels(labels, px.erosion)
    return relabel_sequential(labels)[0].astype(np.int32)


def foreground_mask(prob: np.ndarray, *, config: PostprocessConfig, px: PixelSizes) -> np.ndarray:
    """Threshold, median filter, opening, closing and hole filling of a uint8 map; bool."""
    mask = prob >= math.ceil(config.threshold * 255.0)
    size = config.median_size
    if size > 1:
        # The median of a binary window is its majority; counting is much faster.
        counts = ndi.convolve(mask.astype(np.uint8), np.ones((size, size), np.uint8))
        mask = counts > (size * size) // 2
    if config.opening_radius:
        mask = ndi.binary_opening(mask, structure=disk(config.opening_radius))
    if config.closing_radius:
        mask = ndi.binary_closing(mask, structure=disk(config.closing_radius))
    if config.fill_holes:
        mask = fill_small_holes(mask, px.max_hole_area)
    return mask


def fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill background components of at most ``max_area`` px that do not touch the border.

    Bounding the size keeps the decision local (a block decides as the whole map would) and
    leaves lumens and gaps between nuclei alone; ring-shaped predictions become discs.
    """
    holes, count = ndi.label(~mask)
    if count == 0:
        return mask
    sizes = np.bincount(holes.ravel(), minlength=count + 1)
    fill = sizes <= max_area
    fill[0] = False
    border = np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
    fill[border] = False
    return mask | fill[holes]


def split_touching(mask: np.ndarray, *, px: PixelSizes) -> np.ndarray:
    """Watershed of the negated distance transform from its local maxima; int32 labels.

    The flooding priority is the squared distance (descending), ties broken by raster order:
    every pixel has its own exact priority, so the result does not depend on how the heap
    orders equal values, and a block labels a nucleus exactly as the whole map does.
    """
    distance = ndi.distance_transform_edt(mask)
    peaks = (distance == ndi.maximum_filter(distance, size=2 * px.min_distance + 1)) & mask
    _seed_unmarked_components(peaks, mask, distance)
    markers, _ = ndi.label(peaks, structure=_EIGHT)
    squared = np.rint(distance * distance)
    priority = np.arange(mask.size, dtype=np.float64).reshape(mask.shape) - squared * mask.size
    return watershed(priority, markers, mask=mask).astype(np.int32)


def _seed_unmarked_components(peaks: np.ndarray, mask: np.ndarray, distance: np.ndarray) -> None:
    """Mark the first distance maximum of each component that a larger neighbour within
    ``min_distance`` left without a peak, so no isolated nucleus is lost (in place)."""
    components, count = ndi.label(mask)
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
