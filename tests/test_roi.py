"""Regions of interest: QuPath GeoJSON annotations and mask images, matched to slides by name."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imsave

from nucflow.roi import RoiError, load_regions, match_rois


def _annotation(coords, *, name=None, classification=None, colour=(200, 0, 0), object_type="annotation"):
    """A feature as QuPath 0.4+ exports it (Export objects as GeoJSON)."""
    properties: dict = {"objectType": object_type}
    if name:
        properties["name"] = name
    if classification:
        properties["classification"] = {"name": classification, "color": list(colour)}
    return {"type": "Feature", "id": "7d3c6a10-3c5e-4a4b-9d51-0d2d1f3a6c11",
            "geometry": {"type": "Polygon", "coordinates": [coords]}, "properties": properties}


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _write(path: Path, features, *, collection=True) -> Path:
    data = {"type": "FeatureCollection", "features": features} if collection else features
    text = json.dumps(data)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_regions_by_name_and_classification_with_an_excluded_pen_mark(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.geojson", [
        _annotation(_square(0, 0, 100, 100), name="tumour core"),
        _annotation(_square(200, 0, 300, 100), classification="Stroma"),
        _annotation(_square(200, 150, 260, 200), classification="Stroma"),  # same class: one region
        _annotation(_square(50, 50, 250, 80), classification="Ignore*"),  # pen mark across both
        _annotation(_square(0, 0, 10, 10), object_type="detection"),  # a cell: not a region
    ])
    regions = load_regions(path)
    assert regions.names == ("tumour core", "Stroma")
    x = np.array([10.0, 90, 60, 210, 230, 240, 150, 5])
    y = np.array([10.0, 90, 60, 10, 180, 60, 50, 5])
    assert regions.label_points(x, y).tolist() == [0, 0, -1, 1, 1, -1, -1, 0]
    # the same through a grid of pixel centres (4 level-0 px per pixel)
    grid = regions.label_grid((50, 75), 4.0)
    rows, cols = np.mgrid[:50, :75]
    expected = regions.label_points((cols + 0.5) * 4, (rows + 0.5) * 4)
    assert np.array_equal(grid, expected) and (grid == 0).any() and (grid == 1).any()


def test_a_configurable_exclusion_and_older_qupath_exports(tmp_path: Path) -> None:
    old = _annotation(_square(0, 0, 50, 50), classification="Tumor")
    old["properties"]["classification"] = {"name": "Tumor", "colorRGB": -3670016}  # QuPath 0.2
    pen = _annotation(_square(0, 0, 20, 20), classification="Pen")
    path = _write(tmp_path / "b.geojson.gz", [old, pen], collection=False)  # a plain array, gzipped
    assert load_regions(path).names == ("Tumor", "Pen")
    regions = load_regions(path, exclude=["pen", "Ignore*"])
    assert regions.names == ("Tumor",)
    assert regions.label_points(np.array([10.0, 30]), np.array([10.0, 30])).tolist() == [-1, 0]


def test_qupath_offset_shifts_annotations_onto_level_0(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.geojson", [_annotation(_square(0, 0, 10, 10), name="r")])
    regions = load_regions(path, offset=(1000, 500))
    assert regions.label_points(np.array([5.0, 1005]), np.array([5.0, 505])).tolist() == [-1, 0]


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "does not parse as GeoJSON"),
    ('{"type": "Polygon", "coordinates": []}', "is not a GeoJSON FeatureCollection"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", '
     '"coordinates": [[[0, 0], [1]]]}, "properties": {}}]}', "invalid geometry"),
    ('{"type": "FeatureCollection", "features": []}', "holds no polygon annotation"),
])
def test_a_roi_file_that_does_not_parse_is_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(RoiError, match=message) as error:
        load_regions(path)
    assert str(path) in str(error.value)


def test_only_excluded_annotations_leave_nothing_to_segment(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.geojson", [_annotation(_square(0, 0, 5, 5), classification="Ignore*")])
    with pytest.raises(RoiError, match="no polygon annotation"):
        load_regions(path)


def test_a_region_outside_the_slide_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.geojson", [_annotation(_square(0, 0, 50, 50), name="in"),
                                           _annotation(_square(5000, 5000, 5100, 5100), name="far away")])
    regions = load_regions(path)
    with pytest.raises(RoiError, match="'far away' lie outside the slide"):
        regions.check_inside(1000, 800)
    load_regions(_write(tmp_path / "f.geojson", [_annotation(_square(900, 700, 1200, 900), name="edge")])
                 ).check_inside(1000, 800)  # partly on the slide: kept


def test_a_mask_image_is_stretched_over_the_slide(tmp_path: Path) -> None:
    mask = np.zeros((10, 20), np.uint8)
    mask[:, :10] = 1
    mask[5:, 15:] = 2
    imsave(tmp_path / "m.png", mask, check_contrast=False)
    regions = load_regions(tmp_path / "m.png", slide_size=(2000.0, 1000.0))  # 100 level-0 px per mask px
    assert regions.names == ("region 1", "region 2")
    labels = regions.label_points(np.array([50.0, 999, 1600, 1600]), np.array([50.0, 999, 200, 800]))
    assert labels.tolist() == [0, 0, -1, 1]
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(RoiError, match="does not parse as an image"):
        load_regions(tmp_path / "bad.png", slide_size=(10.0, 10.0))


def test_roi_files_are_matched_to_slides_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "rois"
    folder.mkdir()
    for name in ("a.geojson", "b.png"):
        (folder / name).write_text("x")
    assert match_rois(folder, ["a", "b", "c"]) == [folder / "a.geojson", folder / "b.png", None]
    (folder / "zz.geojson").write_text("x")
    with pytest.raises(RoiError, match=r"zz.geojson names no slide of this run"):
        match_rois(folder, ["a", "b"])
    single = folder / "a.geojson"
    assert match_rois(single, ["anything"]) == [single]  # one slide: the file is its ROI
    assert match_rois(single, ["a", "b"]) == [single, None]
    with pytest.raises(RoiError, match="names no slide"):
        match_rois(single, ["x", "y"])
    with pytest.raises(RoiError, match="does not exist"):
        match_rois(tmp_path / "missing", ["a"])


def _demo_roi(folder: Path) -> Path:
    """The demo slide's ROI as QuPath exports it: a tumour region with a pen mark, and stroma."""
    folder.mkdir(exist_ok=True)
    return _write(folder / "demo.geojson", [
        _annotation(_square(40, 40, 500, 470), name="tumour"),
        _annotation(_square(600, 560, 990, 1000), classification="Stroma"),
        _annotation(_square(200, 200, 330, 330), classification="Ignore*"),
    ])


@pytest.mark.usefixtures("ray_local")
def test_segment_with_a_roi_folder_segments_and_scores_only_its_regions(tmp_path: Path, demo_svs: Path) -> None:
    import geopandas as gpd
    import pandas as pd
    import shapely

    from nucflow.pipeline import load_segment_config, segment

    defaults = load_segment_config()
    config = replace(defaults, inference=replace(defaults.inference, tile_size=256, margin=32))
    roi = _demo_roi(tmp_path / "rois")
    whole = segment([demo_svs], tmp_path / "whole", method="threshold", config=config)
    part = segment([demo_svs], tmp_path / "roi", method="threshold", config=config, roi=roi.parent)
    assert [s.status for s in whole.slides + part.slides] == ["ok", "ok"]
    everything = gpd.read_parquet(tmp_path / "whole" / "demo" / "nuclei.parquet")
    table = gpd.read_parquet(tmp_path / "roi" / "demo" / "nuclei.parquet")
    regions = load_regions(roi)
    expected = everything[regions.label_points(everything.centroid_x, everything.centroid_y) >= 0]
    assert 0 < len(table) < len(everything)
    # the nuclei of the regions, the same as in the whole slide's table (planned with a nucleus' reach)
    assert sorted(shapely.to_wkb(table.geometry)) == sorted(shapely.to_wkb(expected.geometry))
    summary = json.loads((tmp_path / "roi" / "demo" / "summary.json").read_text())
    whole_summary = json.loads((tmp_path / "whole" / "demo" / "summary.json").read_text())
    assert summary["tiles"] < whole_summary["tiles"]  # tiles away from the regions never ran
    assert summary["tissue_area_mm2"] < whole_summary["tissue_area_mm2"]
    by_region = summary["scoring"]["regions"]
    assert sorted(by_region) == ["Stroma", "tumour"]
    labels = regions.label_points(table.centroid_x, table.centroid_y)
    for index, name in enumerate(regions.names):
        assert by_region[name]["nuclei"] == (labels == index).sum()
        assert by_region[name]["positive"] == (table["dab_intensity"].to_numpy()[labels == index] > 0).sum()
    areas = sum(r["tissue_area_mm2"] for r in by_region.values())
    assert areas == pytest.approx(summary["tissue_area_mm2"], rel=0.02)
    csv = pd.read_csv(tmp_path / "roi" / "regions.csv")
    assert dict(zip(csv["region"], csv["nuclei"], strict=True)) == {n: r["nuclei"] for n, r in by_region.items()}
    assert "tumour" in (tmp_path / "roi" / "report.html").read_text()


@pytest.mark.usefixtures("ray_local")
def test_bad_roi_input_is_refused_or_fails_its_slide(tmp_path: Path, demo_svs: Path) -> None:
    from nucflow.pipeline import segment

    stray = tmp_path / "rois"
    stray.mkdir()
    _write(stray / "other-slide.geojson", [_annotation(_square(0, 0, 9, 9), name="r")])
    with pytest.raises(RoiError, match="other-slide.geojson names no slide of this run"):
        segment([demo_svs], tmp_path / "out", method="threshold", roi=stray)
    assert not (tmp_path / "out" / "demo").exists()  # refused before anything ran
    far = _write(tmp_path / "demo.geojson", [_annotation(_square(5000, 5000, 6000, 6000), name="elsewhere")])
    result = segment([demo_svs], tmp_path / "out", method="threshold", roi=far)
    assert [s.status for s in result.slides] == ["failed"]
    assert "'elsewhere' lie outside the slide" in result.slides[0].error
