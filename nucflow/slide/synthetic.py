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

__all__ = ["array_region", "demo_ihc_image", "write_demo_slide", "write_ome_pyramid", "write_svs"]


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
