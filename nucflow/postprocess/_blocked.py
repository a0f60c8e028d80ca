"""Nucleus tables of whole slides: the labelling run on overlapping Dask blocks of a map."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import zarr

from nucflow.errors import InputError
from nucflow.postprocess._config import PostprocessConfig
from nucflow.postprocess._device import resolve_device
from nucflow.postprocess._features import (
    COLUMNS,
    MapGeometry,
    RegionStats,
    RgbReader,
    region_measures,
    region_stats,
)
from nucflow.postprocess._label import as_uint8_probability, label_nuclei, plausible_sizes, split_labels

__all__ = ["Block", "blocks", "empty_table", "iter_nuclei_parts", "nuclei_table", "open_probability"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Block:
    """A core the block owns and the extended region (core plus halo, clipped) it labels."""

    core: tuple[int, int, int, int]  # row0, row1, col0, col1
    region: tuple[int, int, int, int]


def blocks(shape: tuple[int, int], *, block_size: int, halo: int) -> list[Block]:
    """Cover a (rows, cols) map with cores of ``block_size`` px and regions ``halo`` px wider."""
    if block_size < 1:
        raise InputError(f"block_size must be >= 1 px, got {block_size}")
    rows, cols = shape
    out = []
    for r0 in range(0, rows, block_size):
        for c0 in range(0, cols, block_size):
            r1, c1 = min(r0 + block_size, rows), min(c0 + block_size, cols)
            region = (max(r0 - halo, 0), min(r1 + halo, rows), max(c0 - halo, 0), min(c1 + halo, cols))
            out.append(Block(core=(r0, r1, c0, c1), region=region))
    return out


def open_probability(
    prob: str | Path | zarr.Array | np.ndarray | da.Array,
) -> tuple[da.Array, dict[str, Any]]:
    """The probability map as a 2-D Dask array, and its Zarr attributes (empty for arrays).

    A path may name the array or a group holding it as ``probability`` (the layout of
    ``<slide>/probability.zarr``); the group's attributes are read, then the array's.
    """
    attrs: dict[str, Any] = {}
    if isinstance(prob, str | Path):
        prob, attrs = _open_zarr(Path(prob))
    if isinstance(prob, zarr.Array):
        attrs.update(prob.attrs.asdict())
        array = da.from_zarr(prob)
    else:
        array = prob if isinstance(prob, da.Array) else da.from_array(np.asarray(prob))
    if array.ndim != 2:
        raise InputError(f"probability map must be 2-D (rows, cols), got shape {array.shape}")
    return array, attrs


def _open_zarr(path: Path) -> tuple[zarr.Array, dict[str, Any]]:
    try:
        node = zarr.open(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise InputError(f"no Zarr probability map at {path}: {exc}") from None
    if isinstance(node, zarr.Array):
        return node, {}
    member = node.get("probability")
    if not isinstance(member, zarr.Array):
        raise InputError(f"Zarr group {path} has no 'probability' array; is it a probability map?")
    return member, node.attrs.asdict()


def map_geometry(attrs: dict[str, Any], **overrides: Any) -> MapGeometry:
    """Geometry from probability.zarr attributes (read as :class:`~nucflow.inference.store.MapMetadata`,
    whose defaults apply), with explicit (non-None) overrides."""
    from nucflow.inference.store import MapMetadata

    meta = MapMetadata.from_attrs(attrs)
    values: dict[str, Any] = {"mpp": meta.mpp, "level0_offset": meta.level0_offset,
                              "level0_scale": meta.level0_scale, "slide_mpp": meta.slide_mpp}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values["mpp"] is None:
        raise InputError("the probability map's resolution is unknown: pass mpp= (µm/px)")
    offset = tuple(float(v) for v in values["level0_offset"])
    return MapGeometry(
        mpp=float(values["mpp"]),
        level0_offset=(offset[0], offset[1]),
        level0_scale=float(values["level0_scale"]),
        slide_mpp=None if values["slide_mpp"] is None else float(values["slide_mpp"]),
    )


def empty_table() -> gpd.GeoDataFrame:
    """A nucleus table with no rows and every column."""
    frame = pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in COLUMNS.items()})
    return _geo(frame, [], geometry_um=[])


def _geo(frame: pd.DataFrame, outlines: list, *, geometry_um: list) -> gpd.GeoDataFrame:
    table = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(outlines, index=frame.index))
    table.insert(1, "geometry_um", gpd.GeoSeries(geometry_um, index=frame.index))
    return table[["id", "geometry", "geometry_um", *list(COLUMNS)[1:]]]


def nuclei_table(
    prob: str | Path | zarr.Array | np.ndarray | da.Array,
    *,
    config: PostprocessConfig,
    read_rgb: RgbReader | None = None,
    mpp: float | None = None,
    level0_offset: tuple[float, float] | None = None,
    level0_scale: float | None = None,
    slide_mpp: float | None = None,
    block_size: int = 1024,
    scheduler: str = "threads",
    num_workers: int | None = None,
    progress: Progress | None = None,
    device: str = "auto",
) -> gpd.GeoDataFrame:
    """Label the nuclei of a whole probability map block by block and measure each one.

    Blocks of ``block_size`` px are labelled with a halo wider than the largest nucleus plus
    every filter footprint (:meth:`PostprocessConfig.in_pixels`); a block keeps the nuclei
    whose centroid lies in its core, so none is counted twice or cut. Every step up to the
    watershed is local within the halo, so the table equals what :func:`label_nuclei` on the
    whole map gives, except where the watershed floods a cluster of touching nuclei wider
    than the halo (on the 4608 px benchmark map: identical with 1024 px blocks, 1 nucleus
    in 3900 moved with 512 px ones). Ids run 1..N in block raster order.

    Parameters
    ----------
    prob : path or zarr.Array of probability.zarr, or a (rows, cols) array (uint8 0-255 or
        float in [0, 1]); its attributes ``mpp``, ``level0_offset``, ``level0_scale`` and
        ``slide_mpp`` place it on the slide unless given here.
    config : PostprocessConfig
    read_rgb : callable ``(row, col, rows, cols) -> (rows, cols, 3) uint8`` in map pixels,
        for the stain columns (None: they are NaN and no nucleus is positive). Called from
        several threads at once.
    block_size : core side in map pixels.
    scheduler, num_workers : the Dask scheduler ("threads" in one process) and its threads.
    progress : called as ``progress(blocks_done, blocks_total)`` after each block.
    device : ``auto``, ``cpu`` or ``gpu``: where the pixel-wise labelling steps run
        (``auto``: a GPU when CuPy sees one); the table is the same.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per nucleus: ``id``, ``geometry`` (outline, level-0 px, x = column),
        ``geometry_um``, then :data:`COLUMNS`; empty with the same columns if no nucleus.
        :func:`iter_nuclei_parts` gives the same rows part by part, in bounded memory.
    """
    parts = list(iter_nuclei_parts(
        prob, config=config, read_rgb=read_rgb, mpp=mpp, level0_offset=level0_offset, level0_scale=level0_scale,
        slide_mpp=slide_mpp, block_size=block_size, blocks_per_part=sys.maxsize, scheduler=scheduler,
        num_workers=num_workers, progress=progress, device=device,
    ))  # every block in one Dask computation: one part, or none without nuclei
    table = parts[0] if parts else empty_table()
    logger.debug("%d nuclei", len(table))
    return table


def iter_nuclei_parts(
    prob: str | Path | zarr.Array | np.ndarray | da.Array,
    *,
    config: PostprocessConfig,
    read_rgb: RgbReader | None = None,
    mpp: float | None = None,
    level0_offset: tuple[float, float] | None = None,
    level0_scale: float | None = None,
    slide_mpp: float | None = None,
    block_size: int = 1024,
    blocks_per_part: int | None = None,
    scheduler: str = "threads",
    num_workers: int | None = None,
    progress: Progress | None = None,
    before_part: Callable[[list[Block]], int | None] | None = None,
    device: str = "auto",
) -> Iterator[gpd.GeoDataFrame]:
    """The rows of :func:`nuclei_table` (same arguments) as consecutive non-empty parts.

    Each part is one Dask computation over ``blocks_per_part`` blocks in raster order
    (default: four per thread), so only that many blocks' nuclei are held at once, however
    large the slide: write each part out as it comes (:class:`NucleusTableWriter`). Ids
    continue from part to part; concatenated, the parts equal :func:`nuclei_table`.
    ``before_part(blocks)`` is called before each part is read (e.g. to wait until the map
    is written there: a slide can be post-processed while its tiles are still predicted);
    when it returns a number, that part runs on that many Dask threads instead of
    ``num_workers`` (e.g. fewer while the model still uses the cores).
    """
    run = _BlockedRun(prob, config=config, read_rgb=read_rgb, geometry=dict(
        mpp=mpp, level0_offset=level0_offset, level0_scale=level0_scale, slide_mpp=slide_mpp,
    ), block_size=block_size, progress=progress, device=device)
    step = blocks_per_part or 4 * (num_workers or os.cpu_count() or 1)
    if step < 1:
        raise InputError(f"blocks_per_part must be >= 1, got {blocks_per_part}")
    next_id = 1
    for start in range(0, len(run.grid), step):
        batch = run.grid[start : start + step]
        threads = before_part(batch) if before_part is not None else None
        results = run.compute(batch, scheduler=scheduler, num_workers=threads or num_workers)
        if results:
            part = _assemble(results, run.geometry, first_id=next_id)
            next_id += len(part)
            yield part


class _BlockedRun:
    """A map opened and cut into blocks, ready to label any subset of them with Dask."""

    def __init__(
        self, prob: Any, *, config: PostprocessConfig, read_rgb: RgbReader | None, geometry: dict[str, Any],
        block_size: int, progress: Progress | None, device: str = "auto",
    ) -> None:
        self.array, attrs = open_probability(prob)
        self.geometry = map_geometry(attrs, **geometry)
        self.grid = blocks(self.array.shape, block_size=block_size, halo=config.in_pixels(self.geometry.mpp).halo)
        self.config, self.read_rgb = config, read_rgb
        self.device = resolve_device(device)
        self._task = _with_progress(_block_table, len(self.grid), progress)

    def compute(self, grid: list[Block], *, scheduler: str, num_workers: int | None) -> list:
        """The non-empty block results of ``grid``, in its order."""
        parts = [
            dask.delayed(self._task)(
                self.array[b.region[0] : b.region[1], b.region[2] : b.region[3]],
                block=b, read_rgb=self.read_rgb, geometry=self.geometry, config=self.config, device=self.device,
            )
            for b in grid
        ]
        results = dask.compute(*parts, scheduler=scheduler, num_workers=num_workers)
        return [r for r in results if r is not None]


def _with_progress(func: Callable[..., Any], total: int, progress: Progress | None) -> Callable:
    if progress is None:
        return func
    lock, done = threading.Lock(), [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        with lock:
            done[0] += 1
            progress(done[0], total)
        return result

    return counted


def _block_table(
    prob: np.ndarray,
    *,
    block: Block,
    read_rgb: RgbReader | None,
    geometry: MapGeometry,
    config: PostprocessConfig,
    device: str = "cpu",
) -> tuple[dict[str, np.ndarray], list[shapely.Polygon]] | None:
    """Label one block's region and measure the nuclei whose centroid lies in its core."""
    prob = as_uint8_probability(prob)
    if prob.max(initial=0) < math.ceil(config.threshold * 255.0):
        return None  # background (the map is 0 off tissue): nothing can become foreground
    r0, r1, c0, c1 = block.region
    core = (block.core[0] - r0, block.core[1] - r0, block.core[2] - c0, block.core[3] - c0)
    # Nuclei of components away from the core cannot be owned: they are left unlabelled.
    px = config.in_pixels(geometry.mpp)
    if px.erosion:  # erosion needs the filtered labels
        labels = label_nuclei(prob, mpp=geometry.mpp, config=config, device=device, within=core)
        stats = region_stats(labels)
        keep = None
    else:
        # label_nuclei's labels before its size filter and renumbering (which keeps their
        # order): filtered here from the counts and boxes measured anyway.
        labels = split_labels(prob, mpp=geometry.mpp, config=config, device=device, within=core)
        stats = region_stats(labels)
        keep = plausible_sizes(stats.sums[:, 0], (stats.stop - stats.start).max(axis=1), px=px)
    origin = (block.region[0], block.region[2])
    indices = owned_labels(stats, origin=origin, core=block.core)
    if keep is not None:
        indices = indices[keep[indices]]
    if indices.size == 0:
        return None
    rgb = None if read_rgb is None else _checked(read_rgb(r0, c0, r1 - r0, c1 - c0), labels.shape)
    return region_measures(
        labels, stats, indices, prob, rgb,
        geometry=geometry, origin=origin,
        dab_threshold=config.dab_threshold, dab_min_fraction=config.dab_min_fraction,
        intensity_thresholds=config.intensity_thresholds, stain_vectors=config.stain_vectors,
    )


def owned_labels(
    stats: RegionStats, *, origin: tuple[int, int], core: tuple[int, int, int, int]
) -> np.ndarray:
    """Labels whose centroid lies in ``core`` (row0, row1, col0, col1 of the whole map).

    Pixel ``i`` spans ``[i - 0.5, i + 0.5)``; centroids are compared in exact integer
    arithmetic (twice the coordinate sum against the pixel count), so a centroid on a
    boundary belongs to exactly one of the neighbouring blocks.
    """
    n = stats.sums[1:, 0]
    inside = n > 0
    for axis in (0, 1):
        first = stats.start[1:, axis] + origin[axis]
        twice_sum = 2 * (n * first + stats.sums[1:, 1 + axis])
        start, stop = core[2 * axis], core[2 * axis + 1]
        inside &= (twice_sum >= (2 * start - 1) * n) & (twice_sum < (2 * stop - 1) * n)
    return np.flatnonzero(inside) + 1


def _checked(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.shape != (*shape, 3) or rgb.dtype != np.uint8:
        raise InputError(
            f"read_rgb returned {rgb.shape} {rgb.dtype}; expected {(*shape, 3)} uint8"
        )
    return rgb


def _assemble(
    parts: list[tuple[dict[str, np.ndarray], list[shapely.Polygon]]], geometry: MapGeometry, *, first_id: int
) -> gpd.GeoDataFrame:
    if not parts:
        return empty_table()
    names = list(COLUMNS)[1:]
    columns = {name: np.concatenate([p[0][name] for p in parts]) for name in names}
    outlines = np.array([o for p in parts for o in p[1]], dtype=object)
    frame = pd.DataFrame({"id": np.arange(first_id, first_id + len(outlines), dtype=np.int64), **columns})
    um = geometry.um_per_level0_px
    outlines_um = shapely.transform(outlines, lambda xy: xy * um)
    return _geo(frame, list(outlines), geometry_um=list(outlines_um))
