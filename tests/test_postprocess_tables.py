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
    NucleusTableWriter,
    OverlayNuclei,
    PostprocessConfig,
    empty_table,
    iter_nuclei_parts,
    nuclei_table,
    read_rgb_from_array,
    render_overlay,
    write_geojson_qupath,
    write_geoparquet,
)
from nucflow.postprocess._writers import LEGEND_STRIP_PX


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
        name = ("Negative", "1+", "2+", "3+")[row.dab_intensity]
        assert (name != "Negative") == row.dab_positive
        assert properties["classification"] == {"name": name, "color": list(CLASS_COLOURS[name])}
        assert properties["measurements"]["Nucleus id"] == row.id
        assert properties["measurements"]["Nucleus: Area µm^2"] == pytest.approx(row.area_um2)
        assert properties["measurements"]["Nucleus: DAB OD mean"] == pytest.approx(row.dab_od)
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
    assert picture.shape == (48 + LEGEND_STRIP_PX, 560, 3)  # the legend strip under the picture
    picture = picture[:48, :80]

    red, green, blue = picture[..., 0], picture[..., 1], picture[..., 2]
    positive, negative = red > blue + 50, blue > red + 50  # QuPath's colours, as outlines
    assert positive[:, :40].sum() > 20 and positive[:, 40:].sum() == 0
    assert negative[:, 40:].sum() > 20 and negative[:, :40].sum() == 0
    outline = (green > red + 60) & (green > blue + 60)
    assert outline[10:40, 3:6].all(axis=0).any()  # tissue's left edge at thumbnail column 4
    assert not outline[10:40, 6:30].any()
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_overlay_without_nuclei_or_tissue_is_the_thumbnail(tmp_path: Path):
    thumbnail = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    path = render_overlay(
        thumbnail, level0_scale=1.0, tissue_mask=None, nuclei=empty_table(), path=tmp_path / "o.png",
        legend=False,
    )
    assert np.array_equal(imread(path)[..., :3], thumbnail)


def _two_rows_of_discs() -> tuple[np.ndarray, np.ndarray]:
    rr, cc = np.mgrid[:200, :300]
    prob = np.zeros((200, 300), np.uint8)
    rgb = np.full((200, 300, 3), 240, np.uint8)
    for index, (r, c) in enumerate((r, c) for r in range(20, 200, 40) for c in range(20, 300, 40)):
        disc = (rr - r) ** 2 + (cc - c) ** 2 <= 49
        prob[disc] = 230
        rgb[disc] = (120, 70, 30) if index % 3 == 0 else (70, 80, 160)
    return prob, rgb


def test_parts_written_one_by_one_equal_the_whole_table(tmp_path: Path):
    prob, rgb = _two_rows_of_discs()
    options = dict(config=PostprocessConfig(), read_rgb=read_rgb_from_array(rgb), mpp=0.5, block_size=64)
    whole = nuclei_table(prob, **options)
    parts = list(iter_nuclei_parts(prob, blocks_per_part=3, **options))
    assert len(parts) > 3 and sum(len(p) for p in parts) == len(whole) == 35
    with NucleusTableWriter(tmp_path / "n.parquet", geojson=tmp_path / "n.geojson") as writer:
        for part in parts:
            writer.write(part)
    assert writer.rows == len(whole)
    back = gpd.read_parquet(tmp_path / "n.parquet")
    reference = gpd.read_parquet(write_geoparquet(whole, tmp_path / "whole.parquet"))
    assert list(back.columns) == list(reference.columns) and back.crs is None and reference.crs is None
    assert back["id"].tolist() == list(range(1, 36))
    assert back.geometry.geom_equals_exact(reference.geometry, tolerance=0).all()
    assert back["geometry_um"].geom_equals_exact(reference["geometry_um"], tolerance=0).all()
    plain = ["geometry", "geometry_um"]
    assert back.drop(columns=plain).equals(reference.drop(columns=plain))
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "n.parquet").metadata.num_row_groups == len(parts)
    features = json.loads((tmp_path / "n.geojson").read_text())["features"]
    assert [f["properties"]["measurements"]["Nucleus id"] for f in features] == list(range(1, 36))


def test_a_writer_that_fails_part_way_leaves_no_file(tmp_path: Path):
    prob, rgb = _two_rows_of_discs()
    parts = iter_nuclei_parts(prob, config=PostprocessConfig(), mpp=0.5, block_size=64, blocks_per_part=2)
    with pytest.raises(RuntimeError, match="disk full"):
        with NucleusTableWriter(tmp_path / "n.parquet", geojson=tmp_path / "n.geojson") as writer:
            writer.write(next(parts))
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with NucleusTableWriter(tmp_path / "empty.parquet") as writer:
        pass
    back = gpd.read_parquet(tmp_path / "empty.parquet")
    assert len(back) == 0 and list(back.columns) == list(empty_table().columns)


def test_overlay_of_a_large_slide_counts_nuclei_per_thumbnail_pixel(tmp_path: Path):
    prob, rgb = _two_rows_of_discs()
    table = nuclei_table(prob, config=PostprocessConfig(), read_rgb=read_rgb_from_array(rgb), mpp=0.5)
    overlay = OverlayNuclei((20, 30), level0_scale=10.0, outlines=False)  # 10 level-0 px per pixel
    for part in (table.iloc[:10], table.iloc[10:]):
        overlay.add(part)
    path = render_overlay(
        np.full((20, 30, 3), 240, np.uint8), level0_scale=10.0, tissue_mask=None, nuclei=overlay,
        path=tmp_path / "o.png", legend=False,
    )
    picture = imread(path)[..., :3].astype(int)
    red, blue = picture[..., 0], picture[..., 2]
    positive, negative = red > blue + 50, blue > red + 50
    places = zip(table.centroid_x, table.centroid_y, table.dab_positive, strict=True)
    centres = {(int(y // 10), int(x // 10)): p for x, y, p in places}
    assert positive.sum() == sum(centres.values()) and negative.sum() == len(centres) - sum(centres.values())
    for (row, col), is_positive in centres.items():
        assert (positive if is_positive else negative)[row, col]


def test_overlay_outlines_keep_the_stain_visible_inside_nuclei(table, tmp_path: Path):
    thumbnail = np.full((96, 160, 3), 240, np.uint8)  # 1 thumbnail px = 2 level-0 px
    render_overlay(thumbnail, level0_scale=2.0, tissue_mask=None, nuclei=table, path=tmp_path / "o.png")
    picture = imread(tmp_path / "o.png")[:96, :160, :3].astype(int)
    for row in table.itertuples():
        r, c = int(row.centroid_y / 2), int(row.centroid_x / 2)
        assert (picture[r - 1 : r + 2, c - 1 : c + 2] == 240).all()  # the inside is the thumbnail
    classes = table["dab_intensity"].to_numpy()
    assert (classes == 0).sum() == 3 and (classes > 0).sum() == 3
    for name in {("Negative", "1+", "2+", "3+")[k] for k in classes}:  # each class drawn in its colour
        distance = {other: np.abs(picture - np.array(c)).max(axis=2) for other, c in CLASS_COLOURS.items()
                    if other != "Positive"}
        near = (distance[name] < 60) & (distance[name] == np.min(list(distance.values()), axis=0))
        assert near.sum() > 10, name


def test_overlay_has_a_scale_bar_a_legend_and_the_hot_spot(table, tmp_path: Path):
    thumbnail = np.full((300, 600, 3), 240, np.uint8)
    hot_spot = {"centre_x": 400.0, "centre_y": 300.0, "size_px": 200.0, "shape": "circle",
                "labelling_index_percent": 42.0}
    render_overlay(thumbnail, level0_scale=2.0, tissue_mask=None, nuclei=table, path=tmp_path / "o.png",
                   mpp=0.5, hot_spot=hot_spot)
    picture = imread(tmp_path / "o.png")[..., :3].astype(int)
    assert picture.shape == (300 + LEGEND_STRIP_PX, 600, 3)
    strip = picture[300:]
    black = strip[:, 400:].max(axis=2) < 60  # the right end of the strip (the legend is on the left)
    bar_rows = np.flatnonzero(black.sum(axis=1) > 80)
    assert bar_rows.size  # a bar of 50 µm at 0.5 µm/px: 100 px (the picture spans 300 µm)
    length = black[bar_rows[0]].sum()
    assert 95 <= length <= 105
    magenta = (picture[:300, :, 0] > 180) & (picture[:300, :, 2] > 180) & (picture[:300, :, 1] < 80)
    rows, cols = np.nonzero(magenta)  # the circle: centre (200, 150), radius 100 thumbnail px
    distance = np.hypot(cols - 200, rows - 150)
    ring = distance > 20  # leave out the centre's cross
    assert ring.sum() > 100 and np.abs(distance[ring] - 100).max() < 3
    colourful = (strip.max(axis=2) - strip.min(axis=2)) > 80
    assert colourful[:, :300].sum() > 50  # the legend's coloured keys on the left


def test_overlay_outlines_the_regions_of_interest(table, tmp_path: Path):
    thumbnail = np.full((96, 160, 3), 240, np.uint8)
    regions = np.zeros((96, 160), bool)
    regions[10:60, 90:150] = True
    render_overlay(thumbnail, level0_scale=2.0, tissue_mask=None, nuclei=table, path=tmp_path / "o.png",
                   regions_mask=regions)
    picture = imread(tmp_path / "o.png")[:96, :160, :3].astype(int)
    blue = (picture[..., 2] > 200) & (picture[..., 0] < 80) & (picture[..., 1] < 160)
    rows, cols = np.nonzero(blue)
    assert blue.sum() > 40
    assert rows.min() >= 8 and rows.max() <= 61 and cols.min() >= 88 and cols.max() <= 151  # on the box's edge
    assert not blue[20:50, 100:140].any()  # an outline, not a fill


def test_painted_outlines_lie_where_matplotlib_draws_them(tmp_path: Path):
    """The QC picture's outlines are rasterised in numpy (OverlayNuclei.paint), not drawn as
    matplotlib paths: the pixels they colour are those a 1 pt PolyCollection outline colours,
    for nuclei of a few thumbnail pixels (a large slide's) and of tens (a small one's)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    from nucflow.postprocess._writers import OUTLINE_WIDTH_PX

    assert OUTLINE_WIDTH_PX == pytest.approx(100 / 72)
    rng = np.random.default_rng(3)
    rings = []
    for radius in (2.5, 4.0, 12.0):  # thumbnail px
        for _ in range(6):
            centre = rng.uniform(15, 85, 2)
            angle = np.linspace(0, 2 * np.pi, 40)
            rings.append(np.c_[centre[0] + radius * np.cos(angle), centre[1] + radius * 0.8 * np.sin(angle)])
    scale = 4.0  # level-0 px per thumbnail px
    nuclei = gpd.GeoDataFrame({"dab_positive": [False] * len(rings)},
                              geometry=[shapely.Polygon(ring * scale) for ring in rings])
    overlay = OverlayNuclei((100, 100), level0_scale=scale, outlines=True, graded=False)
    overlay.add(nuclei)
    white = np.full((100, 100, 3), 255, np.uint8)
    ours = overlay.paint(white)

    figure = Figure(figsize=(1, 1), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(white, extent=(0, 100, 100, 0), interpolation="nearest")
    colour = np.array(overlay.palette["Negative"]) / 255
    axes.add_collection(PolyCollection(rings, facecolors="none", edgecolors=[colour], linewidths=1.0))
    axes.set_xlim(0, 100)
    axes.set_ylim(100, 0)
    axes.set_axis_off()
    figure.canvas.draw()
    theirs = np.asarray(figure.canvas.buffer_rgba())[..., :3]

    ink_ours, ink_theirs = (255 - ours.min(axis=2)).astype(int), (255 - theirs.min(axis=2)).astype(int)
    strong_ours, strong_theirs = ink_ours > 60, ink_theirs > 60
    overlap = (strong_ours & strong_theirs).sum() / (strong_ours | strong_theirs).sum()
    assert overlap > 0.75, overlap  # 0.88 when written
    assert abs(int(strong_ours.sum()) - int(strong_theirs.sum())) < 0.25 * strong_theirs.sum()
    far = ~(np.pad(ink_theirs > 0, 1)[:-2, 1:-1] | np.pad(ink_theirs > 0, 1)[2:, 1:-1]
            | np.pad(ink_theirs > 0, 1)[1:-1, :-2] | np.pad(ink_theirs > 0, 1)[1:-1, 2:] | (ink_theirs > 0))
    assert not (ink_ours > 0)[far].any()  # nothing painted more than a pixel from matplotlib's lines
