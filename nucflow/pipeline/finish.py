"""Finishing a slide: post-processing its map into tables, a summary and a QC picture.

:func:`finish_slide` runs where the compute is: the pipeline calls it as a Ray task, so on
a cluster it executes on a worker node (Dask threads inside that task), never on the driver.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nucflow import __version__
from nucflow.atomic import write_json
from nucflow.inference.store import ProbabilityMap
from nucflow.inference.store import read_rgb as read_stored_rgb
from nucflow.pipeline.config import SegmentConfig
from nucflow.pipeline.image import find_tissue, postprocess_profile
from nucflow.pipeline.plan import SlidePlan, slide_regions
from nucflow.postprocess import (
    Block,
    NucleusTableWriter,
    OverlayNuclei,
    iter_nuclei_parts,
    render_overlay,
)
from nucflow.roi import Regions
from nucflow.scoring import ScoreAccumulator
from nucflow.slide import open_slide
from nucflow.stain import resolve_stain_vectors

__all__ = ["finish_slide", "slide_summary"]

log = logging.getLogger(__name__)

#: The QC picture outlines each nucleus when the thumbnail has at most this many µm per
#: pixel (a nucleus then spans a few of its pixels); coarser, it shows nucleus counts.
OUTLINE_MAX_MPP = 3.0


def finish_slide(
    plan: SlidePlan, config: SegmentConfig, *, geojson: bool | str, poll_s: float = 0.5,
    threads_while_predicting: int | None = None,
) -> dict[str, Any]:
    """Post-process ``plan``'s map and write its outputs; returns its summary.

    The nucleus table is labelled, measured and written part by part (a few blocks at a
    time), so memory does not grow with the slide, and each part waits until the ``done``
    grid shows every planned tile under it written (checked every ``poll_s`` s): the task
    can start while the slide's tiles are still being predicted. Writes ``nuclei.parquet``
    (and ``nuclei.geojson``, or ``nuclei.geojson.gz`` when ``geojson`` is "gz"; its object ids
    derive from the slide's content identity, so a rerun writes the same file), ``overlay.png``
    and, last, ``summary.json`` (with the inference time the driver recorded in the map's
    metadata with the slide's last tiles), whose presence with the run's config hash marks the
    slide finished. ``threads_while_predicting``: Dask threads for the parts post-processed
    while some of the slide's tiles are still to come (None: as many as after them); the
    pipeline gives 1 when its model actors run on the CPU cores, where a second thread only
    competes with them (measured: more CPU seconds, and about 70 MB more memory beside them).
    """
    started = time.perf_counter()
    waiter = _TileWaiter(plan, poll_s=poll_s, threads_while_predicting=threads_while_predicting)
    out_dir = Path(plan.out_dir)
    profile = postprocess_profile(config, shrink_um=plan.mask_shrink_um, interior=plan.interior_markers)
    level0_mpp = plan.mpp / plan.level0_scale
    with open_slide(plan.path, mpp=plan.mpp_override) as slide:
        # The thumbnail and tissue planning found, kept with the map (else found again: an earlier map)
        thumb, thumb_mpp, tissue = ProbabilityMap(plan.map_path).read_thumbnail() or find_tissue(slide, config.tissue)
        profile = replace(profile, stain_vectors=resolve_stain_vectors(  # this slide's, if estimated
            profile.stain_vectors, thumb, tissue, name=plan.key))
        regions, region_areas, regions_mask = None, None, None
        if plan.roi is not None:  # only the regions' tissue, as planned
            regions = slide_regions(plan.roi, plan.roi_exclude, size=slide.size, offset=plan.qupath_offset)
            grid = regions.label_grid(tissue.shape, thumb_mpp / level0_mpp)
            regions_mask = grid >= 0
            tissue = tissue & regions_mask
            region_areas = {name: float((grid[tissue] == index).sum()) * (thumb_mpp / 1000.0) ** 2
                            for index, name in enumerate(regions.names)}
        overlay = OverlayNuclei(
            thumb.shape[:2], level0_scale=thumb_mpp / level0_mpp, outlines=thumb_mpp <= OUTLINE_MAX_MPP,
            graded=bool(profile.intensity_thresholds), colours=profile.class_colours,
        )

        def read_slide(row: int, col: int, rows: int, cols: int) -> Any:
            return slide.read(mpp=plan.mpp, row=row, col=col, rows=rows, cols=cols)

        # The stain columns' pixels: those the model actors wrote beside the map (no second read
        # and resampling of the slide), or the slide's where there are none.
        stored = ProbabilityMap(plan.map_path).rgb_array()
        read_rgb = read_slide if stored is None else functools.partial(read_stored_rgb, stored, read_slide)

        parts = iter_nuclei_parts(
            ProbabilityMap(plan.map_path).array(), config=profile, read_rgb=read_rgb,
            block_size=config.postprocess_block, num_workers=_threads(config), before_part=waiter,
            device=config.postprocess_device,
        )
        scores = ScoreAccumulator(profile)
        geojson_path = out_dir / ("nuclei.geojson.gz" if geojson == "gz" else "nuclei.geojson") if geojson else None
        with NucleusTableWriter(out_dir / "nuclei.parquet", geojson=geojson_path,
                                geojson_offset=plan.qupath_offset, graded=bool(profile.intensity_thresholds),
                                id_seed=str(plan.identity.get("sample_sha256") or plan.path),
                                colours=profile.class_colours) as writer:
            for part in parts:
                names = None
                if regions is not None:
                    part, names = _in_regions(part, regions)
                writer.write(part)
                overlay.add(part)
                scores.add(part, names)
    scoring = scores.summary(um_per_level0_px=level0_mpp, region_areas_mm2=region_areas)
    seconds_post = time.perf_counter() - started - waiter.seconds
    render_overlay(thumb, level0_scale=thumb_mpp / level0_mpp, tissue_mask=tissue, nuclei=overlay,
                   path=out_dir / "overlay.png", mpp=thumb_mpp, hot_spot=scoring["hot_spot"],
                   regions_mask=regions_mask)
    ProbabilityMap(plan.map_path).write_pyramid()  # OME-Zarr levels for viewers, every tile being written
    ProbabilityMap(plan.map_path).drop_rgb()  # a working copy: a later re-finish reads the slide
    seconds_write = time.perf_counter() - started - waiter.seconds - seconds_post
    seconds = {**plan.seconds, "postprocess": round(seconds_post, 3), "write": round(seconds_write, 3),
               "waiting_for_tiles": round(waiter.seconds, 3),
               "inference": round(ProbabilityMap(plan.map_path).metadata.inference_s, 3)}
    summary = slide_summary(plan, nuclei=writer.rows, positive=scoring["positive"], seconds=seconds,
                            scoring=scoring)
    write_json(out_dir / "summary.json", summary)  # the driver then adds its request key (outputs.record_request)
    return summary


def _in_regions(part: Any, regions: Regions) -> tuple[Any, np.ndarray]:
    """The nuclei of ``part`` whose centroid lies in a region, and their region names."""
    labels = regions.label_points(part["centroid_x"].to_numpy(), part["centroid_y"].to_numpy())
    inside = labels >= 0
    return part[inside], np.asarray(regions.names, dtype=object)[labels[inside]]


class _TileWaiter:
    """Blocks until the planned tiles under some post-processing blocks are written; then gives
    the Dask threads for those blocks: ``threads_while_predicting`` while other planned tiles
    are still to come, else None (the task's own number)."""

    def __init__(self, plan: SlidePlan, *, poll_s: float, threads_while_predicting: int | None = None) -> None:
        assert plan.grid is not None, "a slide to finish has a tile grid"
        self.map = ProbabilityMap(plan.map_path)
        self.core = plan.grid.core
        self.planned = {tile.chunk for tile in plan.grid.tiles}
        self.poll_s = poll_s
        self.seconds = 0.0
        self.threads_while_predicting = threads_while_predicting
        self.all_written = False

    def __call__(self, blocks: list[Block]) -> int | None:
        needed: set[tuple[int, int]] = set()
        for block in blocks:
            r0, r1, c0, c1 = block.region
            rows = range(r0 // self.core, (r1 - 1) // self.core + 1)
            cols = range(c0 // self.core, (c1 - 1) // self.core + 1)
            needed.update((r, c) for r in rows for c in cols)
        needed &= self.planned
        started = time.perf_counter()
        while not self.all_written:
            done = self.map.done_chunks()
            self.all_written = self.planned <= done
            if needed <= done:
                break
            time.sleep(self.poll_s)
        self.seconds += time.perf_counter() - started
        return None if self.all_written else self.threads_while_predicting


def _threads(config: SegmentConfig) -> int:
    """Dask threads: ``postprocess_threads``, or every core of this node when it is None.

    The task reserves only ``postprocess_cpus`` Ray CPUs (0 by default: on a CPU machine the
    model actors hold every slot, and the task shares the cores with them while it follows
    the tiles; on a GPU node it uses the cores the GPU actors leave idle).
    """
    return config.postprocess_threads or max(1, os.cpu_count() or 1)


def slide_summary(
    plan: SlidePlan, *, nuclei: int, positive: int, seconds: dict[str, float], scoring: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The slide-level figures: counts, Ki67 labelling index (global and hot spot), H-score,
    density, timings, and the full ``scoring`` (:mod:`nucflow.scoring`)."""
    count = nuclei
    area = plan.tissue_area_mm2
    spot = (scoring or {}).get("hot_spot") or {}
    return {
        "slide": plan.key,
        "path": plan.path,
        "slide_identity": plan.identity,
        "status": "ok",
        "nuclei": count,
        "positive": positive,
        "labelling_index_percent": round(100.0 * positive / count, 3) if count else 0.0,
        "tissue_area_mm2": round(area, 4),
        "nuclei_per_mm2": round(count / area, 2) if area > 0 else 0.0,
        "hotspot_labelling_index_percent": spot.get("labelling_index_percent"),
        "h_score": (scoring or {}).get("h_score"),
        "scoring": scoring,
        "tiles": len(plan.grid.tiles) if plan.grid else 0,
        "mpp": plan.mpp,
        "model_id": plan.model_id,
        "config_hash": plan.run_hash,
        "nucflow_version": __version__,
        "seconds": seconds,
    }
