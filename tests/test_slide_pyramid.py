"""The lazy tifffile reader: OME-TIFF pyramids with SubIFDs, TIFFs OpenSlide refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from nucflow.errors import SlideError
from nucflow.slide import metadata_mpp, open_slide
from nucflow.slide.synthetic import array_region, write_ome_pyramid


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ome_pyramid(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> Path:
    """700x900 at 0.5 µm/px, levels 1 and 2 in SubIFDs, zlib (lossless, so pixels compare exactly)."""
    path = tmp_path_factory.mktemp("ome") / "pyramid.ome.tif"
    return write_ome_pyramid(path, image.shape[:2], array_region(image), mpp=0.5, levels=3, tile=128,
                             compression="zlib")


def test_subifd_pyramid_opens_lazily_with_every_level_and_ome_mpp(ome_pyramid: Path) -> None:
    import openslide

    with openslide.OpenSlide(str(ome_pyramid)) as handle:  # what OpenSlide alone would give
        assert handle.level_count == 1 and openslide.PROPERTY_NAME_MPP_X not in handle.properties
    with open_slide(ome_pyramid) as slide:
        assert slide.vendor == "tifffile"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.size == (700, 900)
        assert slide._backend.level_shapes == [(700, 900), (350, 450), (175, 225)]
        assert slide._backend.level_downsamples == [1.0, 2.0, 4.0]
    assert metadata_mpp(ome_pyramid) == pytest.approx(0.5)


@pytest.mark.parametrize(("mpp", "level"), [(0.5, 0), (1.0, 1), (2.0, 2)])
def test_region_reads_equal_the_full_level_read(ome_pyramid: Path, mpp: float, level: int) -> None:
    whole = tifffile.imread(ome_pyramid, level=level)  # the plain full-array read of that level
    with open_slide(ome_pyramid) as slide:
        rows, cols = whole.shape[:2]
        assert slide.shape_at(mpp) == (rows, cols)
        assert np.array_equal(slide.read(mpp=mpp, row=0, col=0, rows=rows, cols=cols), whole)
        # a region straddling tiles and the bottom-right edge: the pixels, then white
        r, c = rows - 40, cols - 70
        region = slide.read(mpp=mpp, row=r, col=c, rows=100, cols=100)
        assert np.array_equal(region[:40, :70], whole[r:, c:])
        assert (region[40:] == 255).all() and (region[:, 70:] == 255).all()
        # negative origin: white above/left of the slide
        region = slide.read(mpp=mpp, row=-5, col=-9, rows=30, cols=30)
        assert (region[:5] == 255).all() and np.array_equal(region[5:, 9:], whole[:25, :21])


def test_resampled_tiles_equal_the_whole_resampled_read(ome_pyramid: Path) -> None:
    with open_slide(ome_pyramid) as slide:
        rows, cols = slide.shape_at(0.7)
        whole = slide.read(mpp=0.7, row=0, col=0, rows=rows, cols=cols)
        stitched = np.zeros_like(whole)
        for r in range(0, rows, 96):
            for c in range(0, cols, 96):
                tile = slide.read(mpp=0.7, row=r, col=c, rows=96, cols=96)
                h, w = min(96, rows - r), min(96, cols - c)
                stitched[r : r + h, c : c + w] = tile[:h, :w]
        assert np.array_equal(stitched, whole)


def test_region_read_decodes_only_the_tiles_it_touches(ome_pyramid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    make_decoder = tifffile.TiffPage.__dict__["decode"].func  # a cached_property giving the tile decoder

    def counting(self: tifffile.TiffPage) -> object:
        decode = make_decoder(self)

        def counted(data: bytes | None, index: int, **kwargs: object) -> object:
            decoded.append(index)
            return decode(data, index, **kwargs)

        return counted

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(counting))
    with open_slide(ome_pyramid) as slide:
        slide.read(mpp=0.5, row=130, col=260, rows=100, cols=100)  # inside tile (row 1, col 2) of 128 px
    assert len(decoded) == 1


@pytest.mark.parametrize(("size", "unit", "mpp"), [("0.25", "µm", 0.25), ("250", "nm", 0.25), ("0.0005", "mm", 0.5)])
def test_mpp_from_ome_xml_physical_size_and_unit(tmp_path: Path, size: str, unit: str, mpp: float) -> None:
    path = tmp_path / "unit.ome.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), photometric="rgb", tile=(32, 32),
                     metadata={"axes": "YXS", "PhysicalSizeX": float(size), "PhysicalSizeXUnit": unit})
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(mpp)


def test_ifd_pyramid_with_resolution_stays_with_openslide(tmp_path: Path, small_svs: Path) -> None:
    with open_slide(small_svs) as slide:
        assert slide.vendor == "aperio"


def test_truncated_ome_pyramid_is_a_slide_error_naming_it(tmp_path: Path, ome_pyramid: Path) -> None:
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(ome_pyramid.read_bytes()[:4000])
    with pytest.raises(SlideError, match="cut.ome.tif"):
        with open_slide(cut) as slide:
            slide.read(mpp=0.5, row=0, col=0, rows=700, cols=900)


def test_threads_sharing_one_handle_read_what_one_thread_reads(ome_pyramid: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    corners = [(r, c) for r in range(0, 700, 90) for c in range(0, 900, 110)]
    with open_slide(ome_pyramid) as slide:

        def read(corner: tuple[int, int]) -> np.ndarray:
            return slide.read(mpp=0.5, row=corner[0], col=corner[1], rows=150, cols=150)

        alone = [read(corner) for corner in corners]
        with ThreadPoolExecutor(6) as pool:
            shared = list(pool.map(read, corners))
    assert all(np.array_equal(a, b) for a, b in zip(alone, shared, strict=True))
