"""In-memory prediction of a whole image through the same tiles the slide pipeline uses."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from nucflow.inference.predictors import Predictor, UNetPredictor
from nucflow.slide.tiles import Tile, crop_padded, tile_grid

__all__ = ["auto_tile_size", "crop_padded", "gate_core", "predict_image", "predict_tiles", "predict_whole"]

def auto_tile_size(input_multiple: int, *, margin: int, core_target: int = 512) -> int:
    """The smallest valid tile side whose core is at least ``core_target`` pixels."""
    return math.ceil((core_target + 2 * margin) / input_multiple) * input_multiple


def _batches(tiles: Sequence[Tile], size: int) -> Iterator[Sequence[Tile]]:
    for start in range(0, len(tiles), size):
        yield tiles[start : start + size]


def predict_tiles(
    read_window: Any, tiles: Sequence[Tile], predictor: Predictor, *, batch_size: int, params: dict | None = None
) -> Iterator[tuple[Tile, np.ndarray]]:
    """Run ``predictor`` over ``tiles`` and yield each tile with its core's probabilities.

    ``read_window(row, col, rows, cols)`` returns the (rows, cols, 3) uint8 context window.
    Each yielded core is a (tile.rows, tile.cols) float32 array. ``params["stain_gate"]``
    (``[factor, threshold]``, from :func:`nucflow.pipeline.image.fit_params`) zeroes the core's
    probability where :func:`nucflow.stain.stain_gate` drops the pixel, referenced to the core's
    own nuclei.
    """
    gate = (params or {}).get("stain_gate")
    for batch in _batches(tiles, batch_size):
        windows = np.stack([read_window(*t.read_origin, t.size, t.size) for t in batch])
        probs = predictor(windows, params=params)
        for tile, window, prob in zip(batch, windows, probs, strict=True):
            m = tile.margin
            core = prob[m : m + tile.rows, m : m + tile.cols]
            if gate is not None:
                core = gate_core(core, window[m : m + tile.rows, m : m + tile.cols], gate)
            yield tile, core


def gate_core(core: np.ndarray, rgb: np.ndarray, gate: Sequence[float]) -> np.ndarray:
    """A tile core's probabilities with the stain gate ``[factor, threshold]`` applied."""
    from nucflow.stain import stain_gate

    keep = stain_gate(rgb, core, factor=gate[0], threshold=gate[1])
    return np.where(keep, core, np.float32(0.0)).astype(core.dtype, copy=False)


def predict_image(
    rgb: np.ndarray,
    model: Any,
    *,
    margin: int = 32,
    tile_size: int | None = None,
    batch_size: int = 4,
    predictor: Predictor | None = None,
) -> np.ndarray:
    """Predict nucleus probabilities of a whole in-memory image, tile by tile.

    Parameters
    ----------
    rgb : np.ndarray
        (rows, cols, 3) uint8 image, already at the model's working resolution.
    model : nucflow.models.LoadedModel
        The segmentator (ignored when ``predictor`` is given).
    margin : int
        Context pixels read around each tile's core.

    Returns
    -------
    np.ndarray
        (rows, cols) float32 in [0, 1].
    """
    predictor = predictor or UNetPredictor(model)
    size = tile_size or auto_tile_size(predictor.input_multiple, margin=margin)
    grid = tile_grid(rgb.shape[:2], tile_size=size, margin=margin)
    out = np.zeros(rgb.shape[:2], np.float32)
    for tile, core in predict_tiles(lambda *a: crop_padded(rgb, *a), grid.tiles, predictor, batch_size=batch_size):
        out[tile.row : tile.row + tile.rows, tile.col : tile.col + tile.cols] = core
    return out


def predict_whole(rgb: np.ndarray, predictor: Predictor) -> np.ndarray:
    """One forward pass over the whole image (padded with white to the input multiple)."""
    multiple = predictor.input_multiple
    rows = math.ceil(rgb.shape[0] / multiple) * multiple
    cols = math.ceil(rgb.shape[1] / multiple) * multiple
    padded = crop_padded(rgb, 0, 0, rows, cols)
    return predictor(padded[None])[0][: rgb.shape[0], : rgb.shape[1]]
