"""The paper's post-processing of a probability map into labelled nuclei, in memory."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.morphology import disk
from skimage.segmentation import expand_labels, watershed

try:  # scikit-image's flooding loop behind watershed(): see _watershed
    from skimage.segmentation._watershed_cy import watershed_raveled as _WATERSHED_RAVELED
except ImportError:  # pragma: no cover - another scikit-image layout
    _WATERSHED_RAVELED = None

from nucflow.errors import InputError
from nucflow.postprocess._config import PixelSizes, PostprocessConfig
from nucflow.postprocess._device import ArrayBackend, backend
from nucflow.postprocess._features import Runs

__all__ = ["as_uint8_probability", "grow_labels", "label_nuclei"]


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
    ``expand_um`` (the profile's, plus a shrunk model's card); objects smaller than
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
        labelled (0). The other labels are the same, renumbered in the same order. When labels
        are grown (``expand_um``), the components left unlabelled still block the growth, as
        their nuclei would.

    Returns
    -------
    np.ndarray, shape (rows, cols), int32
        0 for background, 1..N for nuclei.
    """
    px = config.in_pixels(mpp)
    labels = split_labels(prob, mpp=mpp, config=config, device=device, within=within)
    keep = plausible(labels, px=px)
    if px.erosion:
        labels = erode_labels(np.where(np.take(keep, labels), labels, 0), px.erosion)
        keep &= np.bincount(labels.ravel(), minlength=keep.size) > 0
    # Renumber the kept labels 1..N in order (relabel_sequential) with one lookup.
    new_id = np.where(keep, np.cumsum(keep, dtype=np.int32), 0).astype(np.int32)
    return np.take(new_id, labels)


def split_labels(
    prob: np.ndarray, *, mpp: float, config: PostprocessConfig, device: str = "cpu",
    within: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """The labels of :func:`label_nuclei` before they are filtered and renumbered.

    Threshold, filters, markers and watershed (:func:`split_touching`), then the growth by
    ``expand_um``; each label is a marker's number (``ndi.label`` order of the markers, so in
    the order of the final labels), with gaps. ``within`` as in :func:`label_nuclei`.
    """
    px = config.in_pixels(mpp)
    labels, mask = _split(prob, mpp=mpp, config=config, device=device, within=within)
    if px.expansion and within is not None:
        # Growth goes into background only: the components left unlabelled (their bounding box
        # misses ``within``; every other component is labelled whole) stop it where their
        # nuclei would, as one extra label removed afterwards.
        blocker = int(labels.max(initial=0)) + 1
        labels = grow_labels(np.where(mask & (labels == 0), blocker, labels), px.expansion)
        labels[labels == blocker] = 0
    elif px.expansion:
        labels = grow_labels(labels, px.expansion)
    return labels


def grow_labels(labels: np.ndarray, distance: int) -> np.ndarray:
    """``skimage.segmentation.expand_labels(labels, distance)``: every background pixel
    within ``distance`` px (Euclidean) of a label takes its nearest label's number.

    One pixel, the ``ki67`` profile's growth at 0.25 µm/px, is four shifted views instead of
    ``expand_labels``' distance transform with indices over the whole block (15x less CPU on
    a 0.5 MP map of 432 nuclei): a pixel 1 px from a label is 4-adjacent to it (diagonals
    are sqrt(2) away), and where several 4-neighbours are labelled, ``expand_labels`` takes
    the left one, else the upper, else the lower, else the right (the order of scipy's
    feature transform), as here; tests/test_postprocess.py compares the two, ties included.
    Other distances call ``expand_labels``. ``benchmarks/postprocess_reference.py`` keeps
    ``expand_labels``, so the suite checks the two give the same tables.
    """
    if distance != 1:
        return expand_labels(labels, distance)
    padded = np.pad(labels, 1)
    out = labels.copy()
    background = labels == 0
    # The least preferred neighbour first, so the preferred one is written last and wins.
    for neighbour in (padded[1:-1, 2:], padded[2:, 1:-1], padded[:-2, 1:-1], padded[1:-1, :-2]):
        np.copyto(out, neighbour, where=background & (neighbour != 0))
    return out


def _split(
    prob: np.ndarray, *, mpp: float, config: PostprocessConfig, device: str, within: tuple[int, int, int, int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`split_labels`' labels and the foreground mask they split (on the host)."""
    px = config.in_pixels(mpp)
    on = backend(device)
    prob = on.asarray(as_uint8_probability(prob))
    mask = foreground_mask(prob, config=config, px=px, on=on)
    if config.interior_markers:
        squared = on.squared_distance(mask)
        peaks = _majority(prob >= math.ceil((1.0 + config.threshold) / 2.0 * 255.0), config.median_size, on) & mask
    else:
        squared, peaks = distance_maxima(mask, px=px, on=on)
    host = on.to_host(mask)
    return split_touching(host, px=px, squared=on.to_host(squared), peaks=on.to_host(peaks),
                          within=within, spaced=not config.interior_markers), host


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
        return squared, (squared == on.ndi.maximum_filter(squared, size=size)) & mask
    # The squared distances are integers: in uint16 where they fit, the maxima are 2.5x cheaper.
    values = squared.astype(np.uint16) if squared.max(initial=0) < 2**16 else squared
    return squared, (values == _window_max(_window_max(values, size, 1), size, 0)) & mask


def _window_max(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Maximum over ``size`` (odd) consecutive values along ``axis`` of a non-negative
    array: ``ndi.maximum_filter1d`` (its mirrored border adds only values already in each
    window, and zero padding adds none above them) as maxima of shifted views: the maxima of
    ``step`` consecutive values, then of those ``step`` apart, about 2 sqrt(size) passes."""
    half, length = size // 2, values.shape[axis]
    step = max(1, math.isqrt(size))
    shape = list(values.shape)
    shape[axis] = length + 2 * half
    padded = np.zeros(shape, values.dtype)
    _along(padded, axis, half, half + length)[...] = values

    runs = _along(padded, axis, 0, shape[axis] - step + 1).copy()  # runs[j]: max of padded[j : j + step]
    for offset in range(1, step):
        np.maximum(runs, _along(padded, axis, offset, offset + runs.shape[axis]), out=runs)
    out = _along(runs, axis, 0, length).copy()
    for start in [*range(step, size - step + 1, step), size - step]:  # runs covering [i, i + size)
        np.maximum(out, _along(runs, axis, start, start + length), out=out)
    return out


def _along(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """``array[start:stop]`` along ``axis`` (0 or 1) of a 2-D array, a view."""
    return array[start:stop] if axis == 0 else array[:, start:stop]


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
    within: tuple[int, int, int, int] | None = None, spaced: bool = True,
) -> np.ndarray:
    """Watershed of the negated distance transform from its local maxima; int32 labels.

    With ``spaced`` (distance maxima; not an interior head's markers, which are regions), maxima
    of one component less than ``px.min_distance`` apart (Chebyshev, as the maxima's window) are
    one marker: two maxima that close are equal (each is the maximum of a window holding the
    other), a plateau or two summits of one nucleus, not two nuclei. Where each maximum was
    its own marker, one nucleus with two equal summits was cut in two (on the validation sets,
    three seeds: overall AJI 39.4 -> 40.5, detection F1 52.8 -> 55.0). Each link spans less than
    ``min_distance``, which the block halo already covers for the maxima.

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
    # The components' bounding boxes, as arrays (ndi.find_objects from their runs, cheaper).
    start, stop = Runs.of(components).extent(count, mask.shape[1])
    at = np.flatnonzero(peaks)
    if px.min_dynamic > 0:
        at = _significant(at, components, start, stop, squared, px.min_dynamic)
    at = _seeded(at, components, start, stop, squared)
    # The markers: the peaks' 8-connected groups (with ``spaced``, also those of one component
    # less than min_distance apart), numbered in the raster order of their first pixel.
    marker_at = _linked_groups(at, mask.shape[1], components, px.min_distance - 1 if spaced else 1)
    component_at = components.ravel()[at]
    # Distinct (component, marker) pairs: one marker in a component -> the component is its label.
    pairs = np.unique(component_at.astype(np.int64) * (int(marker_at.max(initial=0)) + 1) + marker_at)
    pair_component, pair_marker = np.divmod(pairs, int(marker_at.max(initial=0)) + 1)
    per_component = np.bincount(pair_component, minlength=count + 1)
    single = np.zeros(count + 1, np.int32)
    lone = per_component[pair_component] == 1
    single[pair_component[lone]] = pair_marker[lone]
    if within is not None:
        r0, r1, c0, c1 = within
        away = (stop[:, 0] <= r0) | (start[:, 0] >= r1) | (stop[:, 1] <= c0) | (start[:, 1] >= c1)
        single[away] = 0
        per_component[away] = 0
    labels = np.take(single, components)  # single[components], without an intp copy of the index
    flood = np.flatnonzero(per_component > 1)
    if flood.size:
        by_component = np.argsort(component_at, kind="stable")
        bounds = np.searchsorted(component_at[by_component], np.stack([flood, flood + 1]))
        for index, low, high in zip(flood, bounds[0], bounds[1], strict=True):
            seeds = by_component[low:high]
            _flood_component(labels, components, int(index), _box(start, stop, int(index)), squared, at[seeds],
                             marker_at[seeds])
    return labels


def _flood_component(
    labels: np.ndarray, components: np.ndarray, index: int, box: tuple[slice, slice], squared: np.ndarray,
    at: np.ndarray, marker_at: np.ndarray,
) -> None:
    """Watershed component ``index`` (bounding box ``box``) from its markers (pixels ``at``,
    flat indices, numbered ``marker_at``) into ``labels``, in place.

    Each component floods alone on its bounding-box crop: components never meet, and raster
    order within a crop is raster order within the map, so it floods exactly as in one
    watershed over the whole mask, with a heap that holds one component's front (one heap
    for all of them is slower, even when the crops are packed into one call). The crop is
    built once with the one-pixel empty border the flooding needs (see :func:`_watershed`).
    """
    rows, cols = box[0].stop - box[0].start, box[1].stop - box[1].start
    width = cols + 2
    size = (rows + 2) * width
    # Flooding priority: highest distance first, then raster order: the padded crop's flat index
    # minus the squared distance times its size (exact integers in float64), built in place.
    priority = np.zeros((rows + 2, width))
    inner = priority[1:-1, 1:-1]
    np.multiply(squared[box], -float(size), out=inner)
    inner += np.arange(1, rows + 1, dtype=np.float64)[:, None] * width
    inner += np.arange(1, cols + 1, dtype=np.float64)
    member = np.zeros((rows + 2, width), bool)
    np.equal(components[box], index, out=member[1:-1, 1:-1])
    flooded = np.zeros((rows + 2, width), np.int32)
    row, col = np.divmod(at, components.shape[1])
    seeds = (row - (box[0].start - 1)) * width + (col - (box[1].start - 1))
    flooded.ravel()[seeds] = marker_at
    _watershed(priority, seeds, member, flooded)
    np.copyto(labels[box], flooded[1:-1, 1:-1], where=member[1:-1, 1:-1])


def _watershed(priority: np.ndarray, seeds: np.ndarray, member: np.ndarray, flooded: np.ndarray) -> None:
    """``skimage.segmentation.watershed(priority, flooded, mask=member)`` (4-connected) into
    ``flooded``, in place, for 2-D arrays whose one-pixel border is outside ``member`` and
    whose seeds (flat indices ``seeds``) are numbered in ``flooded``.

    Calls the flooding loop behind ``watershed`` directly, which skips the copies and padding
    the public function makes of every input (a third of a block's flooding time); the
    public function when that loop is not there or takes other arguments (the same labels:
    tests/test_postprocess.py compares the two).
    """
    if _WATERSHED_RAVELED is not None:
        width = flooded.shape[1]
        neighbours = np.array([-width, -1, 1, width], np.intp)
        try:
            _WATERSHED_RAVELED(priority.ravel(), seeds.astype(np.intp), neighbours, member.view(np.int8).ravel(),
                               np.array([width, 1], np.intp), 0.0, flooded.ravel(), False)
            return
        except TypeError:  # another scikit-image's signature: the public function below
            pass
    flooded[...] = watershed(priority, flooded, mask=member)


def _box(start: np.ndarray, stop: np.ndarray, index: int) -> tuple[slice, slice]:
    """Label ``index``'s bounding box as slices, from :meth:`Runs.extent`'s arrays."""
    return slice(int(start[index, 0]), int(stop[index, 0])), slice(int(start[index, 1]), int(stop[index, 1]))


def _significant(
    at: np.ndarray, components: np.ndarray, start: np.ndarray, stop: np.ndarray, squared: np.ndarray,
    dynamic: float,
) -> np.ndarray:
    """The peaks ``at`` (sorted flat indices) that are h-maxima of their component's distance:
    regional maxima from which the distance falls by at least ``dynamic`` px on every path to a
    higher pixel of the component (``skimage.morphology.h_maxima``'s, tested equal to it).

    A peak's 8-connected group is one plateau of window maxima: it is tested as one, on its
    component's crop (the component alone decides, as in a block): the pixels of the component
    above the plateau's height minus ``dynamic`` that connect to it must hold nothing higher.
    Only components with several groups are tested: a lone group is the component's highest
    maximum, and :func:`_seeded` gives a component that lost every peak its first maximum back.
    Written here rather than calling ``h_maxima`` on each such component's crop (the reference
    in ``benchmarks/postprocess_reference.py`` does that) because it gives the same labels in
    less than half the time: 1.0 against 2.3 CPU s of ``label_nuclei`` over 67 cached maps
    (0.66 s with the rule off).
    """
    cols = components.shape[1]
    component_at = components.ravel()[at]
    group = _linked_groups(at, cols)
    span = int(group.max(initial=0)) + 1
    pairs = np.unique(component_at.astype(np.int64) * span + group)
    several = np.flatnonzero(np.bincount(pairs // span) > 1)
    if not several.size:
        return at
    keep = np.ones(at.size, bool)
    order = np.argsort(component_at, kind="stable")
    bounds = np.searchsorted(component_at[order], np.stack([several, several + 1]))
    eight = np.ones((3, 3), bool)
    for index, low, high in zip(several, bounds[0], bounds[1], strict=True):
        box = _box(start, stop, int(index))
        member = components[box] == index
        height = np.sqrt(squared[box], dtype=np.float64)
        mine = order[low:high]
        rows, cols_ = np.divmod(at[mine], cols)
        rows, cols_ = rows - box[0].start, cols_ - box[1].start
        tops = height[rows, cols_]
        # Groups at the component's highest value have nothing higher; groups of one height
        # share their region's labelling.
        below = tops < height[member].max()
        for top in np.unique(tops[below]):
            region, _ = ndi.label(member & (height > top - dynamic), structure=eight)
            higher = np.unique(region[member & (height > top)])  # regions holding a higher pixel
            here = np.flatnonzero(below & (tops == top))
            keep[mine[here]] = ~np.isin(region[rows[here], cols_[here]], higher)
    return at[keep]


def _seeded(
    at: np.ndarray, components: np.ndarray, start: np.ndarray, stop: np.ndarray, distance: np.ndarray
) -> np.ndarray:
    """The peaks ``at`` (sorted flat indices) and the first distance maximum (raster order)
    of each component that a larger neighbour within ``min_distance`` left without a peak,
    so no isolated nucleus is lost; sorted flat indices. ``start``, ``stop``: the components'
    boxes (:meth:`Runs.extent`)."""
    marked = np.zeros(len(start), bool)
    marked[components.ravel()[at]] = True
    seeds = []
    for index in np.flatnonzero(~marked[1:]) + 1:
        box = _box(start, stop, int(index))
        crop = np.where(components[box] == index, distance[box], -1.0)
        row, col = np.unravel_index(int(np.argmax(crop)), crop.shape)  # the first maximum
        seeds.append((box[0].start + row) * components.shape[1] + box[1].start + col)
    return np.union1d(at, np.array(seeds, np.int64)) if seeds else at


def _linked_groups(at: np.ndarray, cols: int, components: np.ndarray | None = None, reach: int = 1) -> np.ndarray:
    """The group of each of the pixels ``at`` (sorted flat indices of a ``cols``-wide image),
    by default as ``ndi.label(.., structure=ones((3, 3)))`` labels those pixels: 8-connected groups,
    numbered 1.. in the raster order of their first pixel; from the few pixels alone.
    With ``reach`` > 1, pixels of one component of ``components`` at most ``reach`` px apart
    (Chebyshev) are linked too."""
    if at.size == 0:
        return np.zeros(0, np.int32)
    col = at % cols
    first, second = [], []
    # Each pixel's neighbours after it in raster order: right, below left, below, below right.
    for step, inside in ((1, col < cols - 1), (cols - 1, col > 0), (cols, None), (cols + 1, col < cols - 1)):
        found = np.minimum(np.searchsorted(at, at + step), at.size - 1)
        hit = at[found] == at + step
        if inside is not None:
            hit &= inside
        first.append(np.flatnonzero(hit))
        second.append(found[hit])
    if reach > 1 and components is not None and at.size > 1:
        rows, cs = np.divmod(at, cols)
        pairs = cKDTree(np.column_stack([rows, cs])).query_pairs(reach + 0.5, p=np.inf, output_type="ndarray")
        component = components.ravel()[at]
        pairs = pairs[component[pairs[:, 0]] == component[pairs[:, 1]]]
        first.append(pairs[:, 0])
        second.append(pairs[:, 1])
    a, b = np.concatenate(first), np.concatenate(second)
    graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(at.size, at.size))
    count, group = connected_components(graph, directed=False)
    # Renumber by first pixel: groups in order of their smallest index into ``at``.
    smallest = np.full(count, at.size, np.int64)
    np.minimum.at(smallest, group, np.arange(at.size))
    number = np.empty(count, np.int32)
    number[np.argsort(smallest)] = np.arange(1, count + 1, dtype=np.int32)
    return number[group]


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
    sides = [0] + [0 if box is None else max(s.stop - s.start for s in box) for box in ndi.find_objects(labels)]
    return plausible_sizes(np.bincount(labels.ravel(), minlength=count + 1), np.array(sides), px=px)


def plausible_sizes(sizes: np.ndarray, sides: np.ndarray, *, px: PixelSizes) -> np.ndarray:
    """:func:`plausible` from the labels' pixel counts and the longer side of their bounding
    boxes (0..max; 0 for absent labels)."""
    keep = (sizes >= px.min_area) & (sizes > 0) & (sides <= px.max_diameter)
    keep[0] = False
    return keep
