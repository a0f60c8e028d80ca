"""QuPath coordinates: slides whose format records ``openslide.bounds-*`` (MRXS, SCN, BIF ...),
on a real Leica SCN that OpenSlide opens with bounds.

QuPath's OpenSlide server shows such a slide cropped to its bounds, so its (0, 0) is level-0
(bounds-x, bounds-y). nucflow tabulates full level-0 coordinates (GeoParquet), records the
offset in the probability map, and writes GeoJSON in QuPath's coordinates.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import zarr

from nucflow.slide import open_slide
from nucflow.slide.reader import openslide_bounds
from nucflow.slide.synthetic import write_leica_scn

BOUNDS = (96, 40, 600, 560)  # x, y, width, height of the scanned area, level-0 px


def test_openslide_bounds_properties() -> None:
    props = {"openslide.bounds-x": "96", "openslide.bounds-y": "40", "openslide.bounds-width": "600",
             "openslide.bounds-height": "560"}
    assert openslide_bounds(props, (640, 768)) == BOUNDS
    assert openslide_bounds({"openslide.bounds-x": "10", "openslide.bounds-y": "5"}, (640, 768)) == (10, 5, 758, 635)
    assert openslide_bounds({}, (640, 768)) is None  # no bounds: QuPath's origin is level-0's
    assert openslide_bounds({"openslide.bounds-x": "0", "openslide.bounds-y": "0"}, (640, 768)) is None


@pytest.fixture(scope="module")
def scn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Leica SCN (OpenSlide's ``leica`` reader): blobs at 0.5 µm/px, scanned area at (96, 40)."""
    rng = np.random.default_rng(0)
    rows, cols = 560, 600
    rgb = np.full((rows, cols, 3), 242, np.uint8)
    rgb[60:500, 60:540] = (200, 170, 190)
    rr, cc = np.mgrid[:rows, :cols]
    for r, c in rng.integers((70, 70), (490, 530), size=(50, 2)):
        rgb[(rr - r) ** 2 + (cc - c) ** 2 < 36] = (80, 60, 120)
    return write_leica_scn(tmp_path_factory.mktemp("scn") / "bounded.scn", rgb, mpp=0.5, offset=(96, 40))


def test_real_scn_reports_bounds_and_qupath_offset(scn: Path, small_svs: Path) -> None:
    with open_slide(small_svs) as plain:
        assert plain.bounds is None and plain.qupath_offset == (0, 0)
    with open_slide(scn) as slide:
        assert slide.vendor == "leica" and slide.mpp == pytest.approx(0.5)
        assert slide.bounds == BOUNDS and slide.qupath_offset == (96, 40)
        assert slide.size == (40 + 560 + 30, 96 + 600 + 50)  # level 0 spans the whole collection
        assert (slide.read(mpp=0.5, row=0, col=0, rows=40, cols=96) == 255).all()  # outside the scan: white


def test_map_records_the_offset_and_geojson_is_in_qupath_coordinates(tmp_path: Path, scn: Path) -> None:
    from nucflow.inference.store import ProbabilityMap
    from nucflow.pipeline import finish, plan
    from nucflow.pipeline.config import load_segment_config
    from nucflow.pipeline.image import method_spec

    defaults = load_segment_config()
    config = replace(defaults, method="threshold", inference=replace(defaults.inference, tile_size=128, margin=32))
    spec = method_spec(config)
    planned = plan.plan_slide(scn, "small", tmp_path, spec=spec, config=config, mpp=None, overwrite=False)
    assert planned.status == "todo" and planned.grid is not None
    attrs = zarr.open_group(planned.map_path, mode="r").attrs.asdict()
    assert attrs["qupath_offset"] == [96, 40] and attrs["slide_bounds"] == list(BOUNDS)
    # fill the map with the dark blobs of the slide (a stand-in for the model) and finish it
    with open_slide(scn) as slide:
        rows, cols = planned.grid.shape
        dark = slide.read(mpp=planned.mpp, row=0, col=0, rows=rows, cols=cols).mean(axis=2) < 110
    store = ProbabilityMap(planned.map_path)
    for tile in planned.grid.tiles:
        core = dark[tile.row : tile.row + tile.rows, tile.col : tile.col + tile.cols]
        store.write_core(tile, core.astype(np.float32))
    store.mark_done(planned.grid.tiles)
    finish.finish_slide(planned, config, geojson=True)
    table = gpd.read_parquet(tmp_path / "small" / "nuclei.parquet")
    features = json.loads((tmp_path / "small" / "nuclei.geojson").read_text())["features"]
    assert len(table) == len(features) > 10
    # GeoParquet: OpenSlide's full level-0 coordinates (the blobs sit inside the scanned area)
    assert table.centroid_x.min() >= 96 + 70 - 8 and table.centroid_y.min() >= 40 + 70 - 8
    assert table.centroid_x.max() <= 96 + 530 + 8 and table.centroid_y.max() <= 40 + 490 + 8
    outlines = shapely.from_geojson([json.dumps(f["geometry"]) for f in features])
    expected = shapely.transform(table.geometry.to_numpy(), lambda xy: xy - np.array([96.0, 40.0]))
    assert all(shapely.equals_exact(a, b, tolerance=0.011) for a, b in zip(outlines, expected, strict=True))
    # the map is an OME-Zarr image napari's reader opens: full level plus a 2x level, in µm
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    image = next(iter(Reader(parse_url(planned.map_path))()))
    assert [tuple(level.shape) for level in image.data] == [(rows, cols), ((rows + 1) // 2, (cols + 1) // 2)]
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert scales == [[0.5, 0.5], [1.0, 1.0]]
