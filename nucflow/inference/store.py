"""The per-slide probability map: a Zarr 3 group with the map and a record of finished tiles.

Layout of ``<slide>/probability.zarr``::

    probability   uint8 (rows, cols), chunks = tile core: probability * 255, 0 where no tissue
    done          uint8 (tile rows, tile cols): 1 once that core's chunk is written

Chunk files cannot prove a tile is finished (empty chunks are never written), hence ``done``.
Only the driver writes ``done``; each model actor writes whole, chunk-aligned cores of
``probability``, so concurrent writers never share a chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from nucflow.slide.tiles import Tile

__all__ = ["ProbabilityMap", "create_map", "open_map", "to_uint8"]

_DONE_CHUNK = 256


@dataclass(frozen=True)
class ProbabilityMap:
    """Handle on a slide's ``probability.zarr`` group (cheap to pickle: only the path)."""

    path: str

    @property
    def group(self) -> zarr.Group:
        return zarr.open_group(self.path, mode="r+")

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(zarr.open_group(self.path, mode="r").attrs)

    def array(self, *, mode: str = "r") -> zarr.Array:
        return zarr.open_array(f"{self.path}/probability", mode=mode)

    def write_core(self, tile: Tile, prob: np.ndarray, *, array: zarr.Array | None = None) -> None:
        """Write one tile's core (float in [0, 1] or uint8) into its chunk."""
        target = array if array is not None else self.array(mode="r+")
        target[tile.row : tile.row + tile.rows, tile.col : tile.col + tile.cols] = to_uint8(prob)

    def done_chunks(self) -> set[tuple[int, int]]:
        """Chunk indices (chunk row, chunk col) whose tiles are recorded as finished."""
        done = np.asarray(zarr.open_array(f"{self.path}/done", mode="r")[:])
        return {(int(r), int(c)) for r, c in zip(*np.nonzero(done), strict=True)}

    def mark_done(self, tiles: Iterable[Tile]) -> None:
        """Record tiles as finished (call only after their cores were written).

        One read-modify-write of the small ``done`` grid, whatever the number of tiles: only
        the driver writes it, so there is no other writer to race with.
        """
        chunks = [tile.chunk for tile in tiles]
        if not chunks:
            return
        done = zarr.open_array(f"{self.path}/done", mode="r+")
        grid = np.asarray(done[:])
        rows, cols = zip(*chunks, strict=True)
        grid[list(rows), list(cols)] = 1
        done[:] = grid


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 0-255 (rounded); uint8 input passes through."""
    if prob.dtype == np.uint8:
        return prob
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def create_map(path: str | Path, *, shape: tuple[int, int], core: int, attrs: dict[str, Any]) -> ProbabilityMap:
    """Create (replacing any) a probability map of ``shape`` with ``core``-sized chunks."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array(
        "probability",
        shape=shape,
        chunks=(core, core),
        dtype="uint8",
        fill_value=0,
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),
    )
    grid = (math.ceil(shape[0] / core), math.ceil(shape[1] / core))
    group.create_array(
        "done", shape=grid, chunks=(_DONE_CHUNK, _DONE_CHUNK), dtype="uint8", fill_value=0
    )
    group.attrs.update(attrs)
    group["probability"].attrs.update(attrs)
    return ProbabilityMap(str(path))


def open_map(path: str | Path) -> ProbabilityMap | None:
    """An existing, complete-looking probability map, or None when absent or unreadable."""
    try:
        group = zarr.open_group(str(path), mode="r")
        if "probability" not in group or "done" not in group:
            return None
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return None
    return ProbabilityMap(str(path))
