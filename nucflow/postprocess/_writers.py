"""Nucleus tables and QC pictures on disk, each written whole or not at all."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from nucflow.atomic import atomic_path

__all__ = ["CLASS_COLOURS", "render_overlay", "write_geojson_qupath", "write_geoparquet"]

#: QuPath's default colours of its Positive and Negative classes (RGB 0-255).
CLASS_COLOURS = {"Positive": (200, 50, 50), "Negative": (112, 112, 225)}

_MEASUREMENTS = {
    "Area µm^2": "area_um2",
    "Perimeter µm": "perimeter_um",
    "Eccentricity": "eccentricity",
    "Solidity": "solidity",
    "Hematoxylin OD mean": "hematoxylin_od",
    "DAB OD mean": "dab_od",
    "Probability mean": "mean_probability",
}


def write_geoparquet(table: gpd.GeoDataFrame, path: str | Path) -> Path:
    """Write a nucleus table as GeoParquet (both geometry columns), atomically; returns path."""
    with atomic_path(path) as temp:
        table.to_parquet(temp, index=False)
    return Path(path)


def write_geojson_qupath(table: gpd.GeoDataFrame, path: str | Path) -> Path:
    """Write nuclei as a GeoJSON FeatureCollection that QuPath imports as detections.

    Each feature has ``objectType: "detection"``, a Positive/Negative ``classification``
    with QuPath's colours, and the table's measurements; geometry is the level-0 outline.
    """
    with atomic_path(path) as temp:
        with open(temp, "w", encoding="utf-8") as out:
            out.write('{"type": "FeatureCollection", "features": [')
            for index, feature in enumerate(_features(table)):
                out.write(",\n" if index else "\n")
                out.write(feature)
            out.write("\n]}\n")
    return Path(path)


def _features(table: gpd.GeoDataFrame) -> Iterator[str]:
    """One JSON text per nucleus (geometry serialised by GEOS, coordinates to 0.01 px)."""
    columns = {name: table[column].to_numpy(float) for name, column in _MEASUREMENTS.items()}
    positive = table["dab_positive"].to_numpy(bool)
    rounded = shapely.transform(table.geometry.to_numpy(), lambda x_y: np.round(x_y, 2))
    geometries = shapely.to_geojson(rounded)
    for row, nucleus_id in enumerate(table["id"].to_numpy()):
        name = "Positive" if positive[row] else "Negative"
        measurements = {key: _number(values[row]) for key, values in columns.items()}
        properties = {
            "objectType": "detection",
            "name": f"nucleus {int(nucleus_id)}",
            "classification": {"name": name, "color": list(CLASS_COLOURS[name])},
            "isLocked": False,
            "measurements": {"Nucleus id": int(nucleus_id), **measurements},
        }
        yield (
            f'{{"type": "Feature", "id": "{uuid.uuid4()}", "geometry": {geometries[row]}, '
            f'"properties": {json.dumps(properties)}}}'
        )


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def render_overlay(
    thumbnail: np.ndarray,
    *,
    level0_scale: float,
    tissue_mask: np.ndarray | None,
    nuclei: gpd.GeoDataFrame,
    path: str | Path,
) -> Path:
    """Save a QC picture: the thumbnail, the tissue outline, nuclei coloured by positivity.

    Parameters
    ----------
    thumbnail : np.ndarray, shape (rows, cols, 3), uint8
    level0_scale : float
        Level-0 pixels per thumbnail pixel (thumbnail µm/px divided by the slide's).
    tissue_mask : np.ndarray, shape (mask_rows, mask_cols), bool, or None
        Stretched over the thumbnail if its shape differs.
    nuclei : geopandas.GeoDataFrame
        A nucleus table (level-0 ``geometry`` and ``dab_positive``).
    path : where the PNG goes (written atomically).
    """
    rows, cols = thumbnail.shape[:2]
    figure = Figure(figsize=(cols / 100, rows / 100), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(thumbnail, extent=(0, cols, rows, 0), interpolation="nearest")
    if tissue_mask is not None and tissue_mask.any():
        mask_rows, mask_cols = tissue_mask.shape
        axes.contour(
            np.pad(tissue_mask, 1).astype(np.uint8), levels=[0.5], colors=["#00a000"],
            linewidths=1.0, extent=_padded_extent(mask_rows, mask_cols, rows, cols),
        )
    _draw_nuclei(axes, nuclei, lambda xy: xy / level0_scale)
    axes.set_xlim(0, cols)
    axes.set_ylim(rows, 0)
    axes.set_axis_off()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=100)
    return Path(path)


def _padded_extent(mask_rows: int, mask_cols: int, rows: int, cols: int) -> tuple:
    """Contour extent: positions of the first and last pixel centres of a 1-px padded mask."""
    step_r, step_c = rows / mask_rows, cols / mask_cols
    return (-step_c / 2, cols + step_c / 2, -step_r / 2, rows + step_r / 2)


def _draw_nuclei(axes: Any, nuclei: gpd.GeoDataFrame, to_thumbnail: Callable) -> None:
    if len(nuclei) == 0:
        return
    positive = nuclei["dab_positive"].to_numpy(bool)
    for name, chosen in (("Negative", ~positive), ("Positive", positive)):
        if not chosen.any():
            continue
        rings = shapely.get_exterior_ring(nuclei.geometry.to_numpy()[chosen])
        x_y, owner = shapely.get_coordinates(rings, return_index=True)
        outlines = np.split(to_thumbnail(x_y), np.flatnonzero(np.diff(owner)) + 1)
        colour = np.array(CLASS_COLOURS[name]) / 255
        axes.add_collection(
            PolyCollection(outlines, facecolors=[(*colour, 0.6)], edgecolors=[colour], linewidths=0.4)
        )
