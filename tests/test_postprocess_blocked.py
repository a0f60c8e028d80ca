"""Blocked post-processing over real Zarr and Dask against the in-memory computation."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi
from skimage.color import rgb_from_hed

from nucflow.errors import InputError
from nucflow.postprocess import (
    COLUMNS,
    PostprocessConfig,
    label_nuclei,
    nuclei_table,
    read_rgb_from_array,
)

MPP = 1.0
CONFIG = PostprocessConfig()  # at 1 µm/px: halo 41 px


def synthetic_map(shape: tuple[int, int] = (300, 260), seed: int = 1) -> np.ndarray:
    """Discs of radius 3-7 px, touching pairs and rings: a uint8 probability map."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    prob = np.clip(rng.normal(30, 20, shape), 0, 255)
    for r, c, radius in zip(
        rng.uniform(5, shape[0] - 5, 70), rng.uniform(5, shape[1] - 5, 70),
        rng.uniform(3, 7, 70), strict=True,
    ):
        prob[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = rng.uniform(150, 250)
    for r, c in ((60, 200), (220, 60)):
        distance = np.hypot(rr - r, cc - c)
        prob[(distance <= 8) & (distance >= 4)] = 220
    return prob.astype(np.uint8)


def as_zarr(prob: np.ndarray, path: Path, *, chunks: tuple[int, int], **attrs) -> Path:
    array = zarr.create_array(store=str(path), shape=prob.shape, chunks=chunks, dtype="uint8")
    array[:] = prob
    array.attrs.update(attrs)
    return path


def label_centroids(labels: np.ndarray) -> np.ndarray:
    """Level-0 (x, y) centroids (scale 1, offset 0) of labelled nuclei, sorted."""
    rows_cols = np.array(ndi.center_of_mass(labels > 0, labels, range(1, labels.max() + 1)))
    return np.array(sorted(map(tuple, rows_cols[:, ::-1] + 0.5)))


def in_memory_centroids(prob: np.ndarray) -> np.ndarray:
    """Centroids of label_nuclei on the whole map (see :func:`label_centroids`)."""
    return label_centroids(label_nuclei(prob, mpp=MPP, config=CONFIG))


def blocked_table(prob: np.ndarray, tmp_path: Path, config: PostprocessConfig = CONFIG):
    """nuclei_table of ``prob`` stored as Zarr in uneven (64, 48) chunks, read in 70 px blocks."""
    path = as_zarr(prob, tmp_path / "probability.zarr", chunks=(64, 48), mpp=MPP)
    rgb = np.full((*prob.shape, 3), 200, np.uint8)
    return nuclei_table(path, config=config, read_rgb=read_rgb_from_array(rgb), block_size=70)


def sorted_centroids(table) -> np.ndarray:
    return np.array(sorted(zip(table.centroid_x, table.centroid_y, strict=True)))


def test_blocked_table_equals_in_memory_labelling_on_uneven_zarr_chunks(tmp_path: Path):
    prob = synthetic_map()
    blocked = blocked_table(prob, tmp_path)
    expected = in_memory_centroids(prob)
    assert len(blocked) == len(expected) > 50
    assert np.allclose(sorted_centroids(blocked), expected, atol=1e-9)
    assert blocked["id"].tolist() == list(range(1, len(blocked) + 1))


def test_blocked_equals_in_memory_with_h_maxima_markers(tmp_path: Path):
    # Markers filtered by their dynamic: each component decides alone, so blocks stay exact.
    prob = synthetic_map(seed=3)
    config = PostprocessConfig(min_dynamic_um=1.0)
    expected = label_centroids(label_nuclei(prob, mpp=MPP, config=config))
    assert len(expected) < len(in_memory_centroids(prob))  # the filter dropped some markers
    blocked = blocked_table(prob, tmp_path, config)
    assert len(blocked) == len(expected) > 50
    assert np.allclose(sorted_centroids(blocked), expected, atol=1e-9)


def test_every_column_matches_a_single_whole_map_block_with_uneven_dask_chunks():
    prob = synthetic_map(seed=2)
    uneven = da.from_array(prob, chunks=((100, 120, 80), (90, 110, 60)))
    rgb = np.random.default_rng(0).integers(60, 255, (*prob.shape, 3), dtype=np.uint8)
    reader = read_rgb_from_array(rgb)
    blocked = nuclei_table(uneven, config=CONFIG, read_rgb=reader, mpp=MPP, block_size=64)
    whole = nuclei_table(prob, config=CONFIG, read_rgb=reader, mpp=MPP, block_size=1000)
    order = ["centroid_x", "centroid_y"]
    left = blocked.sort_values(order).reset_index(drop=True)
    right = whole.sort_values(order).reset_index(drop=True)
    for column in list(COLUMNS)[1:]:
        assert np.allclose(left[column].astype(float), right[column].astype(float)), column
    assert left.geometry.geom_equals_exact(right.geometry, tolerance=1e-9).all()


def test_a_nucleus_centred_on_a_block_edge_is_counted_once_and_whole():
    prob = np.zeros((140, 140), np.uint8)
    prob[65:75, 30:40] = 255  # centroid row 69.5: exactly on the edge between blocks at 70
    prob[68:80, 64:76] = 255  # straddles both block edges at row 70 and column 70
    config = PostprocessConfig(median_size=1, opening_radius=0, closing_radius=0)
    table = nuclei_table(prob, config=config, mpp=MPP, block_size=70)
    assert len(table) == 2
    assert sorted(table.area_um2) == [100.0, 144.0]
    assert sorted(table.centroid_y) == [70.0, 74.0]


def test_square_of_a_known_stain_mixture_has_hand_computed_features():
    """6x6 square of hematoxylin OD 0.5 + DAB OD 0.3 on white, 0.5 µm/px, map offset (10, 20)."""
    od = 0.5 * rgb_from_hed[0] + 0.3 * rgb_from_hed[2]
    colour = np.rint(255 * 10.0 ** (-od)).astype(np.uint8)
    prob = np.zeros((16, 16), np.uint8)
    prob[4:10, 4:10] = 200
    rgb = np.full((16, 16, 3), 255, np.uint8)
    rgb[4:10, 4:10] = colour
    def measure(dab_threshold: float, dab_min_fraction: float):
        config = PostprocessConfig(
            median_size=1, opening_radius=0, closing_radius=0, min_area_um2=1.0,
            dab_threshold=dab_threshold, dab_min_fraction=dab_min_fraction,
        )
        (row,) = nuclei_table(
            prob, config=config, read_rgb=read_rgb_from_array(rgb), mpp=0.5,
            level0_offset=(10, 20), level0_scale=2.0, slide_mpp=0.25, block_size=8,
        ).itertuples()
        return row

    row = measure(0.25, 0.35)  # DAB share 0.3 / 0.8 = 0.375
    assert not measure(0.35, 0.35).dab_positive
    assert not measure(0.25, 0.40).dab_positive
    assert row.area_um2 == pytest.approx(36 * 0.25)
    assert row.perimeter_um == pytest.approx((4 * 5 + 4 * 0.5**0.5) * 0.5)  # outline polygon
    assert (row.eccentricity, row.solidity) == (0.0, 1.0)
    assert (row.centroid_x, row.centroid_y) == (20 + 7.0 * 2, 10 + 7.0 * 2)
    assert (row.centroid_x_um, row.centroid_y_um) == (34 * 0.25, 24 * 0.25)
    assert row.hematoxylin_od == pytest.approx(0.5, abs=0.01)
    assert row.dab_od == pytest.approx(0.3, abs=0.01)
    assert row.dab_positive
    assert row.mean_probability == pytest.approx(200 / 255)
    # Outline through pixel-edge midpoints: corners cut by 0.125 px² each, map px = 2 level-0 px.
    assert row.geometry.bounds == (28.0, 18.0, 40.0, 30.0)
    assert row.geometry.area == pytest.approx((36 - 0.5) * 4)
    assert row.geometry_um.area == pytest.approx((36 - 0.5) * 4 * 0.25**2)


def test_zarr_attributes_place_the_nuclei_on_the_slide(tmp_path: Path):
    prob = np.zeros((40, 40), np.uint8)
    prob[10:20, 10:20] = 255
    attrs = {"mpp": 1.0, "level0_offset": [100, 200], "level0_scale": 4.0, "slide_mpp": 0.25}
    path = as_zarr(prob, tmp_path / "p.zarr", chunks=(16, 16), **attrs)
    (row,) = nuclei_table(path, config=CONFIG).itertuples()
    assert (row.centroid_x, row.centroid_y) == (200 + 15.0 * 4, 100 + 15.0 * 4)
    assert row.centroid_x_um == 260 * 0.25
    assert np.isnan(row.dab_od) and not row.dab_positive


def test_an_empty_map_gives_an_empty_table_with_every_column(tmp_path: Path):
    path = as_zarr(np.zeros((50, 70), np.uint8), tmp_path / "p.zarr", chunks=(32, 32), mpp=0.5)
    table = nuclei_table(path, config=CONFIG, read_rgb=read_rgb_from_array(np.zeros((1, 1, 3), np.uint8)))
    assert len(table) == 0
    assert list(table.columns) == ["id", "geometry", "geometry_um", *list(COLUMNS)[1:]]
    assert table.geometry.name == "geometry"


def test_progress_reports_every_block_and_schedulers_agree():
    prob = synthetic_map((150, 130), seed=3)
    calls: list[tuple[int, int]] = []
    threads = nuclei_table(prob, config=CONFIG, mpp=MPP, block_size=50, progress=lambda *a: calls.append(a))
    serial = nuclei_table(prob, config=CONFIG, mpp=MPP, block_size=50, scheduler="synchronous")
    assert sorted(calls) == [(k, 9) for k in range(1, 10)]
    assert np.array_equal(sorted_centroids(threads), sorted_centroids(serial))


def test_user_errors_are_input_errors(tmp_path: Path):
    prob = synthetic_map((60, 60))
    with pytest.raises(InputError, match=r"resolution is unknown: pass mpp="):
        nuclei_table(prob, config=CONFIG)
    with pytest.raises(InputError, match="block_size must be >= 1 px, got 0"):
        nuclei_table(prob, config=CONFIG, mpp=MPP, block_size=0)
    with pytest.raises(InputError, match=r"no Zarr probability map at .*missing\.zarr"):
        nuclei_table(tmp_path / "missing.zarr", config=CONFIG)
    with pytest.raises(InputError, match=r"read_rgb returned \(2, 2, 3\) uint8; expected"):
        nuclei_table(prob, config=CONFIG, mpp=MPP, read_rgb=lambda *_: np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InputError, match=r"RGB image must be \(rows, cols, 3\) uint8"):
        read_rgb_from_array(np.zeros((4, 4), np.uint8))


def test_a_probability_group_is_read_through_its_probability_array(tmp_path: Path):
    prob = np.zeros((40, 40), np.uint8)
    prob[10:20, 10:20] = 255
    group = zarr.open_group(str(tmp_path / "probability.zarr"), mode="w")
    group.create_array("probability", shape=prob.shape, chunks=(16, 16), dtype="uint8")[:] = prob
    group.create_array("done", shape=(3, 3), chunks=(3, 3), dtype="uint8")
    group.attrs.update({"mpp": 2.0, "level0_scale": 1.0})
    raw = PostprocessConfig(median_size=1, opening_radius=0, closing_radius=0)
    (row,) = nuclei_table(tmp_path / "probability.zarr", config=raw).itertuples()
    assert row.area_um2 == 100 * 2.0**2
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array("x", shape=(2,), dtype="u1")
    with pytest.raises(InputError, match=r"has no 'probability' array"):
        nuclei_table(tmp_path / "other.zarr", config=CONFIG)


def real_ihc_map(shared_data: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A real Ki67 region tiled to (size, size) and a hematoxylin-based probability map of it."""
    from skimage.color import rgb2hed
    from skimage.io import imread

    image = imread(shared_data / "ihc" / "regions" / "ROI_1.png")[..., :3]
    reps = (-(-size // image.shape[0]), -(-size // image.shape[1]), 1)
    rgb = np.ascontiguousarray(np.tile(image, reps)[:size, :size])
    hematoxylin = rgb2hed(rgb)[..., 0]
    return np.rint(np.clip((hematoxylin - 0.03) * 25, 0, 1) * 255).astype(np.uint8), rgb


def test_blocked_equals_in_memory_on_a_real_ihc_region(shared_data: Path, tmp_path: Path):
    prob, rgb = real_ihc_map(shared_data, 512)
    path = as_zarr(prob, tmp_path / "p.zarr", chunks=(100, 100), mpp=0.5)
    config = PostprocessConfig()
    blocked = nuclei_table(path, config=config, read_rgb=read_rgb_from_array(rgb), block_size=150)
    labels = label_nuclei(prob, mpp=0.5, config=config)
    assert len(blocked) == labels.max() > 100
    assert np.allclose(sorted_centroids(blocked), label_centroids(labels), atol=1e-9)


@pytest.mark.slow
def test_blocked_equals_whole_map_table_at_2048_px(shared_data: Path):
    prob, rgb = real_ihc_map(shared_data, 2048)
    config = PostprocessConfig()
    reader = read_rgb_from_array(rgb)
    blocked = nuclei_table(prob, config=config, read_rgb=reader, mpp=0.25, block_size=512)
    whole = nuclei_table(prob, config=config, read_rgb=reader, mpp=0.25, block_size=4096)
    assert len(blocked) == len(whole) > 1000
    order = ["centroid_x", "centroid_y"]
    left = blocked.sort_values(order).reset_index(drop=True)
    right = whole.sort_values(order).reset_index(drop=True)
    for column in list(COLUMNS)[1:]:
        assert np.allclose(left[column].astype(float), right[column].astype(float)), column


def test_background_blocks_read_no_rgb():
    prob = np.zeros((200, 200), np.uint8)
    prob[20:30, 20:30] = 255
    calls: list[tuple[int, int, int, int]] = []
    reader = read_rgb_from_array(np.full((200, 200, 3), 128, np.uint8))

    def counting(*region: int) -> np.ndarray:
        calls.append(region)
        return reader(*region)

    table = nuclei_table(prob, config=CONFIG, mpp=MPP, read_rgb=counting, block_size=50)
    assert len(table) == 1
    assert calls == [(0, 0, 91, 91)]  # the one block holding the nucleus, with its 41 px halo


def test_an_object_wider_than_a_nucleus_is_not_kept_in_pieces_by_blocks():
    # A 300 x 180 px slab is no nucleus (max_diameter 30 px at 1 µm/px). A 64 px block
    # sees only a clipped piece of it through its halo, small enough to pass for one;
    # pieces cut by a block's region edge are not nuclei, so blocks agree with the whole map.
    prob = np.zeros((400, 400), np.uint8)
    prob[50:350, 100:280] = 230
    prob[20:36, 20:36] = 230  # and one real nucleus
    whole = nuclei_table(prob, config=CONFIG, mpp=MPP, block_size=1000)
    blocked = nuclei_table(prob, config=CONFIG, mpp=MPP, block_size=64)
    assert len(whole) == len(blocked) == 1
    assert blocked.centroid_x.iloc[0] == pytest.approx(whole.centroid_x.iloc[0])


def test_grown_labels_blocked_equal_the_whole_map(tmp_path: Path):
    """A model trained on shrunk masks: labels grown back by ``expand_um``, block by block as whole."""
    from dataclasses import replace

    grown = replace(CONFIG, expand_um=2.0)
    prob = synthetic_map(seed=3)
    plain, expanded = label_nuclei(prob, mpp=MPP, config=CONFIG), label_nuclei(prob, mpp=MPP, config=grown)
    assert expanded.max() == plain.max() and (expanded > 0).sum() > (plain > 0).sum()
    assert grown.in_pixels(MPP).halo == CONFIG.in_pixels(MPP).halo + 4
    blocked = blocked_table(prob, tmp_path, grown)
    expected = label_centroids(expanded)
    assert len(blocked) == len(expected) > 40
    assert np.allclose(sorted_centroids(blocked), expected, atol=1e-9)


def test_a_window_grows_its_nuclei_as_the_whole_map_does() -> None:
    """``within`` leaves a component outside the window unlabelled, yet it still stops the growth
    of a window's nucleus 2 px away as its own label does in the whole map (grown by 3 px, the
    window's nucleus would otherwise spread over it)."""
    from dataclasses import replace

    config = replace(CONFIG, median_size=1, opening_radius=0, closing_radius=0, min_area_um2=1.0, expand_um=3.0)
    prob = np.zeros((32, 48), np.uint8)
    prob[10:20, 10:20] = 230  # in the window (columns < 22)
    prob[10:20, 23:33] = 230  # its bounding box misses the window: left unlabelled
    whole = label_nuclei(prob, mpp=MPP, config=config)
    window = label_nuclei(prob, mpp=MPP, config=config, within=(0, 32, 0, 22))
    inside = whole == whole[15, 15]
    assert inside.sum() > 100 and whole[15, 28] > 0 and not (inside & (prob > 0))[:, 23:].any()
    assert np.array_equal(window == window[15, 15], inside)
    assert window[15, 28] == 0 and (window > 0).sum() == inside.sum()  # the outside nucleus stays 0


def test_interior_marker_labels_blocked_equal_the_whole_map(tmp_path: Path):
    """An "interior" head's map (edges ~0.5, interiors ~1): blocks label as the whole map does."""
    from dataclasses import replace

    config = replace(CONFIG, interior_markers=True)
    prob = synthetic_map(seed=5)
    core = ndi.binary_erosion(prob >= 128, iterations=2)
    prob = np.where(prob >= 128, np.where(core, 250, 128), prob // 2).astype(np.uint8)
    whole = label_nuclei(prob, mpp=MPP, config=config)
    blocked = blocked_table(prob, tmp_path, config)
    expected = label_centroids(whole)
    assert len(blocked) == len(expected) > 40
    assert np.allclose(sorted_centroids(blocked), expected, atol=1e-9)
