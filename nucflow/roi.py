"""Regions of interest: QuPath GeoJSON annotations or a mask image, per slide, matched by name.

``--roi`` names a file (one slide) or a folder holding ``<slide stem>.geojson`` (also
``.json``, ``.geojson.gz``) or ``<slide stem>.png`` / ``.tif`` / ``.tiff`` masks. Only the
regions are segmented (the tissue mask is cut to them, so tiles outside are never planned),
nuclei outside them are dropped, and every summary figure is also given per region.

A GeoJSON file is what QuPath's *Export objects as GeoJSON* writes: a FeatureCollection (or
a list of Features) of annotations whose geometry is in level-0 pixels of the slide as QuPath
shows it. A region's name is the annotation's ``name``, else its classification's name, else
``region N``; annotations sharing a name form one region. An annotation whose classification
or name matches one of the exclusion patterns (default ``Ignore*``, QuPath's class for areas
to leave out) is removed from the others: its nuclei are dropped and its tissue is not
segmented. Detections and non-polygon annotations (points, lines) are ignored.

A mask image is stretched over the whole slide; each non-zero value is a region named
``region <value>``.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.affinity
import shapely.errors
import shapely.geometry

from nucflow.errors import InputError

__all__ = ["DEFAULT_EXCLUDE", "ROI_SUFFIXES", "Regions", "RoiError", "load_regions", "match_rois"]

#: Annotation classes or names removed from the regions (QuPath's "Ignore*" class).
DEFAULT_EXCLUDE = ("Ignore*",)
#: ROI file suffixes, GeoJSON first, then mask images.
ROI_SUFFIXES = (".geojson", ".geojson.gz", ".json", ".png", ".tif", ".tiff")
_MASK_SUFFIXES = (".png", ".tif", ".tiff")
#: Outside means outside by more than this many level-0 px (QuPath rounds at the slide's edge).
_EDGE_TOLERANCE_PX = 2.0


class RoiError(InputError):
    """A region-of-interest file that cannot be used (it names itself and says why)."""


@dataclass(frozen=True)
class Regions:
    """Named regions in level-0 pixel coordinates of one slide, and what is excluded.

    ``label_points`` and ``label_grid`` give, for points or for the pixel centres of a grid
    over the slide, the index of the region (in ``names``) they lie in; -1 outside every
    region or inside an exclusion. Where regions overlap, the first in ``names`` wins.
    """

    source: str
    names: tuple[str, ...]
    shapes: tuple[Any, ...] = ()  # shapely geometries (GeoJSON), one per name
    excluded: Any = None  # shapely geometry of the exclusion annotations, or None
    mask: np.ndarray | None = None  # label image (mask files), stretched over the slide
    values: tuple[int, ...] = ()  # mask value of each name
    slide_size: tuple[float, float] | None = None  # level-0 (width, height), for masks
    digest: str = field(default="", compare=False)

    def label_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Region index of each level-0 point (x, y); -1 for none."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        labels = np.full(x.shape, -1, np.int32)
        if self.mask is not None:
            assert self.slide_size is not None
            rows, cols = self.mask.shape
            r = np.clip((y / self.slide_size[1] * rows).astype(np.int64), 0, rows - 1)
            c = np.clip((x / self.slide_size[0] * cols).astype(np.int64), 0, cols - 1)
            value = self.mask[r, c]
            for index, v in enumerate(self.values):
                labels[value == v] = index
            return labels
        for index in range(len(self.names) - 1, -1, -1):  # the first region wins: assigned last
            labels[shapely.contains_xy(self.shapes[index], x, y)] = index
        if self.excluded is not None:
            labels[shapely.contains_xy(self.excluded, x, y)] = -1
        return labels

    def label_grid(self, shape: tuple[int, int], level0_per_px: float) -> np.ndarray:
        """Region index of each pixel centre of a (rows, cols) grid of ``level0_per_px`` pixels."""
        rows, cols = shape
        y, x = np.mgrid[:rows, :cols].astype(np.float64)
        return self.label_points((x + 0.5) * level0_per_px, (y + 0.5) * level0_per_px)

    def check_inside(self, width: float, height: float) -> None:
        """Raise :class:`RoiError` naming every region that lies wholly outside the slide."""
        if self.mask is not None:
            return
        slide = shapely.box(-_EDGE_TOLERANCE_PX, -_EDGE_TOLERANCE_PX,
                            width + _EDGE_TOLERANCE_PX, height + _EDGE_TOLERANCE_PX)
        outside = [name for name, geometry in zip(self.names, self.shapes, strict=True)
                   if not geometry.intersects(slide)]
        if outside:
            x0, y0, x1, y1 = shapely.union_all(
                [g for n, g in zip(self.names, self.shapes, strict=True) if n in outside]).bounds
            raise RoiError(
                f"ROI file {self.source}: region(s) {', '.join(map(repr, outside))} lie outside the slide "
                f"({width:.0f} x {height:.0f} level-0 px; the region spans x {x0:.0f}-{x1:.0f}, "
                f"y {y0:.0f}-{y1:.0f}); is this the ROI of another slide?"
            )


def load_regions(
    path: str | Path, *, exclude: Sequence[str] = DEFAULT_EXCLUDE, offset: tuple[float, float] = (0.0, 0.0),
    slide_size: tuple[float, float] | None = None,
) -> Regions:
    """Read a ROI file: QuPath GeoJSON (``.geojson``, ``.json``, ``.geojson.gz``) or a mask image.

    ``offset`` (x, y) is added to GeoJSON coordinates (QuPath's origin on the slide's level 0);
    ``slide_size`` (level-0 width, height) is needed for a mask image.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RoiError(f"ROI file {path} cannot be read: {exc.strerror or exc}") from None
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if path.name.lower().endswith(_MASK_SUFFIXES):
        return _load_mask(path, digest=digest, slide_size=slide_size)
    try:
        text = gzip.decompress(raw) if path.name.lower().endswith(".gz") else raw
        data = json.loads(text)
    except (OSError, ValueError, EOFError) as exc:
        raise RoiError(f"ROI file {path} does not parse as GeoJSON: {exc}") from None
    features = _features(data, path)
    named: dict[str, list[Any]] = {}
    excluded: list[Any] = []
    for index, feature in enumerate(features):
        properties = feature.get("properties") or {}
        if properties.get("objectType", "annotation") != "annotation":
            continue  # detections, cells, tiles: not regions
        try:
            geometry = shapely.geometry.shape(feature["geometry"]) if feature.get("geometry") else None
        except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as exc:
            raise RoiError(f"ROI file {path}: feature {index} has an invalid geometry: {exc}") from None
        polygons = _polygons(geometry)
        if polygons is None:
            continue
        polygons = shapely.affinity.translate(polygons, *offset) if any(offset) else polygons
        classification = _class_name(properties.get("classification"))
        name = str(properties.get("name") or classification or f"region {index + 1}")
        if any(fnmatch.fnmatch(label.lower(), pattern.lower())
               for pattern in exclude for label in (classification, name) if label):
            excluded.append(polygons)
        else:
            named.setdefault(name, []).append(polygons)
    if not named:
        raise RoiError(
            f"ROI file {path} holds no polygon annotation to segment "
            f"({len(features)} features; exclusions {list(exclude)})"
        )
    shapes = tuple(shapely.make_valid(shapely.union_all(parts)) for parts in named.values())
    for shape in shapes:
        shapely.prepare(shape)
    excluded_shape = shapely.make_valid(shapely.union_all(excluded)) if excluded else None
    if excluded_shape is not None:
        shapely.prepare(excluded_shape)
    return Regions(source=str(path), names=tuple(named), shapes=shapes, excluded=excluded_shape, digest=digest)


def _features(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):  # QuPath's older exports: a plain array of features
        features = data
    else:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise RoiError(f"ROI file {path} is not a GeoJSON FeatureCollection, Feature or list of them (got {kind!r})")
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        raise RoiError(f"ROI file {path}: 'features' must be a list of GeoJSON Feature objects")
    return features


def _polygons(geometry: Any) -> Any:
    """The polygonal part of a geometry (None if it has none)."""
    if geometry is None or geometry.is_empty:
        return None
    if isinstance(geometry, shapely.Polygon | shapely.MultiPolygon):
        return geometry
    parts = [g for g in getattr(geometry, "geoms", []) if isinstance(g, shapely.Polygon | shapely.MultiPolygon)]
    return shapely.union_all(parts) if parts else None


def _class_name(classification: Any) -> str:
    if isinstance(classification, dict):
        return str(classification.get("name") or "")
    return str(classification or "")


def _load_mask(path: Path, *, digest: str, slide_size: tuple[float, float] | None) -> Regions:
    from skimage.io import imread

    try:
        mask = np.asarray(imread(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise RoiError(f"ROI mask {path} does not parse as an image: {exc}") from None
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2) if mask.shape[2] >= 3 else mask[..., 0]
    if mask.ndim != 2:
        raise RoiError(f"ROI mask {path} must be a 2-D label image, got shape {mask.shape}")
    values = tuple(int(v) for v in np.unique(mask) if v != 0)
    if not values:
        raise RoiError(f"ROI mask {path} has no non-zero pixel: no region to segment")
    return Regions(source=str(path), names=tuple(f"region {v}" for v in values), mask=mask, values=values,
                   slide_size=slide_size, digest=digest)


def roi_stem(path: Path) -> str | None:
    """The slide stem a ROI file names (its name less a ROI suffix), None if it is no ROI file."""
    name = path.name
    for suffix in ROI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def match_rois(roi: str | Path, stems: Sequence[str]) -> list[Path | None]:
    """The ROI file of each slide (by its stem), or None for a slide without one.

    ``roi`` is a file (for the only slide, or the slide its name matches) or a folder of
    ``<stem><suffix>`` files. Raises :class:`RoiError` for a missing path, a folder with no ROI
    file, a file that names no slide of the run, or two files for one slide.
    """
    roi = Path(roi)
    if roi.is_file():
        if len(stems) == 1:
            return [roi]
        stem = roi_stem(roi)
        if stem not in stems:
            raise RoiError(f"ROI file {roi} names no slide of this run (slides: {', '.join(stems)}); "
                           "name it after its slide, or pass a folder of <slide>.geojson files")
        return [roi if s == stem else None for s in stems]
    if not roi.is_dir():
        raise RoiError(f"ROI path {roi} does not exist; pass a QuPath GeoJSON file, a mask image or a folder")
    files = sorted(p for p in roi.iterdir() if p.is_file() and roi_stem(p) is not None)
    if not files:
        raise RoiError(f"ROI folder {roi} holds no ROI file ({', '.join(ROI_SUFFIXES)})")
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(str(roi_stem(f)), []).append(f)
    problems = [f"ROI file {f} names no slide of this run" for stem, fs in by_stem.items() if stem not in stems
                for f in fs]
    problems += [f"slide {stem!r} has several ROI files: {', '.join(map(str, fs))}"
                 for stem, fs in by_stem.items() if stem in stems and len(fs) > 1]
    if problems:
        raise RoiError("\n".join(problems) + f"\n(slides of this run: {', '.join(stems)})")
    return [by_stem[s][0] if s in by_stem else None for s in stems]
