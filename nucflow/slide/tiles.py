"""The tile grid: cores a tile owns and writes, and the context read around them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Tile", "TileGrid", "tile_grid"]


@dataclass(frozen=True)
class Tile:
    """One tile at the model's resolution.

    The core ``[row, row + rows) x [col, col + cols)`` is what the tile owns and writes (one
    Zarr chunk, clipped at the slide's edge); the network reads the core plus ``margin``
    pixels of context on every side, i.e. a ``size x size`` window starting at
    ``(row - margin, col - margin)``.
    """

    index: int
    row: int
    col: int
    rows: int
    cols: int
    margin: int
    size: int

    @property
    def read_origin(self) -> tuple[int, int]:
        return self.row - self.margin, self.col - self.margin

    @property
    def chunk(self) -> tuple[int, int]:
        """The Zarr chunk index (chunk row, chunk col) this core fills."""
        core = self.size - 2 * self.margin
        return self.row // core, self.col // core


@dataclass(frozen=True)
class TileGrid:
    """All tiles of one slide that touch tissue, and the map they fill."""

    shape: tuple[int, int]  # (rows, cols) of the whole map at the model's resolution
    core: int
    margin: int
    tiles: tuple[Tile, ...]


def tile_grid(
    shape: tuple[int, int],
    *,
    tile_size: int,
    margin: int,
    tissue: np.ndarray | None = None,
) -> TileGrid:
    """Cover a map of ``shape`` (rows, cols) with tile cores of ``tile_size - 2 * margin``.

    Parameters
    ----------
    tissue : np.ndarray, optional
        (r, c) bool tissue mask of the whole slide at any coarser resolution; tiles whose core
        holds no tissue are left out. None keeps every tile.
    """
    core = tile_size - 2 * margin
    if core <= 0:
        raise ValueError(f"margin {margin} leaves no core in a {tile_size}px tile")
    rows, cols = shape
    keep = _tissue_per_core(tissue, shape, core) if tissue is not None else None
    tiles: list[Tile] = []
    for i in range(math.ceil(rows / core)):
        for j in range(math.ceil(cols / core)):
            if keep is not None and not keep[i, j]:
                continue
            r, c = i * core, j * core
            tiles.append(Tile(len(tiles), r, c, min(core, rows - r), min(core, cols - c), margin, tile_size))
    return TileGrid(shape, core, margin, tuple(tiles))


def _tissue_per_core(tissue: np.ndarray, shape: tuple[int, int], core: int) -> np.ndarray:
    """(n_row_tiles, n_col_tiles) bool: does any tissue pixel fall inside each core?"""
    n_rows, n_cols = math.ceil(shape[0] / core), math.ceil(shape[1] / core)
    rr, cc = np.nonzero(tissue)
    scale_r, scale_c = shape[0] / tissue.shape[0], shape[1] / tissue.shape[1]
    keep = np.zeros((n_rows, n_cols), bool)
    # A tissue pixel covers [r * scale, (r + 1) * scale) of the map: mark every core it touches.
    r0 = np.floor(rr * scale_r / core).astype(int)
    r1 = np.floor(np.nextafter((rr + 1) * scale_r, 0) / core).astype(int)
    c0 = np.floor(cc * scale_c / core).astype(int)
    c1 = np.floor(np.nextafter((cc + 1) * scale_c, 0) / core).astype(int)
    for a, b, c, d in zip(r0, r1, c0, c1, strict=True):
        keep[a : min(b, n_rows - 1) + 1, c : min(d, n_cols - 1) + 1] = True
    return keep
