"""QuPath coordinates: slides whose format records ``openslide.bounds-*`` (MRXS, SCN, BIF ...).

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
from nucflow.slide.reader import Slide, _Opened, _OpenSlideBackend, openslide_bounds

BOUNDS = (96, 40, 600, 560)  # x, y, width, height of the scanned area, level-0 px


def test_openslide_bounds_properties() -> None:
    props = {"openslide.bounds-x": "96", "openslide.bounds-y": "40", "openslide.bounds-width": "600",
             "openslide.bounds-height": "560"}
    assert openslide_bounds(props, (640, 768)) == BOUNDS
    assert openslide_bounds({"openslide.bounds-x": "10", "openslide.bounds-y": "5"}, (640, 768)) == (10, 5, 758, 635)
    assert openslide_bounds({}, (640, 768)) is None  # no bounds: QuPath's origin is level-0's
    assert openslide_bounds({"openslide.bounds-x": "0", "openslide.bounds-y": "0"}, (640, 768)) is None


class _BoundedBackend(_OpenSlideBackend):
    """A real OpenSlide reading of a slide, reporting bounds as an MRXS would."""

    def __init__(self, handle: object) -> None:
        super().__init__(handle)
        self.bounds = BOUNDS


def _open_bounded(path: str | Path, *, mpp: float | None = None) -> Slide:
    import openslide

    handle = openslide.OpenSlide(str(path))
    return Slide(Path(path), _Opened(_BoundedBackend(handle), 0.5, "bounded"), mpp=mpp or 0.5)


def test_slide_reports_qupath_offset(small_svs: Path) -> None:
    with open_slide(small_svs) as plain:
        assert plain.bounds is None and plain.qupath_offset == (0, 0)
    with _open_bounded(small_svs) as slide:
        assert slide.qupath_offset == (96, 40)


def test_map_records_the_offset_and_geojson_is_in_qupath_coordinates(
    tmp_path: Path, small_svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nucflow.inference.store import ProbabilityMap
    from nucflow.pipeline import finish, plan
    from nucflow.pipeline.config import load_segment_config
    from nucflow.pipeline.image import method_spec

    monkeypatch.setattr(plan, "open_slide", _open_bounded)
    monkeypatch.setattr(finish, "open_slide", _open_bounded)
    defaults = load_segment_config()
    config = replace(defaults, method="threshold", inference=replace(defaults.inference, tile_size=128, margin=32))
    spec = method_spec(config)
    planned = plan.plan_slide(small_svs, "small", tmp_path, spec=spec, config=config, mpp=None, overwrite=False)
    assert planned.status == "todo" and planned.grid is not None
    attrs = zarr.open_group(planned.map_path, mode="r").attrs.asdict()
    assert attrs["qupath_offset"] == [96, 40] and attrs["slide_bounds"] == list(BOUNDS)
    # fill the map with the dark blobs of the slide (a stand-in for the model) and finish it
    with open_slide(small_svs) as slide:
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
    # GeoParquet: full level-0 coordinates (the blobs sit where the slide has them)
    assert table.geometry.bounds.minx.min() >= 120 - 8 and table.centroid_x.max() <= 650
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
