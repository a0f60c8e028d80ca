"""A lazy TIFF reader: every pyramid level of a TIFF (SubIFDs included), tiles decoded on demand.

OpenSlide opens an OME-TIFF whose pyramid sits in SubIFDs (as bfconvert, QuPath and tifffile
write them) as ``generic-tiff`` with one level and no resolution, and refuses some TIFFs
outright (JPEG-2000 compressions it lacks, odd layouts). For those, tifffile's Zarr store
(:meth:`tifffile.TiffPageSeries.aszarr`) exposes each level as a chunked array whose chunks
are the file's own tiles (or strips): a region read decodes only the tiles it touches, so
memory follows the region, not the slide.

Measured against tiffslide (which wraps the same tifffile store behind an OpenSlide-like API),
see ``benchmarks/tiff_reader.py``: the same reads cost the same, so the store is used directly
and no dependency is added.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TiffBackend", "ome_mpp", "open_tiff", "tag_mpp", "tiff_mpp"]

_WHITE = 255
#: A level whose single chunk is larger than this (pixels) is decoded once and kept: a TIFF
#: written as one huge strip would otherwise be decoded whole for every region read.
_WHOLE_CHUNK_PIXELS = 4096 * 4096


class TiffBackend:
    """Levels of one TIFF image series as lazily read arrays (see the module docstring)."""

    def __init__(self, tif: Any, series: Any) -> None:
        import zarr

        self._tif = tif
        self._lock = threading.Lock()
        self._levels: list[Any] = []
        self._select: list[tuple[Any, ...]] = []
        self._cached: dict[int, np.ndarray] = {}
        shapes: list[tuple[int, int]] = []
        for index in range(len(series.levels)):
            array = zarr.open_array(series.aszarr(level=index), mode="r")
            select, rows_cols = _yx_selection(series.axes, array.shape)
            self._levels.append(array)
            self._select.append(select)
            shapes.append(rows_cols)
        self.level_shapes = shapes
        base_rows, base_cols = shapes[0]
        self.level_downsamples = [(base_rows / r + base_cols / c) / 2.0 for r, c in shapes]
        self.bounds: tuple[int, int, int, int] | None = None

    def read_level(self, level: int, row: int, col: int, rows: int, cols: int) -> np.ndarray:
        """RGB uint8 (rows, cols, 3) of ``level``; white past the edges."""
        out = np.full((rows, cols, 3), _WHITE, np.uint8)
        height, width = self.level_shapes[level]
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + rows, height), min(col + cols, width)
        if r1 <= r0 or c1 <= c0:
            return out
        out[r0 - row : r1 - row, c0 - col : c1 - col] = self._region(level, r0, r1, c0, c1)
        return out

    def _region(self, level: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        array = self._levels[level]
        chunk = array.chunks
        select = self._select[level]
        plane = int(chunk[select.index("Y")]) * int(chunk[select.index("X")])
        if plane > _WHOLE_CHUNK_PIXELS:
            with self._lock:
                if level not in self._cached:
                    whole = tuple(slice(None) if s in ("Y", "X") else s for s in select)
                    self._cached[level] = _to_rgb(np.asarray(array[whole]))
            return self._cached[level][r0:r1, c0:c1]
        index = tuple(slice(r0, r1) if s == "Y" else slice(c0, c1) if s == "X" else s for s in select)
        return _to_rgb(np.asarray(array[index]))

    def close(self) -> None:
        self._levels = []
        self._cached = {}
        self._tif.close()


def _yx_selection(axes: str, shape: tuple[int, ...]) -> tuple[tuple[Any, ...], tuple[int, int]]:
    """Index per axis picking the first plane of every axis but Y, X and samples/channels.

    Returns the index (with ``"Y"``/``"X"`` marking the axes a region slices) and (rows, cols).
    Channels (``C``/``S``) are moved last by :func:`_to_rgb`, which expects (Y, X[, C]).
    """
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"TIFF series has axes {axes!r}; expected an image with Y and X axes")
    select: list[Any] = []
    for axis in axes:
        select.append(axis if axis in "YX" else slice(None) if axis in "CS" else 0)
    rows, cols = shape[axes.index("Y")], shape[axes.index("X")]
    kept = [a for a in axes if a in "YXCS"]
    if kept.index("Y") > kept.index("X"):
        raise ValueError(f"TIFF series has axes {axes!r} with X before Y; not an image layout nucflow reads")
    return tuple(select), (int(rows), int(cols))


def _to_rgb(region: np.ndarray) -> np.ndarray:
    """A (Y, X), (Y, X, C) or (C, Y, X) uint8 region as (Y, X, 3) RGB."""
    if region.ndim == 3 and region.shape[0] in (3, 4) and region.shape[2] not in (3, 4):
        region = np.moveaxis(region, 0, -1)
    if region.ndim == 2:
        region = np.repeat(region[..., None], 3, axis=2)
    if region.ndim != 3 or region.shape[2] not in (3, 4):
        raise ValueError(f"TIFF region has shape {region.shape}; expected an RGB or RGBA image")
    if region.dtype != np.uint8:
        raise ValueError(f"TIFF image has dtype {region.dtype}; expected 8-bit RGB")
    return np.ascontiguousarray(region[..., :3])


def open_tiff(source: Any) -> tuple[TiffBackend, float | None]:
    """The lazy backend of a TIFF (a path or an open binary file) and its µm/px (None if unknown).

    Raises whatever tifffile raises for a file that is not a readable TIFF.
    """
    import tifffile

    tif = tifffile.TiffFile(source)
    try:
        series = _main_series(tif)
        _check_complete(tif, series)
        return TiffBackend(tif, series), tiff_mpp(tif)
    except BaseException:
        tif.close()
        raise


def _main_series(tif: Any) -> Any:
    """The image series holding the slide: the largest (skipping thumbnails, labels, macros)."""
    series = [s for s in tif.series if "Y" in s.axes and "X" in s.axes]
    if not series:
        raise ValueError("the TIFF holds no image series with Y and X axes")
    return max(series, key=lambda s: int(s.shape[s.axes.index("Y")]) * int(s.shape[s.axes.index("X")]))


def _check_complete(tif: Any, series: Any) -> None:
    """Refuse a file whose tiles lie past its end (a truncated copy): tifffile would read them as blank."""
    size = int(tif.filehandle.size)
    for level in series.levels:
        for page in level.pages:
            if page is None:
                continue
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
            if ends and max(ends) > size:
                raise ValueError(
                    f"its image data runs to byte {max(ends)} but the file has {size} bytes: it is truncated"
                )


def tiff_mpp(tif: Any) -> float | None:
    """µm/px of a :class:`tifffile.TiffFile`: OME-XML ``PhysicalSizeX`` first, else the resolution tags."""
    mpp = ome_mpp(tif.ome_metadata) if tif.is_ome else None
    return mpp if mpp is not None else tag_mpp(tif.pages[0])


_OME_UNITS = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


def ome_mpp(ome_xml: str | None) -> float | None:
    """µm/px from the first ``Pixels`` element's ``PhysicalSizeX`` (and its unit, µm by default)."""
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", ome_xml or "")
    if pixels is None:
        return None
    size = re.search(r'\bPhysicalSizeX="([0-9.eE+-]+)"', pixels.group(0))
    if size is None:
        return None
    unit = re.search(r'\bPhysicalSizeXUnit="([^"]+)"', pixels.group(0))
    factor = _OME_UNITS.get(unit.group(1) if unit else "µm")
    value = float(size.group(1)) * factor if factor is not None else None
    return value if value is not None and value > 0 else None


def tag_mpp(page: Any) -> float | None:
    """µm/px from a page's XResolution and ResolutionUnit tags (inch or cm), None without them."""
    tags = page.tags
    res, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
    if res is None or unit is None:
        return None
    numerator, denominator = res.value
    pixels_per_unit = numerator / denominator if denominator else 0
    microns = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    return microns / pixels_per_unit if microns and pixels_per_unit > 1 else None


def is_tiff(path: Path) -> bool:
    """Whether the file starts like a TIFF or BigTIFF."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
