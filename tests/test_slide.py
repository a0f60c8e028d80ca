"""The slide reader, tissue mask and tile grid on real and synthetic slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from nucflow.errors import InputError, SlideError
from nucflow.slide import open_slide, safe_slide_name, tile_grid, tissue_mask
from nucflow.slide.synthetic import write_svs


def test_svs_fixture_opens_as_aperio_with_mpp_and_pyramid(small_svs: Path) -> None:
    with open_slide(small_svs) as slide:
        assert slide.vendor == "aperio"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.size == (640, 768)
        assert slide._backend.level_downsamples == [1.0, 2.0]


def test_real_cmu_svs_reads_its_resolution(shared_data: Path) -> None:
    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as slide:
        assert slide.vendor == "aperio"
        assert slide.mpp == pytest.approx(0.499)
        assert slide.size == (2967, 2220)


@pytest.mark.parametrize(("name", "mpp"), [("OS-2-ndpi.ome.tif", 0.2271), ("OS-2-vsi.ome.tif", 0.3461)])
def test_ome_tiff_resolution_comes_from_physical_size(shared_data: Path, name: str, mpp: float) -> None:
    with open_slide(shared_data / "slides" / name) as slide:
        assert slide.vendor == "tifffile"  # OpenSlide sees a one-level generic-tiff without resolution
        assert slide.mpp == pytest.approx(mpp, abs=1e-4)


def test_tiff_resolution_tags_give_mpp(tmp_path: Path) -> None:
    path = tmp_path / "tagged.tif"
    # 40,000 px per cm = 0.25 µm/px
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), resolution=(40000, 40000), resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25)


def test_missing_resolution_says_to_pass_mpp_and_mpp_overrides(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    import imageio.v3 as iio

    iio.imwrite(path, np.full((32, 48, 3), 200, np.uint8))
    with pytest.raises(SlideError, match="pass --mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.3) as slide:
        assert slide.mpp == 0.3 and slide.size == (32, 48)


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "nope.svs")
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    with pytest.raises(SlideError, match="notes.txt is not a slide"):
        open_slide(text)
    with pytest.raises(InputError, match="--mpp must be a positive"):
        open_slide(text, mpp=-1)


def test_truncated_slide_is_a_slide_error(tmp_path: Path, small_svs: Path) -> None:
    cut = tmp_path / "cut.svs"
    cut.write_bytes(small_svs.read_bytes()[:4000])
    with pytest.raises(SlideError, match="cut.svs"):
        with open_slide(cut, mpp=0.5) as slide:
            slide.read(mpp=0.5, row=0, col=0, rows=256, cols=256)


def test_read_at_level_zero_matches_the_written_pixels_up_to_jpeg(tmp_path: Path) -> None:
    rr, cc = np.mgrid[:300, :400]
    rgb = np.stack([rr * 255 // 300, cc * 255 // 400, (rr + cc) * 255 // 700], axis=2).astype(np.uint8)
    path = write_svs(tmp_path / "s.svs", rgb, mpp=0.25, quality=95)
    with open_slide(path) as slide:
        out = slide.read(mpp=0.25, row=0, col=0, rows=300, cols=400)
    assert np.abs(out.astype(int) - rgb).mean() < 2  # a smooth gradient survives JPEG q95


def test_region_past_the_edge_is_white(small_svs: Path) -> None:
    with open_slide(small_svs) as slide:
        out = slide.read(mpp=0.5, row=600, col=700, rows=100, cols=100)
    assert (out[50:, :] == 255).all() and (out[:, 80:] == 255).all()


@pytest.mark.parametrize("mpp", [0.5, 0.8, 1.0, 1.7])
def test_tiles_of_a_resampled_read_equal_the_whole_read(small_svs: Path, mpp: float) -> None:
    with open_slide(small_svs) as slide:
        rows, cols = slide.shape_at(mpp)
        whole = slide.read(mpp=mpp, row=0, col=0, rows=rows, cols=cols)
        tile = slide.read(mpp=mpp, row=37, col=51, rows=90, cols=70)
    np.testing.assert_array_equal(tile, whole[37:127, 51:121])


def test_thumbnail_and_tissue_mask_find_the_tissue(small_svs: Path) -> None:
    with open_slide(small_svs) as slide:
        thumb, thumb_mpp = slide.thumbnail(max_size=128)
    assert max(thumb.shape[:2]) <= 128 and thumb_mpp == pytest.approx(0.5 * 768 / 128)
    mask = tissue_mask(thumb, mpp=thumb_mpp, min_area_um2=100)
    scale = 128 / 768
    inside = mask[int(150 * scale) : int(500 * scale), int(160 * scale) : int(600 * scale)]
    assert inside.mean() > 0.95
    assert mask[:8, :8].sum() == 0 and mask[-5:, -5:].sum() == 0


def test_blank_slide_has_no_tissue_and_no_tiles() -> None:
    blank = np.full((100, 100, 3), 245, np.uint8)
    mask = tissue_mask(blank, mpp=8.0)
    assert not mask.any()
    assert tile_grid((800, 800), tile_size=256, margin=16, tissue=mask).tiles == ()


def test_tile_cores_cover_the_map_exactly_once() -> None:
    grid = tile_grid((1000, 777), tile_size=256, margin=32)
    cover = np.zeros((1000, 777), int)
    for t in grid.tiles:
        cover[t.row : t.row + t.rows, t.col : t.col + t.cols] += 1
        assert t.read_origin == (t.row - 32, t.col - 32) and t.size == 256
    assert (cover == 1).all()
    assert grid.core == 192 and len(grid.tiles) == 6 * 5


def test_tissue_selects_only_touched_cores() -> None:
    tissue = np.zeros((10, 10), bool)
    tissue[0, 0] = True  # covers map rows/cols [0, 100): only the first core of 192
    grid = tile_grid((1000, 1000), tile_size=256, margin=32, tissue=tissue)
    assert [(t.row, t.col) for t in grid.tiles] == [(0, 0)]
    tissue[5, 9] = True  # map rows [500, 600) -> cores at 384, 576; cols [900, 1000) -> 768, 960
    grid = tile_grid((1000, 1000), tile_size=256, margin=32, tissue=tissue)
    assert {(t.row, t.col) for t in grid.tiles} == {(0, 0), (384, 768), (384, 960), (576, 768), (576, 960)}


def test_safe_names() -> None:
    assert safe_slide_name("/a/b/My Slide (1).svs") == "My_Slide_1"
    assert safe_slide_name("x/OS-2-ndpi.ome.tif") == "OS-2-ndpi"
    assert safe_slide_name("../..svs") == "slide"


def test_tissue_per_core_equals_marking_each_tissue_pixel_span() -> None:
    """The matrix-product marking equals marking, pixel by pixel, every core a tissue pixel's span meets."""
    import math

    from nucflow.slide.tiles import _tissue_per_core

    rng = np.random.default_rng(0)
    for _ in range(60):
        tissue = rng.random(tuple(rng.integers(3, 60, 2))) < rng.uniform(0.0, 0.1)
        shape, core = (int(rng.integers(10, 2000)), int(rng.integers(10, 2000))), int(rng.integers(5, 400))
        n_rows, n_cols = math.ceil(shape[0] / core), math.ceil(shape[1] / core)
        scale_r, scale_c = shape[0] / tissue.shape[0], shape[1] / tissue.shape[1]
        expected = np.zeros((n_rows, n_cols), bool)
        for r, c in zip(*np.nonzero(tissue), strict=True):
            r0, r1 = int(r * scale_r // core), int(np.nextafter((r + 1) * scale_r, 0) // core)
            c0, c1 = int(c * scale_c // core), int(np.nextafter((c + 1) * scale_c, 0) // core)
            expected[r0 : min(r1, n_rows - 1) + 1, c0 : min(c1, n_cols - 1) + 1] = True
        assert np.array_equal(_tissue_per_core(tissue, shape, core), expected)


def test_hsv_saturation_equals_skimage_on_a_real_thumbnail(shared_data: Path) -> None:
    """The tissue mask's saturation, computed without the hue, is skimage's value for value."""
    from skimage import color

    from nucflow.slide.tissue import hsv_saturation

    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as slide:
        thumb, _ = slide.thumbnail(max_size=512)
    rng = np.random.default_rng(0)
    odd = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    odd[:8] = odd[:8, :, :1]  # grey pixels (no saturation) and black ones (no value)
    odd[:4] = 0
    for rgb in (thumb, odd):
        expected = color.rgb2hsv(rgb.astype(np.float32) / 255.0)[..., 1]
        got = hsv_saturation(rgb)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert hsv_saturation(thumb).max() > 0.2 and not hsv_saturation(odd)[:8].any()
