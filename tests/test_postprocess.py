"""In-memory post-processing: the paper's labelling steps and the stain profiles."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.measure import regionprops

from nucflow.errors import ConfigError, InputError
from nucflow.postprocess import (
    PostprocessConfig,
    label_nuclei,
    load_stain_profile,
    nuclei_table,
    stain_od,
)

MPP = 0.5
KI67 = PostprocessConfig()


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    """A uint8 probability map (230 inside discs, 20 outside)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    inside = np.zeros(shape, bool)
    for r, c in centres:
        inside |= (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
    return np.where(inside, 230, 20).astype(np.uint8)


def test_isolated_discs_become_one_nucleus_each_at_their_centre():
    centres = [(20, 20), (20, 70), (60, 40), (90, 90)]
    labels = label_nuclei(discs((120, 120), centres, 7), mpp=MPP, config=KI67)
    assert labels.dtype == np.int32
    assert labels.max() == len(centres)
    found = ndi.center_of_mass(labels > 0, labels, range(1, labels.max() + 1))
    assert np.allclose(sorted(found), sorted(centres), atol=0.01)


def test_two_touching_discs_are_split():
    labels = label_nuclei(discs((60, 80), [(30, 28), (30, 48)], 11), mpp=MPP, config=KI67)
    assert labels.max() == 2
    assert labels[30, 22] != labels[30, 54]


def test_a_small_nucleus_beside_a_larger_one_within_min_distance_is_kept():
    prob = discs((60, 80), [(30, 25)], 12) | discs((60, 80), [(30, 46)], 4)
    config = PostprocessConfig(min_distance_um=15.0, min_area_um2=5.0)  # 30 px between markers
    labels = label_nuclei(prob, mpp=MPP, config=config)
    assert labels.max() == 2
    assert labels[30, 46] not in (0, labels[30, 25])


def test_equal_maxima_closer_than_min_distance_are_one_marker():
    # Two 11 x 11 squares joined by a 5 px high bridge: the squares' centres (6, 6) and (6, 20)
    # are the only two maxima of the distance (squared 36), 14 px apart. Markers must be at
    # least min_distance apart: at 16 px they are one nucleus, at 14 px two; two separate
    # squares as close never suppress each other's marker.
    from nucflow.postprocess._label import split_touching

    mask = np.zeros((13, 27), bool)
    mask[1:12, 1:12] = mask[1:12, 15:26] = mask[4:9, 12:15] = True
    squared = np.rint(ndi.distance_transform_edt(mask) ** 2)
    assert squared[6, 6] == squared[6, 20] == squared.max() == 36 and np.sum(squared == 36) == 2
    px = KI67.in_pixels(MPP)
    one = split_touching(mask, px=replace(px, min_distance=16))
    assert set(np.unique(one)) - {0} == {int(one[6, 6])} and (one[mask] > 0).all()
    two = split_touching(mask, px=replace(px, min_distance=14))
    assert len(set(np.unique(two)) - {0}) == 2 and two[6, 6] != two[6, 20]
    apart = mask.copy()
    apart[4:9, 12:15] = False
    assert len(set(np.unique(split_touching(apart, px=replace(px, min_distance=16)))) - {0}) == 2


def test_a_second_maximum_shallower_than_min_dynamic_is_not_a_marker():
    # Discs of radius 12 and 9 px, centres 18 px apart on row 20. The distance's maxima are
    # sqrt(145) at the large centre and sqrt(82) = 9.055 at the small one; the waist between
    # them is widest on row 20, where the distance falls to 6.0 (36 = 6**2 at column 29): the
    # small nucleus' dynamic is sqrt(82) - 6 = 3.055 px. Under that it is a marker, over it not.
    from skimage.morphology import h_maxima

    from nucflow.postprocess._label import split_touching

    rr, cc = np.mgrid[:40, :60]
    mask = ((rr - 20) ** 2 + (cc - 18) ** 2 <= 144) | ((rr - 20) ** 2 + (cc - 36) ** 2 <= 81)
    squared = np.rint(ndi.distance_transform_edt(mask) ** 2)
    assert squared[20, 36] == 82 and squared[20, 29] == 36 and squared.max() == 145
    px = replace(KI67.in_pixels(MPP), min_distance=8)
    assert px.min_dynamic == 0  # off by default
    for dynamic, nuclei in ((0.0, 2), (3.0, 2), (3.1, 1)):
        labels = split_touching(mask, px=replace(px, min_dynamic=dynamic))
        assert len(set(np.unique(labels)) - {0}) == nuclei, dynamic
        assert (labels[mask] > 0).all()
        if dynamic:  # scikit-image's h-maxima agree
            assert bool(h_maxima(np.sqrt(squared), dynamic)[20, 36]) == (nuclei == 2)
    assert PostprocessConfig(min_dynamic_um=0.75).in_pixels(0.25).min_dynamic == 3.0


def test_float_and_uint8_maps_give_the_same_labels():
    prob = discs((80, 80), [(25, 25), (50, 55)], 8)
    as_float = label_nuclei(prob / 255.0, mpp=MPP, config=KI67)
    assert np.array_equal(as_float, label_nuclei(prob, mpp=MPP, config=KI67))


def test_small_specks_and_huge_blobs_are_dropped():
    prob = discs((200, 200), [(20, 20), (40, 150)], 2)  # 13 px < 10 µm² / 0.25 = 40 px
    prob[80:180, 60:180] = 230  # 100 px = 50 µm wide, above max_diameter_um 30
    prob[20:34, 100:114] = 230
    labels = label_nuclei(prob, mpp=MPP, config=KI67)
    assert labels.max() == 1
    assert labels[27, 107] == 1


def test_hole_filling_turns_a_ring_into_a_filled_nucleus():
    rr, cc = np.mgrid[:60, :60]
    radius = np.hypot(rr - 30, cc - 30)
    prob = np.where((radius <= 12) & (radius >= 6), 230, 20).astype(np.uint8)
    filled = label_nuclei(prob, mpp=MPP, config=KI67)
    hollow = label_nuclei(prob, mpp=MPP, config=PostprocessConfig(fill_holes=False))
    assert filled.max() == 1 and filled[30, 30] == 1
    assert hollow[30, 30] == 0


def test_a_long_thin_gap_is_not_a_hole_so_blocks_decide_as_the_whole_map():
    # A 3 px wide gap 150 px long inside a slab: small in area (450 px < a nucleus' 2828 px)
    # but longer than any nucleus. Filling it would depend on whether a block sees its ends.
    from nucflow.postprocess._label import fill_small_holes

    mask = np.zeros((80, 200), bool)
    mask[10:70, 10:190] = True
    mask[39:42, 25:175] = False
    mask[20:24, 100:104] = False  # a real hole: filled
    px = KI67.in_pixels(MPP)
    filled = fill_small_holes(mask, px.max_hole_area, px.max_diameter)
    assert filled[21, 101] and not filled[40, 100]
    prob = np.where(mask, 230, 20).astype(np.uint8)
    whole = nuclei_table(prob, config=KI67, mpp=MPP, block_size=4096)
    blocked = nuclei_table(prob, config=KI67, mpp=MPP, block_size=64)
    assert len(whole) == len(blocked) >= 2
    np.testing.assert_allclose(np.sort(blocked.area_um2), np.sort(whole.area_um2))


def test_her2_erosion_shrinks_every_nucleus_and_keeps_them_apart():
    prob = discs((80, 100), [(40, 30), (40, 52)], 11)
    ki67 = label_nuclei(prob, mpp=MPP, config=load_stain_profile("ki67"))
    her2 = label_nuclei(prob, mpp=MPP, config=load_stain_profile("her2"))
    assert ki67.max() == her2.max() == 2
    for index in (1, 2):
        assert (her2 == index).sum() < (ki67 == index).sum()
    assert np.all((her2 > 0) <= (ki67 > 0))
    # A 1 µm (2 px) erosion from each side leaves more than 4 px between the touching pair.
    assert ndi.distance_transform_edt(ki67 != 1)[ki67 == 2].min() <= 1.0
    assert ndi.distance_transform_edt(her2 != 1)[her2 == 2].min() > 4.0


def test_shipped_profiles_load_and_differ_in_erosion():
    assert load_stain_profile("ki67").erosion_um == 0.0
    assert load_stain_profile("her2").erosion_um > 0.0
    assert load_stain_profile("her2").stain_profile == "her2"


def test_unknown_key_in_a_stain_profile_is_a_config_error(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("threshold: 0.4\nmedian_sise: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'median_sise' in .*mine\.yaml"):
        load_stain_profile(path)


def test_unknown_profile_name_and_bad_values_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"unknown stain profile 'ki76'.*ki67"):
        load_stain_profile("ki76")
    path = tmp_path / "bad.yaml"
    path.write_text("median_size: 4\n")
    with pytest.raises(ConfigError, match="median_size must be an odd number"):
        load_stain_profile(path)
    with pytest.raises(ConfigError, match=r"threshold must lie in \(0, 1\), got 1.5"):
        PostprocessConfig(threshold=1.5)
    with pytest.raises(ConfigError, match=r"dab_min_fraction must lie in \[0, 1\], got 2"):
        PostprocessConfig(dab_min_fraction=2)
    with pytest.raises(ConfigError, match="mpp must be > 0"):
        KI67.in_pixels(0.0)


def test_malformed_probability_maps_are_input_errors():
    with pytest.raises(InputError, match=r"must be 2-D \(rows, cols\), got shape \(4, 4, 3\)"):
        label_nuclei(np.zeros((4, 4, 3), np.uint8), mpp=MPP, config=KI67)
    with pytest.raises(InputError, match="must be uint8 or float, got dtype int64"):
        label_nuclei(np.zeros((4, 4), np.int64), mpp=MPP, config=KI67)


def test_stain_od_is_rgb2hed_in_base_10_units():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    hematoxylin, dab = stain_od(rgb)
    hed = rgb2hed(rgb)
    assert np.allclose(hematoxylin, 6 * hed[..., 0]) and np.allclose(dab, 6 * hed[..., 2])
    white = stain_od(np.full((1, 3), 255, np.uint8))
    assert (white[0][0], white[1][0]) == (0.0, 0.0)


def test_shape_measures_agree_with_regionprops_on_ellipses():
    rr, cc = np.mgrid[:80, :120]
    labels = np.zeros((80, 120), np.int32)
    labels[((rr - 25) / 12) ** 2 + ((cc - 30) / 6) ** 2 <= 1] = 1
    labels[((rr - 50) / 9) ** 2 + ((cc - 80) / 20) ** 2 + (rr - 50) * (cc - 80) / 300 <= 1] = 2
    one_marker = PostprocessConfig(
        median_size=1, opening_radius=0, closing_radius=0, min_distance_um=40, max_diameter_um=60
    )
    table = nuclei_table(labels > 0, config=one_marker, mpp=1.0, block_size=50)
    assert len(table) == 2
    for prop in regionprops(labels):
        (row,) = table[np.isclose(table.area_um2, prop.area)].itertuples()
        assert row.eccentricity == pytest.approx(prop.eccentricity, abs=1e-9)
        assert (row.centroid_y - 0.5, row.centroid_x - 0.5) == pytest.approx(prop.centroid)
        assert prop.solidity - 0.01 < row.solidity <= 1.0  # polygon hull: no pixel-corner bias
        assert row.perimeter_um == pytest.approx(prop.perimeter, rel=0.05)


def _cluttered_map(seed: int, shape: tuple[int, int] = (160, 200)) -> np.ndarray:
    """Touching, overlapping and hollow blobs of many sizes: every branch of the labelling."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    prob = np.zeros(shape)
    for _ in range(40):
        r, c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        a, b = rng.uniform(3, 14, 2)
        prob = np.maximum(prob, np.exp(-(((rr - r) / a) ** 2 + ((cc - c) / b) ** 2)))
    return np.rint(np.clip(prob + rng.normal(0, 0.08, shape), 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_labelling_equals_the_plain_scipy_watershed(seed: int):
    # The plain computation: scipy's filters and distance transform, one watershed over the
    # whole mask. label_nuclei replaces each with a faster equivalent; labels must not move.
    from skimage.morphology import disk
    from skimage.segmentation import relabel_sequential, watershed

    prob = _cluttered_map(seed)
    px = KI67.in_pixels(MPP)
    mask = prob >= 128
    mask = ndi.median_filter(mask.astype(np.uint8), size=KI67.median_size, mode="reflect") > 0
    mask = ndi.binary_closing(ndi.binary_opening(mask, structure=disk(1)), structure=disk(1))
    holes, count = ndi.label(~mask)
    sizes = np.bincount(holes.ravel())
    fill = sizes <= px.max_hole_area
    fill[0] = False
    fill[np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])] = False
    mask |= fill[holes]
    distance = ndi.distance_transform_edt(mask)
    peaks = (distance == ndi.maximum_filter(distance, size=2 * px.min_distance + 1)) & mask
    components, count = ndi.label(mask)
    for index in range(1, count + 1):  # a component left without a peak gets its first maximum
        inside = components == index
        if not (peaks & inside).any():
            flat = np.flatnonzero(inside)
            peaks.ravel()[flat[np.argmax(distance.ravel()[flat])]] = True
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3)))
    # Peaks of one component less than min_distance apart are one marker (renumbered by first pixel).
    at = np.flatnonzero(peaks)
    rows, cols = np.divmod(at, mask.shape[1])
    same = components.ravel()[at][:, None] == components.ravel()[at]
    near = same & (np.maximum(abs(rows[:, None] - rows), abs(cols[:, None] - cols)) < px.min_distance)
    group = markers.ravel()[at].copy()
    for _ in range(len(at)):  # propagate the smallest marker number along links until stable
        group = np.where(near | (group[:, None] == group), group[None, :], len(at) + 10**6).min(axis=1)
    markers.ravel()[at] = np.unique(group, return_inverse=True)[1] + 1
    priority = np.arange(mask.size, dtype=float).reshape(mask.shape) - np.rint(distance**2) * mask.size
    plain = watershed(priority, markers, mask=mask)
    sizes = np.bincount(plain.ravel())
    keep = sizes >= px.min_area
    for index, box in enumerate(ndi.find_objects(plain), start=1):
        if box is not None and max(s.stop - s.start for s in box) > px.max_diameter:
            keep[index] = False
    keep[0] = False
    expected = relabel_sequential(np.where(keep[plain], plain, 0))[0]
    assert expected.max() > 10
    np.testing.assert_array_equal(label_nuclei(prob, mpp=MPP, config=KI67), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_flooding_loop_called_directly_equals_the_public_watershed(seed: int, monkeypatch: pytest.MonkeyPatch):
    # _watershed calls scikit-image's flooding loop behind watershed(); without it (another
    # scikit-image) the public function runs: both must give the same labels.
    from nucflow.postprocess import _label

    calls = []
    flood = _label._watershed
    monkeypatch.setattr(_label, "_watershed", lambda *args: calls.append(1) or flood(*args))
    prob = _cluttered_map(seed)
    direct = label_nuclei(prob, mpp=MPP, config=KI67)
    assert _label._WATERSHED_RAVELED is not None and len(calls) > 3  # touching nuclei were flooded
    monkeypatch.setattr(_label, "_WATERSHED_RAVELED", None)
    np.testing.assert_array_equal(label_nuclei(prob, mpp=MPP, config=KI67), direct)


def test_shifted_view_filters_and_sparse_labels_equal_scipy():
    # The majority (binary median), window maximum and marker labelling are computed from
    # shifted views and sparse pixels; they must equal scipy's filters and ndi.label exactly.
    from nucflow.postprocess._device import backend
    from nucflow.postprocess._label import _linked_groups, _majority, _window_max

    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        size = int(rng.integers(0, 7)) * 2 + 1
        mask = rng.random(shape) < rng.uniform(0.05, 0.95)
        median = ndi.median_filter(mask.astype(np.uint8), size=size) > 0
        np.testing.assert_array_equal(_majority(mask, size, backend("cpu")), median)
        values = rng.integers(0, 50, shape).astype(np.float32)
        largest = _window_max(_window_max(values, size, 1), size, 0)
        np.testing.assert_array_equal(largest, ndi.maximum_filter(values, size=size))
        sparse = rng.random(shape) < rng.uniform(0.01, 0.4)
        at = np.flatnonzero(sparse)
        expected = ndi.label(sparse, structure=np.ones((3, 3)))[0].ravel()[at]
        np.testing.assert_array_equal(_linked_groups(at, shape[1]), expected)


def test_region_stats_from_runs_equal_per_pixel_sums_and_find_objects():
    # region_stats sums each label's row runs in closed form; the plain computation sums every
    # pixel's offsets from its bounding-box corner. Both are exact integers: bit-identical.
    from nucflow.postprocess._features import region_stats

    rng = np.random.default_rng(0)
    images = [label_nuclei(_cluttered_map(seed), mpp=MPP, config=KI67) for seed in (0, 1)]
    images += [rng.integers(0, 7, (int(rng.integers(1, 50)), int(rng.integers(1, 50)))) for _ in range(30)]
    for labels in images:
        count = int(labels.max(initial=0))
        boxes = ndi.find_objects(labels, max_label=count)
        stats = region_stats(labels)
        assert stats.boxes == boxes
        expected = np.zeros((count + 1, 6))
        for index, box in enumerate(boxes, start=1):
            if box is None:
                continue
            rows, cols = np.nonzero(labels[box] == index)
            assert tuple(stats.start[index]) == (box[0].start, box[1].start)
            expected[index] = [rows.size, rows.sum(), cols.sum(), (rows * rows).sum(), (cols * cols).sum(),
                               (rows * cols).sum()]
        np.testing.assert_array_equal(stats.sums, expected)


def test_outlines_are_each_nucleus_contour_without_collinear_vertices():
    # One contour call traces every nucleus laid side by side; each outline must be the
    # nucleus' own 0.5 contour (same area and length as contourpy on that nucleus alone),
    # holes aside, with no vertex on a straight run.
    import shapely
    from contourpy import contour_generator

    from nucflow.postprocess._features import MapGeometry, _outlines, region_stats

    labels = label_nuclei(_cluttered_map(3), mpp=MPP, config=KI67)
    labels[40:50, 40:60] = labels.max() + 1  # a rectangle: long straight runs
    labels[44:46, 48:50] = 0  # with a hole: the outer ring is kept
    stats = region_stats(labels)
    indices = np.arange(1, labels.max() + 1)
    outlines = _outlines(labels, stats, indices, geometry=MapGeometry(mpp=MPP), origin=(0, 0))
    for index, outline in zip(indices, outlines, strict=True):
        padded = np.pad(labels == index, 1).astype(float)
        ring = max(contour_generator(z=padded).lines(0.5), key=len)
        alone = shapely.Polygon(np.asarray(ring) - 0.5)  # x = col, y = row; pixel centres at +0.5
        assert outline.area == pytest.approx(alone.area) and outline.length == pytest.approx(alone.length)
        assert shapely.equals(outline, alone)
        x_y = np.asarray(outline.exterior.coords)[:-1]
        turn = np.diff(np.vstack([x_y[-1:], x_y, x_y[:1]]), axis=0)
        assert (turn[:-1, 0] * turn[1:, 1] != turn[:-1, 1] * turn[1:, 0]).all()
    assert len(outlines[-1].exterior.coords) == 8 + 1  # the rectangle: its four corners, each cut


def test_stain_od_tables_equal_the_matrix_unmixing():
    from skimage.color import hed_from_rgb

    rgb = np.random.default_rng(0).integers(0, 256, (5000, 3)).astype(np.uint8)
    hematoxylin, dab = stain_od(rgb)
    od = -np.log10(np.maximum(rgb / 255.0, 1e-6))
    hed = np.maximum(od @ hed_from_rgb, 0)
    np.testing.assert_allclose(hematoxylin, hed[:, 0], atol=1e-12)
    np.testing.assert_allclose(dab, hed[:, 2], atol=1e-12)


def test_a_map_without_nuclei_gives_an_empty_table():
    from nucflow.postprocess._features import region_stats

    stats = region_stats(np.zeros((30, 40), np.int32))
    assert stats.sums.shape == (1, 6) and stats.start.shape == (1, 2)
    faint = np.full((200, 200), 140, np.uint8)  # foreground everywhere, but one huge blob: dropped
    assert len(nuclei_table(faint, config=KI67, mpp=MPP, block_size=64)) == 0


def test_expansion_grows_each_nucleus_into_background_only():
    from dataclasses import replace

    prob = np.zeros((40, 60), np.uint8)
    prob[10:20, 10:20] = 255  # two 10 px squares 4 px apart: a shrunk-mask model's output
    prob[10:20, 24:34] = 255
    plain = PostprocessConfig(median_size=1, opening_radius=0, closing_radius=0, min_area_um2=1.0)
    config = replace(plain, expand_um=3.0)
    labels = label_nuclei(prob, mpp=1.0, config=config)
    assert labels.max() == 2
    # each grew by 3 px where free, and the 4 px gap was shared, not crossed
    assert labels[15, 7] == labels[15, 12] and labels[15, 36] == labels[15, 30]
    assert labels[15, 21] == labels[15, 12] and labels[15, 22] == labels[15, 30]
    assert labels[15, 5] == 0 and labels[15, 38] == 0


def test_one_pixel_growth_equals_expand_labels_ties_included():
    # grow_labels' one-pixel path (four shifted views) must give expand_labels' labels, also
    # where a background pixel touches several labels (dense random labels, then real splits).
    from skimage.segmentation import expand_labels

    from nucflow.postprocess._label import grow_labels, split_labels

    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        labels = (rng.integers(1, 7, shape) * (rng.random(shape) < rng.uniform(0.05, 0.9))).astype(np.int32)
        np.testing.assert_array_equal(grow_labels(labels, 1), expand_labels(labels, 1))
    for seed in (0, 1):
        labels = split_labels(_cluttered_map(seed), mpp=MPP, config=KI67)
        assert labels.max() > 10
        np.testing.assert_array_equal(grow_labels(labels, 1), expand_labels(labels, 1))
        np.testing.assert_array_equal(grow_labels(labels, 2), expand_labels(labels, 2))


def interior_map(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float, core: float) -> np.ndarray:
    """An "interior" head's map: the mean of a mask channel (discs of ``radius``) and an interior
    channel (discs of ``core`` around the same centres): 255 in interiors, ~128 on edges."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    mask, interior = np.zeros(shape, bool), np.zeros(shape, bool)
    for r, c in centres:
        distance = np.hypot(rr - r, cc - c)
        mask |= distance <= radius
        interior |= distance <= core
    return np.rint((mask.astype(float) + interior) / 2 * 255).astype(np.uint8)


def test_interior_markers_split_overlapping_nuclei_the_distance_transform_merges():
    # Two discs of radius 12 px, 10 px apart: one convex-ish blob whose distance transform
    # has a single maximum; their interiors (radius 4) are apart, so they give two markers.
    prob = interior_map((60, 80), [(30, 35), (30, 45)], 12, 4)
    plain = label_nuclei(prob, mpp=MPP, config=PostprocessConfig(threshold=0.25))
    interior = label_nuclei(prob, mpp=MPP, config=PostprocessConfig(interior_markers=True))
    assert plain.max() == 1
    assert interior.max() == 2 and interior[30, 30] != interior[30, 50]
    # the nuclei reach the edge of the mask channel (threshold / 2), not just the interiors
    assert (interior > 0).sum() == (plain > 0).sum() > 2 * np.pi * 4**2 * 3


def test_interior_markers_keep_a_nucleus_without_an_interior():
    prob = interior_map((60, 80), [(30, 25)], 8, 4)
    prob[25:36, 50:61] = 128  # a nucleus seen by the mask channel only
    labels = label_nuclei(prob, mpp=MPP, config=PostprocessConfig(interior_markers=True))
    assert labels.max() == 2 and labels[30, 55] not in (0, labels[30, 25])
