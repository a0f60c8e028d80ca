"""Writing small pyramidal slides: the demo slide and test fixtures.

OpenSlide reads a tiled, JPEG-compressed pyramidal TIFF whose first ImageDescription starts
with ``Aperio Image Library`` as an Aperio SVS, including its ``MPP`` and ``AppMag``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from skimage.transform import resize

from nucflow.atomic import atomic_path

__all__ = [
    "array_region", "demo_ihc_image", "write_demo_slide", "write_leica_scn", "write_ome_pyramid", "write_svs",
]


def write_svs(
    path: str | Path,
    rgb: np.ndarray,
    *,
    mpp: float = 0.25,
    magnification: int = 40,
    tile: int = 256,
    min_level_size: int = 512,
    quality: int = 90,
) -> Path:
    """Write ``rgb`` (rows, cols, 3) uint8 as a pyramidal Aperio SVS that OpenSlide opens.

    Levels halve in size until the longer side is below ``min_level_size``. Returns the path.
    The file is written beside the target and renamed, so it appears whole or not at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, cols = rgb.shape[:2]
    description = (
        f"Aperio Image Library v12.0.0\r\n{cols}x{rows} [0,0 {cols}x{rows}] ({tile}x{tile}) "
        f"JPEG Q={quality}|AppMag = {magnification}|MPP = {mpp}"
    )
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        level = np.ascontiguousarray(rgb, dtype=np.uint8)
        first = True
        while True:
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                description=description if first else None,
                metadata=None,
                subfiletype=0 if first else 1,
            )
            first = False
            if max(level.shape[:2]) // 2 < min_level_size:
                break
            half = (level.shape[0] // 2, level.shape[1] // 2)
            level = (resize(level, half, anti_aliasing=True, preserve_range=True)).astype(np.uint8)
    return path


def demo_ihc_image(*, repeats: int = 2) -> np.ndarray:
    """scikit-image's real IHC image (DAB + hematoxylin), mirrored into a larger field.

    Returns an array of shape (512 * repeats, 512 * repeats, 3), uint8. Mirroring keeps
    the tissue continuous across copies so the demo slide needs several tiles.
    """
    from skimage import data

    base = data.immunohistochemistry()
    row = np.concatenate([base if i % 2 == 0 else base[:, ::-1] for i in range(repeats)], axis=1)
    return np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(repeats)], axis=0)


def write_demo_slide(path: str | Path, *, repeats: int = 2) -> Path:
    """Write the demo slide: the mirrored scikit-image IHC field as a 40x (0.25 µm/px) SVS."""
    return write_svs(path, demo_ihc_image(repeats=repeats), mpp=0.25, magnification=40)


def write_ome_pyramid(
    path: str | Path,
    shape: tuple[int, int],
    region: Callable[[float, int, int, int, int], np.ndarray],
    *,
    mpp: float = 0.25,
    levels: int = 3,
    tile: int = 256,
    compression: str = "jpeg",
) -> Path:
    """Write a tiled pyramidal OME-TIFF with its reduced levels in SubIFDs, as bfconvert does.

    ``region(downsample, row, col, rows, cols)`` returns the (rows, cols, 3) uint8 pixels of
    that level-grid region at that downsample (1, 2, 4 ...); it is called one tile at a time,
    so a slide larger than memory can be written. Level 0 is ``shape`` (rows, cols) at ``mpp``
    µm/px, recorded as the OME-XML ``PhysicalSizeX``/``Y``. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"tile": (tile, tile), "photometric": "rgb", "compression": compression}
    if compression == "jpeg":
        options["compressionargs"] = {"level": 90}

    def tiles(downsample: int, rows: int, cols: int) -> Iterator[np.ndarray]:
        for r in range(0, rows, tile):
            for c in range(0, cols, tile):
                block = np.full((tile, tile, 3), 255, np.uint8)
                h, w = min(tile, rows - r), min(tile, cols - c)
                block[:h, :w] = region(float(downsample), r, c, h, w)
                yield block

    metadata = {
        "axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp,
        "PhysicalSizeYUnit": "µm",
    }
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        rows, cols = shape
        tif.write(tiles(1, rows, cols), shape=(rows, cols, 3), dtype=np.uint8, subifds=levels - 1,
                  metadata=metadata, **options)
        for level in range(1, levels):
            down = 2**level
            lrows, lcols = -(-rows // down), -(-cols // down)
            tif.write(tiles(down, lrows, lcols), shape=(lrows, lcols, 3), dtype=np.uint8, subfiletype=1,
                      metadata=None, **options)
    return path


def array_region(rgb: np.ndarray) -> Callable[[float, int, int, int, int], np.ndarray]:
    """A :func:`write_ome_pyramid` region function over an in-memory image (levels by striding)."""

    def region(downsample: float, row: int, col: int, rows: int, cols: int) -> np.ndarray:
        step = int(downsample)
        level = rgb[::step, ::step]
        return level[row : row + rows, col : col + cols]

    return region


def write_leica_scn(
    path: str | Path, rgb: np.ndarray, *, mpp: float = 0.25, offset: tuple[int, int] = (96, 40),
    margin: tuple[int, int] = (50, 30), tile: int = 256,
) -> Path:
    """Write ``rgb`` as a two-level Leica SCN whose scanned area sits at ``offset`` (x, y) in a
    larger slide: OpenSlide reports it as ``openslide.bounds-x/y/width/height`` (as for MRXS,
    SCN and BIF scans), level 0 being ``offset + rgb + margin`` wide and high. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, cols = rgb.shape[:2]
    nm = round(mpp * 1000)  # SCN positions are in nanometres ("clicks")
    width, height = (offset[0] + cols + margin[0]) * nm, (offset[1] + rows + margin[1]) * nm
    half = resize(rgb, (rows // 2, cols // 2), anti_aliasing=True, preserve_range=True).astype(np.uint8)
    xml = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
        f'<collection name="nucflow" uuid="1" sizeX="{width}" sizeY="{height}">'
        '<image name="main" uuid="2"><creationDate>2026-01-01T00:00:00Z</creationDate>'
        '<device model="Leica SCN400;Leica SCN" version="1.5"/>'
        f'<pixels sizeX="{cols}" sizeY="{rows}">'
        f'<dimension sizeX="{cols}" sizeY="{rows}" r="0" ifd="0" c="0"/>'
        f'<dimension sizeX="{half.shape[1]}" sizeY="{half.shape[0]}" r="1" ifd="1" c="0"/></pixels>'
        f'<view sizeX="{cols * nm}" sizeY="{rows * nm}" offsetX="{offset[0] * nm}" offsetY="{offset[1] * nm}" '
        'spacingZ="0"/><scanSettings><objectiveSettings><objective>40</objective></objectiveSettings>'
        '<illuminationSettings><numericalAperture>0.5</numericalAperture>'
        '<illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings>'
        '</image></collection></scn>'
    )
    options: dict[str, Any] = {"tile": (tile, tile), "photometric": "rgb", "compression": "jpeg", "metadata": None,
                               "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        tif.write(np.ascontiguousarray(rgb), description=xml, resolution=(1e4 / mpp, 1e4 / mpp), **options)
        tif.write(half, subfiletype=1, resolution=(5e3 / mpp, 5e3 / mpp), **options)
    return path
