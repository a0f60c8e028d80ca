"""The QuPath round trip: nuclei.geojson as QuPath writes it, read back by GeoJSON readers."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from nucflow.postprocess import (
    NucleusTableWriter,
    PostprocessConfig,
    load_stain_profile,
    nuclei_table,
    read_rgb_from_array,
    write_geojson_qupath,
)


@pytest.fixture(scope="module")
def table() -> gpd.GeoDataFrame:
    """Nuclei of graded brown (1+ to 3+) and blue discs, one with no RGB measure (NaN ODs)."""
    rr, cc = np.mgrid[:120, :200]
    prob = np.zeros((120, 200), np.uint8)
    rgb = np.full((120, 200, 3), 240, np.uint8)
    colours = [(210, 180, 150), (190, 150, 110), (150, 100, 60), (70, 80, 160), (60, 70, 150)]
    for index, c in enumerate(range(20, 200, 40)):
        disc = (rr - 40) ** 2 + (cc - c) ** 2 <= 64
        prob[disc] = 230
        rgb[disc] = colours[index]
    return nuclei_table(prob, config=PostprocessConfig(), read_rgb=read_rgb_from_array(rgb), mpp=0.5,
                        level0_scale=2.0, slide_mpp=0.25, block_size=64)


def _strict(text: str):
    """JSON as RFC 8259 has it: NaN, Infinity and -Infinity are not numbers."""
    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_geojson_is_what_qupath_writes(table, tmp_path: Path) -> None:
    table = table.copy()
    table.loc[table.index[-1], "dab_od"] = np.nan  # a measurement QuPath could not make
    path = write_geojson_qupath(table, tmp_path / "n.geojson", id_seed="slide-sha")
    collection = _strict(path.read_text(encoding="utf-8"))
    features = collection["features"]
    assert len(features) == len(table) == 5
    names = [f["properties"]["classification"]["name"] for f in features]
    assert set(names) <= {"Negative", "1+", "2+", "3+"} and "Negative" in names and len(set(names)) >= 3
    for feature in features:
        assert uuid.UUID(feature["id"]).version == 5
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert properties["classification"]["color"] in ([112, 112, 225], [255, 215, 0], [225, 150, 50],
                                                        [200, 50, 50])
        measurements = properties["measurements"]
        assert set(measurements) >= {"Nucleus: Area µm^2", "Nucleus: DAB OD mean", "Nucleus: Hematoxylin OD mean"}
        assert all(isinstance(v, float | int) or v == "NaN" for v in measurements.values())
    assert features[-1]["properties"]["measurements"]["Nucleus: DAB OD mean"] == "NaN"  # QuPath >= 0.5 reads it


def test_reruns_write_identical_files_and_ids_follow_the_slide(table, tmp_path: Path) -> None:
    first = write_geojson_qupath(table, tmp_path / "a.geojson", id_seed="slide-1").read_bytes()
    again = write_geojson_qupath(table, tmp_path / "b.geojson", id_seed="slide-1").read_bytes()
    other = write_geojson_qupath(table, tmp_path / "c.geojson", id_seed="slide-2").read_text()
    assert first == again
    ids = [f["id"] for f in json.loads(first)["features"]]
    assert len(set(ids)) == len(ids) and not set(ids) & {f["id"] for f in json.loads(other)["features"]}


def test_gzipped_geojson_streams_the_same_features(table, tmp_path: Path) -> None:
    plain = write_geojson_qupath(table, tmp_path / "n.geojson", id_seed="s")
    packed = write_geojson_qupath(table, tmp_path / "n.geojson.gz", id_seed="s")
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert packed.read_bytes() == write_geojson_qupath(table, tmp_path / "again.geojson.gz", id_seed="s").read_bytes()
    with NucleusTableWriter(tmp_path / "t.parquet", geojson=tmp_path / "t.geojson.gz", id_seed="s") as writer:
        writer.write(table.iloc[:2])
        writer.write(table.iloc[2:])
    assert json.loads(gzip.decompress((tmp_path / "t.geojson.gz").read_bytes())) == json.loads(plain.read_text())


def test_geojson_readers_read_it_back(table, tmp_path: Path) -> None:
    path = write_geojson_qupath(table, tmp_path / "n.geojson", id_seed="s", offset=(10.0, 20.0))
    back = gpd.read_file(path)  # GDAL's GeoJSON driver through pyogrio
    assert len(back) == len(table) and back.geometry.is_valid.all()
    expected = shapely.transform(table.geometry.to_numpy(), lambda xy: np.round(xy - (10.0, 20.0), 2))
    assert all(shapely.equals_exact(a, b, tolerance=1e-9) for a, b in zip(back.geometry, expected, strict=True))
    for feature in json.loads(path.read_text())["features"]:
        geometry = shapely.geometry.shape(feature["geometry"])
        assert geometry.geom_type == "Polygon" and geometry.is_valid
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4  # closed linear rings (RFC 7946, 3.1.6)


def test_class_colours_come_from_the_stain_profile(table, tmp_path: Path) -> None:
    profile = tmp_path / "mine.yaml"
    profile.write_text("class_colours:\n  Negative: [0, 0, 255]\n  3+: [10, 20, 30]\n")
    colours = load_stain_profile(profile).class_colours
    path = write_geojson_qupath(table, tmp_path / "n.geojson", colours=colours)
    seen = {f["properties"]["classification"]["name"]: f["properties"]["classification"]["color"]
            for f in json.loads(path.read_text())["features"]}
    assert seen["Negative"] == [0, 0, 255]
    assert seen.get("3+", [10, 20, 30]) == [10, 20, 30] and seen.get("1+", [255, 215, 0]) == [255, 215, 0]
    profile.write_text("class_colours:\n  Tumour: [1, 2, 3]\n")
    with pytest.raises(Exception, match="class_colours"):
        load_stain_profile(profile)


def test_positive_negative_profiles_write_qupath_positive_and_negative(table, tmp_path: Path) -> None:
    path = write_geojson_qupath(table, tmp_path / "n.geojson", graded=False)
    names = {f["properties"]["classification"]["name"] for f in json.loads(path.read_text())["features"]}
    assert names == {"Positive", "Negative"}
