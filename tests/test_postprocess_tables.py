"""Nucleus tables on disk (GeoParquet, QuPath GeoJSON) and the QC overlay picture."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely.geometry
from skimage.io import imread

from nucflow.postprocess import (
    CLASS_COLOURS,
    PostprocessConfig,
    empty_table,
    nuclei_table,
    read_rgb_from_array,
    render_overlay,
    write_geojson_qupath,
    write_geoparquet,
)


@pytest.fixture(scope="module")
def table() -> gpd.GeoDataFrame:
    """Nuclei of a literal map: 3 brown (DAB) discs on the left, 3 blue ones on the right."""
    rr, cc = np.mgrid[:96, :160]
    prob = np.zeros((96, 160), np.uint8)
    rgb = np.full((96, 160, 3), 240, np.uint8)
    for index, (r, c) in enumerate([(20, 20), (48, 30), (76, 20), (20, 130), (48, 140), (76, 130)]):
        disc = (rr - r) ** 2 + (cc - c) ** 2 <= 64
        prob[disc] = 230
        rgb[disc] = (120, 70, 30) if index < 3 else (70, 80, 160)
    config = PostprocessConfig()
    return nuclei_table(
        prob, config=config, read_rgb=read_rgb_from_array(rgb), mpp=0.5,
        level0_scale=2.0, slide_mpp=0.25, block_size=64,
    )


def test_the_literal_table_has_three_positive_and_three_negative_nuclei(table):
    assert len(table) == 6
    assert table.dab_positive.sum() == 3
    assert (table[table.dab_positive].centroid_x < 160).all()


def test_geoparquet_round_trips_both_geometry_columns(table, tmp_path: Path):
    path = write_geoparquet(table, tmp_path / "nuclei.parquet")
    back = gpd.read_parquet(path)
    assert list(back.columns) == list(table.columns)
    assert isinstance(back["geometry_um"], gpd.GeoSeries)
    assert back.geometry.geom_equals_exact(table.geometry, tolerance=0).all()
    assert back["geometry_um"].geom_equals_exact(table["geometry_um"], tolerance=0).all()
    assert back.drop(columns=["geometry", "geometry_um"]).equals(
        table.drop(columns=["geometry", "geometry_um"])
    )
    assert [p.name for p in tmp_path.iterdir()] == ["nuclei.parquet"]


def test_empty_table_round_trips(tmp_path: Path):
    back = gpd.read_parquet(write_geoparquet(empty_table(), tmp_path / "empty.parquet"))
    assert len(back) == 0 and list(back.columns) == list(empty_table().columns)
    geojson = write_geojson_qupath(empty_table(), tmp_path / "empty.geojson")
    assert json.loads(geojson.read_text()) == {"type": "FeatureCollection", "features": []}


def test_geojson_holds_qupath_detections_classified_by_positivity(table, tmp_path: Path):
    path = write_geojson_qupath(table, tmp_path / "nuclei.geojson")
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(table)
    for feature, row in zip(features, table.itertuples(), strict=True):
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        name = "Positive" if row.dab_positive else "Negative"
        assert properties["classification"] == {"name": name, "color": list(CLASS_COLOURS[name])}
        assert properties["measurements"]["Nucleus id"] == row.id
        assert properties["measurements"]["Area µm^2"] == pytest.approx(row.area_um2)
        assert properties["measurements"]["DAB OD mean"] == pytest.approx(row.dab_od)
        assert feature["geometry"]["type"] == "Polygon"
        assert shapely.geometry.shape(feature["geometry"]).equals(row.geometry)


def test_a_failed_write_leaves_nothing_behind(table, tmp_path: Path):
    broken = table.drop(columns=["dab_od"])
    with pytest.raises(KeyError, match="dab_od"):
        write_geojson_qupath(broken, tmp_path / "nuclei.geojson")
    assert list(tmp_path.iterdir()) == []


def test_overlay_shows_thumbnail_tissue_outline_and_coloured_nuclei(table, tmp_path: Path):
    thumbnail = np.full((48, 80, 3), 240, np.uint8)  # level-0 is 192x320: 4 level-0 px per px
    tissue = np.zeros((24, 40), bool)  # a coarser mask is stretched over the thumbnail
    tissue[2:22, 2:38] = True
    path = render_overlay(
        thumbnail, level0_scale=4.0, tissue_mask=tissue, nuclei=table, path=tmp_path / "o.png"
    )
    picture = imread(path)[..., :3].astype(int)
    assert picture.shape == (48, 80, 3)

    red, green, blue = picture[..., 0], picture[..., 1], picture[..., 2]
    positive, negative = red > blue + 50, blue > red + 50  # QuPath's colours, 60% opaque
    assert positive[:, :40].sum() > 20 and positive[:, 40:].sum() == 0
    assert negative[:, 40:].sum() > 20 and negative[:, :40].sum() == 0
    outline = (green > red + 60) & (green > blue + 60)
    assert outline[10:40, 3:6].all(axis=0).any()  # tissue's left edge at thumbnail column 4
    assert not outline[10:40, 6:30].any()
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_overlay_without_nuclei_or_tissue_is_the_thumbnail(tmp_path: Path):
    thumbnail = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    path = render_overlay(
        thumbnail, level0_scale=1.0, tissue_mask=None, nuclei=empty_table(), path=tmp_path / "o.png"
    )
    assert np.array_equal(imread(path)[..., :3], thumbnail)
