"""Nucleus tables and QC pictures on disk, each written whole or not at all."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Rectangle

from nucflow import __version__
from nucflow.atomic import atomic_path
from nucflow.postprocess._blocked import empty_table
from nucflow.scoring import CLASS_COLOURS, INTENSITY_CLASSES, class_name

__all__ = [
    "CLASS_COLOURS", "NucleusTableWriter", "OverlayNuclei", "render_overlay", "write_geojson_qupath",
    "write_geoparquet",
]


#: GeoJSON measurement names, as QuPath's cell detection names its nucleus measurements (so
#: its classifiers and scripts, e.g. ones on "Nucleus: DAB OD mean", work on nucflow's nuclei).
_MEASUREMENTS = {
    "Nucleus: Area µm^2": "area_um2",
    "Nucleus: Perimeter µm": "perimeter_um",
    "Nucleus: Eccentricity": "eccentricity",
    "Nucleus: Solidity": "solidity",
    "Nucleus: Hematoxylin OD mean": "hematoxylin_od",
    "Nucleus: DAB OD mean": "dab_od",
    "Nucleus: Probability mean": "mean_probability",
}
#: Namespace of the nuclei's GeoJSON object ids: uuid5(namespace, "<slide seed>/<nucleus id>").
OBJECT_ID_NAMESPACE = uuid.UUID("5b0c3f3e-8d1e-4a43-9a51-6e75636c666c")


def write_geoparquet(table: gpd.GeoDataFrame, path: str | Path) -> Path:
    """Write a nucleus table as GeoParquet (both geometry columns), atomically; returns path."""
    with atomic_path(path) as temp:
        table.to_parquet(temp, index=False)
    return Path(path)


def write_geojson_qupath(
    table: gpd.GeoDataFrame, path: str | Path, *, offset: tuple[float, float] = (0.0, 0.0),
    graded: bool = True, id_seed: str = "", colours: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Write nuclei as a GeoJSON FeatureCollection that QuPath imports as detections (gzipped
    when ``path`` ends in ``.gz``).

    As QuPath (0.4 and later) writes them: each feature has a deterministic UUID ``id``
    (uuid5 of ``id_seed`` and the nucleus id, so a rerun writes the same file),
    ``objectType: "detection"``, a ``classification`` ({name, color}) by DAB intensity,
    Negative / 1+ / 2+ / 3+ (``graded``) or Negative / Positive, in QuPath's colours unless
    ``colours`` names others, and the measurements as a map named as QuPath names nucleus
    measurements; a measurement that is not a number is the string "NaN", as QuPath writes it.
    Geometry is the level-0 outline minus ``offset`` (x, y): QuPath's coordinates for a slide
    it crops to its ``openslide.bounds-*`` (see :attr:`nucflow.slide.Slide.qupath_offset`).
    """
    with atomic_path(path) as temp:
        with _open_text(temp, gz=str(path).endswith(".gz")) as out:
            out.write('{"type": "FeatureCollection", "features": [')
            for index, feature in enumerate(_features(table, offset, graded=graded, id_seed=id_seed,
                                                      colours=colours)):
                out.write(",\n" if index else "\n")
                out.write(feature)
            out.write("\n]}\n")
    return Path(path)


class NucleusTableWriter:
    """A nucleus table written part by part (as :func:`iter_nuclei_parts` yields it).

    GeoParquet gets one row group per part (same columns and metadata as
    :func:`write_geoparquet`, less the optional bounding boxes), QuPath GeoJSON one feature
    per nucleus; neither holds more than the part in hand. Used as a context manager: the
    files appear, complete, when the block ends, and not at all if it raises.
    """

    def __init__(
        self, parquet: str | Path, *, geojson: str | Path | None = None,
        geojson_offset: tuple[float, float] = (0.0, 0.0), graded: bool = True, id_seed: str = "",
        colours: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self._paths = (Path(parquet), None if geojson is None else Path(geojson))
        self._offset = geojson_offset  # (x, y) subtracted from GeoJSON coordinates (QuPath's origin)
        self._feature_options: dict[str, Any] = {"graded": graded, "id_seed": id_seed, "colours": colours}
        self._stack = contextlib.ExitStack()
        self._parquet: pq.ParquetWriter | None = None
        self._geojson: Any = None
        self._features = 0
        self.rows = 0

    def __enter__(self) -> NucleusTableWriter:
        parquet, geojson = self._paths
        with self._stack as stack:
            schema = _arrow(empty_table()).schema
            self._parquet = pq.ParquetWriter(stack.enter_context(atomic_path(parquet)), schema)
            stack.callback(self._parquet.close)
            if geojson is not None:
                self._geojson = stack.enter_context(
                    _open_text(stack.enter_context(atomic_path(geojson)), gz=str(geojson).endswith(".gz")))
                self._geojson.write('{"type": "FeatureCollection", "features": [')
            self._stack = stack.pop_all()
        return self

    def write(self, part: gpd.GeoDataFrame) -> None:
        """Append ``part`` (a nucleus table with every column) to the files."""
        if self._parquet is None:
            raise RuntimeError("NucleusTableWriter.write outside its with-block")
        self._parquet.write_table(_arrow(part))
        if self._geojson is not None:
            for feature in _features(part, self._offset, **self._feature_options):
                self._geojson.write(",\n" if self._features else "\n")
                self._geojson.write(feature)
                self._features += 1
        self.rows += len(part)

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        if kind is None and self._geojson is not None:
            self._geojson.write("\n]}\n")
        self._stack.__exit__(kind, *rest)  # close the files (in reverse), then rename or discard


def _arrow(table: gpd.GeoDataFrame) -> pa.Table:
    """A nucleus table as Arrow with WKB geometries and GeoParquet 1.1 ``geo`` metadata."""
    geometry_columns = ("geometry", "geometry_um")
    columns = {}
    for name in table.columns:
        if name in geometry_columns:
            columns[name] = pa.array(shapely.to_wkb(table[name].to_numpy()), type=pa.binary())
        else:
            columns[name] = pa.array(table[name].to_numpy())
    fields = [
        pa.field(name, array.type, metadata=_WKB_FIELD if name in geometry_columns else None)
        for name, array in columns.items()
    ]
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            name: {"encoding": "WKB", "crs": None, "geometry_types": ["Polygon"]} for name in geometry_columns
        },
        "creator": {"library": "nucflow", "version": __version__},
    }
    schema = pa.schema(fields, metadata={"geo": json.dumps(geo)})
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


_WKB_FIELD = {"ARROW:extension:name": "geoarrow.wkb", "ARROW:extension:metadata": "{}"}


def _features(
    table: gpd.GeoDataFrame, offset: tuple[float, float] = (0.0, 0.0), *, graded: bool = True, id_seed: str = "",
    colours: Mapping[str, Sequence[int]] | None = None,
) -> Iterator[str]:
    """One JSON text per nucleus (geometry minus ``offset`` (x, y), serialised by GEOS, to 0.01 px)."""
    palette = {**CLASS_COLOURS, **(colours or {})}
    columns = {name: table[column].to_numpy(float) for name, column in _MEASUREMENTS.items()}
    classes = _classes(table, graded=graded)
    shift = np.asarray(offset, float)
    rounded = shapely.transform(table.geometry.to_numpy(), lambda x_y: np.round(x_y - shift, 2))
    geometries = shapely.to_geojson(rounded)
    for row, nucleus_id in enumerate(table["id"].to_numpy()):
        name = class_name(int(classes[row]), graded=graded)
        measurements = {key: _number(values[row]) for key, values in columns.items()}
        properties = {
            "objectType": "detection",
            "classification": {"name": name, "color": [int(v) for v in palette[name]]},
            "measurements": {"Nucleus id": int(nucleus_id), **measurements},
        }
        object_id = uuid.uuid5(OBJECT_ID_NAMESPACE, f"{id_seed}/{int(nucleus_id)}")
        yield (
            f'{{"type": "Feature", "id": "{object_id}", "geometry": {geometries[row]}, '
            f'"properties": {json.dumps(properties, ensure_ascii=False, allow_nan=False)}}}'
        )


def _number(value: float) -> float | str:
    """A measurement as QuPath writes one: a number, or "NaN" / "Infinity" / "-Infinity" as strings."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float(value)


@contextlib.contextmanager
def _open_text(path: Path, *, gz: bool) -> Iterator[Any]:
    """A UTF-8 text file to write, gzip-compressed when ``gz`` (no timestamp: reruns give the same bytes)."""
    if not gz:
        with open(path, "w", encoding="utf-8") as out:
            yield out
        return
    with (open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as packed,
          io.TextIOWrapper(packed, encoding="utf-8") as out):
        yield out


#: Width of a nucleus outline in the QC picture, in its pixels (1 pt at its 100 dpi).
OUTLINE_WIDTH_PX = 100 / 72
_INK_UNITS = 64  # outline length per pixel is kept in 1/64 px


class OverlayNuclei:
    """The nuclei a QC picture shows, gathered part by part in memory that does not grow
    with the slide: outlines when a nucleus spans a few thumbnail pixels (small slides),
    else a per-pixel count of nuclei of each class (centroids), the pixel coloured by the
    class with most nuclei there.

    Outlines are rasterised as they arrive, at the picture's own resolution: each class keeps
    the length of outline crossing each thumbnail pixel, and :meth:`paint` colours a pixel by
    the share of it a line of :data:`OUTLINE_WIDTH_PX` would cover (length x width, at most
    all of it), classes painted in order, so a later class lies over an earlier one. (Drawing
    every outline as a matplotlib path cost about 1 CPU s for 32,000 nuclei.)

    Parameters
    ----------
    shape : (rows, cols) of the thumbnail.
    level0_scale : level-0 pixels per thumbnail pixel.
    outlines : draw outlines (True) or the count raster (False).
    graded : classes Negative/1+/2+/3+ from ``dab_intensity`` (True) or Negative/Positive.
    colours : class colours (RGB 0-255) replacing QuPath's (the stain profile's ``class_colours``).
    """

    def __init__(self, shape: tuple[int, int], *, level0_scale: float, outlines: bool, graded: bool = True,
                 colours: Mapping[str, Sequence[int]] | None = None) -> None:
        self.shape, self.level0_scale, self.outlines, self.graded = shape, level0_scale, outlines, graded
        self.palette = {name: tuple(int(v) for v in rgb) for name, rgb in {**CLASS_COLOURS, **(colours or {})}.items()}
        self.names = list(INTENSITY_CLASSES) if graded else ["Negative", "Positive"]
        self.counts = dict.fromkeys(self.names, 0)
        # outlines: the outline length through each pixel in 1/64 thumbnail px, one uint8 plane per
        # class with a pixel of margin around (saturating at 255: a pixel is fully covered from 0.72 px);
        # counts: one uint16 count plane per class (a thumbnail pixel never holds 65,535 nuclei)
        planes = (len(self.names), *shape)
        self._ink = np.zeros((len(self.names), shape[0] + 2, shape[1] + 2) if outlines else (0, 0, 0), np.uint8)
        self._raster = np.zeros((0, 0, 0) if outlines else planes, np.uint16)

    def add(self, part: gpd.GeoDataFrame) -> None:
        """Add the nuclei of one part of a nucleus table."""
        classes = _classes(part, graded=self.graded)
        for index, name in enumerate(self.names):
            chosen = classes == index
            if not chosen.any():
                continue
            self.counts[name] += int(chosen.sum())
            if self.outlines:
                rings = shapely.get_exterior_ring(part.geometry.to_numpy()[chosen])
                x_y, owner = shapely.get_coordinates(rings, return_index=True)
                self._add_outlines(index, (x_y / self.level0_scale).astype(np.float32), owner)
            else:
                cols = part["centroid_x"].to_numpy()[chosen] / self.level0_scale
                rows = part["centroid_y"].to_numpy()[chosen] / self.level0_scale
                r = np.clip(rows.astype(np.int64), 0, self.shape[0] - 1)
                c = np.clip(cols.astype(np.int64), 0, self.shape[1] - 1)
                np.add.at(self._raster[index], (r, c), 1)

    def _add_outlines(self, index: int, x_y: np.ndarray, owner: np.ndarray) -> None:
        """Add closed rings (vertices ``x_y`` in thumbnail px, ring ``owner`` of each) to class
        ``index``'s plane: each edge sampled every half pixel at most, each sample's share of
        the edge's length spread over the four pixels around it by distance to their centres
        (bilinear), as an antialiased line spreads over the pixels it straddles."""
        same = owner[1:] == owner[:-1]  # an edge joins two vertices of one ring
        start, delta = x_y[:-1][same], np.diff(x_y, axis=0)[same]
        length = np.hypot(delta[:, 0], delta[:, 1])
        steps = np.ceil(length / 0.5).astype(np.int64)
        edge = np.repeat(np.arange(len(steps)), steps)
        along = (np.arange(len(edge)) - np.repeat(np.cumsum(steps) - steps, steps) + 0.5) / steps[edge]
        along = along.astype(np.float32)
        share = (length / np.maximum(steps, 1)).astype(np.float32)[edge]
        x = start[edge, 0] + along * delta[edge, 0] - 0.5  # from the first pixel's centre
        y = start[edge, 1] + along * delta[edge, 1] - 0.5
        col, row = np.floor(x), np.floor(y)
        right, down = x - col, y - row
        planes_rows, planes_cols = self._ink.shape[1:]  # one pixel of margin on each side
        col, row = col.astype(np.int64) + 1, row.astype(np.int64) + 1
        inside = (row >= 0) & (row < planes_rows - 1) & (col >= 0) & (col < planes_cols - 1)
        at = (row * planes_cols + col)[inside]
        share, right, down = share[inside], right[inside], down[inside]
        left, up = 1 - right, 1 - down
        ink = np.bincount(np.concatenate([at, at + 1, at + planes_cols, at + planes_cols + 1]), weights=np.concatenate(
            [share * left * up, share * right * up, share * left * down, share * right * down]))
        plane = self._ink[index].reshape(-1)[: len(ink)]
        np.minimum(plane + np.rint(ink * _INK_UNITS), 255, out=ink)
        plane[:] = ink

    def paint(self, thumbnail: np.ndarray) -> np.ndarray:
        """``thumbnail`` (rows, cols, 3) uint8 with the outlines painted in its pixels (the
        thumbnail itself when there are none, or in the count mode)."""
        if not self.outlines or not self._ink.any():
            return thumbnail
        ink = self._ink[:, 1:-1, 1:-1]
        drawn = np.flatnonzero(ink.any(axis=0))  # only these pixels change
        picture = np.array(thumbnail, np.uint8).reshape(-1, 3)
        values = picture[drawn].astype(np.float32)
        for index, name in enumerate(self.names):
            cover = np.minimum(ink[index].reshape(-1)[drawn] * np.float32(OUTLINE_WIDTH_PX / _INK_UNITS), 1)
            values += cover[:, None] * (np.asarray(self.palette[name], np.float32) - values)
        picture[drawn] = np.rint(values)
        return picture.reshape(thumbnail.shape)

    def draw(self, axes: Any) -> None:
        """Draw onto matplotlib ``axes`` whose data coordinates are thumbnail pixels (the
        count mode; outlines are painted into the thumbnail: :meth:`paint`)."""
        if self.outlines:
            return
        # uint8 RGBA and small integer planes: the picture's memory stays a few bytes per pixel
        total = np.minimum(self._raster.sum(axis=0, dtype=np.uint32), 4).astype(np.uint8)
        winner = (len(self.names) - 1 - np.argmax(self._raster[::-1], axis=0)).astype(np.uint8)  # ties: higher class
        rgba = np.zeros((*self.shape, 4), np.uint8)
        for index, name in enumerate(self.names):
            rgba[(winner == index) & (total > 0), :3] = self.palette[name]
        alpha = np.rint(255 * (0.45 + 0.45 * total.astype(np.float32) / 4)).astype(np.uint8)
        rgba[..., 3] = np.where(total > 0, alpha, 0)
        rows, cols = self.shape
        axes.imshow(rgba, extent=(0, cols, rows, 0), interpolation="nearest")


def _classes(table: gpd.GeoDataFrame, *, graded: bool) -> np.ndarray:
    """Class index of each nucleus: its ``dab_intensity`` (graded), else 0/1 from ``dab_positive``."""
    if graded and "dab_intensity" in table:
        return table["dab_intensity"].to_numpy(np.int64)
    return table["dab_positive"].to_numpy(bool).astype(np.int64)


#: Height (px) of the strip under the picture holding the legend and the scale bar.
LEGEND_STRIP_PX = 44
_HOT_SPOT_COLOUR = "#e000e0"
_REGIONS_COLOUR = "#0070ff"


def render_overlay(
    thumbnail: np.ndarray,
    *,
    level0_scale: float,
    tissue_mask: np.ndarray | None,
    nuclei: gpd.GeoDataFrame | OverlayNuclei,
    path: str | Path,
    mpp: float | None = None,
    hot_spot: dict[str, Any] | None = None,
    legend: bool = True,
    regions_mask: np.ndarray | None = None,
) -> Path:
    """Save a QC picture: the thumbnail, the tissue outline, nuclei outlined in their class's
    colour, the hot spot, and under it a strip with the legend and a scale bar.

    Parameters
    ----------
    thumbnail : np.ndarray, shape (rows, cols, 3), uint8
        Drawn at one picture pixel per thumbnail pixel, in the picture's top-left corner.
    level0_scale : float
        Level-0 pixels per thumbnail pixel (thumbnail µm/px divided by the slide's).
    tissue_mask : np.ndarray, shape (mask_rows, mask_cols), bool, or None
        Stretched over the thumbnail if its shape differs.
    nuclei : geopandas.GeoDataFrame or OverlayNuclei
        A nucleus table (level-0 ``geometry``, ``dab_intensity`` or ``dab_positive``; drawn
        as outlines), or the nuclei gathered from its parts.
    path : where the PNG goes (written atomically).
    mpp : µm per thumbnail pixel, for the scale bar (None: no scale bar).
    hot_spot : the ``hot_spot`` of :func:`nucflow.scoring.score_nuclei` (level-0 ``centre_x``,
        ``centre_y``, ``size_px``, ``shape``), outlined with its labelling index.
    legend : add the strip under the picture (classes with their counts, hot spot, scale bar).
    regions_mask : where the regions of interest lie (bool, stretched like ``tissue_mask``),
        outlined in blue.
    """
    rows, cols = thumbnail.shape[:2]
    if isinstance(nuclei, gpd.GeoDataFrame):
        graded = "dab_intensity" in nuclei
        table, nuclei = nuclei, OverlayNuclei((rows, cols), level0_scale=level0_scale, outlines=True, graded=graded)
        if len(table):
            nuclei.add(table)
    strip = LEGEND_STRIP_PX if legend else 0
    width = max(cols, 560) if legend else cols
    height = rows + strip
    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(figure)
    figure.patch.set_facecolor("white")
    axes = figure.add_axes((0, strip / height, cols / width, rows / height))
    axes.imshow(nuclei.paint(thumbnail), extent=(0, cols, rows, 0), interpolation="nearest")
    for mask, colour, style in ((tissue_mask, "#00a000", "solid"), (regions_mask, _REGIONS_COLOUR, "dashed")):
        if mask is not None and mask.any():
            mask_rows, mask_cols = mask.shape
            axes.contour(
                np.pad(mask, 1).astype(np.uint8), levels=[0.5], colors=[colour], linestyles=[style],
                linewidths=1.5 if style == "dashed" else 1.0, extent=_padded_extent(mask_rows, mask_cols, rows, cols),
            )
    nuclei.draw(axes)
    if hot_spot:
        _draw_hot_spot(axes, hot_spot, level0_scale)
    axes.set_xlim(0, cols)
    axes.set_ylim(rows, 0)
    axes.set_axis_off()
    if legend:
        _draw_legend(figure, (0, 0, 1, strip / height), nuclei, hot_spot=hot_spot,
                     mpp=mpp, px_per_axes=cols / width, regions=bool(regions_mask is not None and regions_mask.any()))
    with atomic_path(path) as temp:
        # zlib level 1: the same pixels, 7% more bytes, in about 40% of level 6's time (per slide)
        figure.savefig(temp, format="png", dpi=100, facecolor="white", pil_kwargs={"compress_level": 1})
    return Path(path)


def _draw_hot_spot(axes: Any, hot_spot: dict[str, Any], level0_scale: float) -> None:
    x, y = hot_spot["centre_x"] / level0_scale, hot_spot["centre_y"] / level0_scale
    size = hot_spot["size_px"] / level0_scale
    if hot_spot["shape"] == "circle":
        patch: Any = Circle((x, y), size)
    else:
        patch = Rectangle((x - size, y - size), 2 * size, 2 * size)
    patch.set(fill=False, edgecolor=_HOT_SPOT_COLOUR, linewidth=2.0, linestyle="--")
    axes.add_patch(patch)
    axes.plot([x], [y], marker="+", markersize=14, markeredgewidth=2.0, color=_HOT_SPOT_COLOUR)


def _draw_legend(
    figure: Figure, box: tuple[float, float, float, float], nuclei: OverlayNuclei, *,
    hot_spot: dict[str, Any] | None, mpp: float | None, px_per_axes: float, regions: bool = False,
) -> None:
    """Classes (outline colours, counts), tissue, hot spot on the left; the scale bar on the right."""
    strip = figure.add_axes(box)
    strip.set_axis_off()
    strip.set_xlim(0, 1)
    strip.set_ylim(0, 1)
    handles = [Line2D([], [], color=_rgb(nuclei.palette[name]), linewidth=2,
                      label=f"{name} ({nuclei.counts[name]})") for name in nuclei.names]
    handles.append(Line2D([], [], color="#00a000", linewidth=1.5, label="tissue"))
    if regions:
        handles.append(Line2D([], [], color=_REGIONS_COLOUR, linewidth=1.5, linestyle="--", label="regions"))
    if hot_spot:
        handles.append(Line2D([], [], color=_HOT_SPOT_COLOUR, linewidth=2, linestyle="--",
                              label=f"hot spot {hot_spot['labelling_index_percent']:.1f}%"))
    strip.legend(handles=handles, loc="center left", ncol=min(len(handles), 4), fontsize=7,
                 frameon=False, handlelength=1.5, columnspacing=1.0, borderaxespad=0.2)
    if mpp:
        # the picture spans px_per_axes of the figure's width; bar of about a fifth of it
        picture_um = mpp * figure.get_figwidth() * 100 * px_per_axes
        length = _nice_length(picture_um / 5)
        fraction = length / (mpp * figure.get_figwidth() * 100)
        right = 0.98
        strip.plot([right - fraction, right], [0.3, 0.3], color="black", linewidth=3, solid_capstyle="butt")
        label = f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} µm"
        strip.text(right - fraction / 2, 0.45, label, ha="center", va="bottom", fontsize=7)


def _nice_length(um: float) -> float:
    """The largest 1, 2 or 5 x 10^k µm not above ``um`` (at least 1 µm)."""
    if um <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(um))
    return max(step * power for step in (1, 2, 5) if step * power <= um)


def _padded_extent(mask_rows: int, mask_cols: int, rows: int, cols: int) -> tuple:
    """Contour extent: positions of the first and last pixel centres of a 1-px padded mask."""
    step_r, step_c = rows / mask_rows, cols / mask_cols
    return (-step_c / 2, cols + step_c / 2, -step_r / 2, rows + step_r / 2)


def _rgb(colour: Sequence[int]) -> tuple[float, float, float]:
    """A 0-255 RGB colour as matplotlib's 0-1 floats."""
    red, green, blue = colour
    return red / 255, green / 255, blue / 255
