"""Finishing a slide: post-processing its map into tables, a summary and a QC picture.

:func:`finish_slide` runs where the compute is: the pipeline calls it as a Ray task, so on
a cluster it executes on a worker node (Dask threads inside that task), never on the driver.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from nucflow import __version__
from nucflow.atomic import write_json
from nucflow.inference.store import ProbabilityMap
from nucflow.pipeline.config import SegmentConfig
from nucflow.pipeline.plan import SlidePlan, find_tissue
from nucflow.postprocess import (
    NucleusTableWriter,
    OverlayNuclei,
    iter_nuclei_parts,
    load_stain_profile,
    render_overlay,
)
from nucflow.slide import open_slide

__all__ = ["finish_slide", "slide_summary"]

log = logging.getLogger(__name__)

#: The QC picture outlines each nucleus when the thumbnail has at most this many µm per
#: pixel (a nucleus then spans a few of its pixels); coarser, it shows nucleus counts.
OUTLINE_MAX_MPP = 3.0


def finish_slide(plan: SlidePlan, config: SegmentConfig, *, geojson: bool) -> dict[str, Any]:
    """Post-process ``plan``'s finished map and write its outputs; returns its summary.

    The nucleus table is labelled, measured and written part by part (a few blocks at a
    time), so memory does not grow with the slide. Writes ``nuclei.parquet`` (and
    ``nuclei.geojson``), ``overlay.png`` and, last, ``summary.json`` whose presence with the
    run's config hash marks the slide finished.
    """
    started = time.perf_counter()
    out_dir = Path(plan.out_dir)
    profile = load_stain_profile(config.stain_profile)
    level0_mpp = plan.mpp / plan.level0_scale
    with open_slide(plan.path, mpp=plan.slide_mpp) as slide:
        thumb, thumb_mpp, tissue = find_tissue(slide, config.tissue)
        overlay = OverlayNuclei(
            thumb.shape[:2], level0_scale=thumb_mpp / level0_mpp, outlines=thumb_mpp <= OUTLINE_MAX_MPP
        )

        def read_rgb(row: int, col: int, rows: int, cols: int) -> Any:
            return slide.read(mpp=plan.mpp, row=row, col=col, rows=rows, cols=cols)

        parts = iter_nuclei_parts(
            ProbabilityMap(plan.map_path).array(), config=profile, read_rgb=read_rgb,
            block_size=config.postprocess_block, num_workers=_threads(config),
        )
        positive = 0
        geojson_path = out_dir / "nuclei.geojson" if geojson else None
        with NucleusTableWriter(out_dir / "nuclei.parquet", geojson=geojson_path) as writer:
            for part in parts:
                writer.write(part)
                overlay.add(part)
                positive += int(part["dab_positive"].sum())
    seconds_post = time.perf_counter() - started
    render_overlay(thumb, level0_scale=thumb_mpp / level0_mpp, tissue_mask=tissue, nuclei=overlay,
                   path=out_dir / "overlay.png")
    seconds_write = time.perf_counter() - started - seconds_post
    seconds = {**plan.seconds, "postprocess": round(seconds_post, 3), "write": round(seconds_write, 3)}
    summary = slide_summary(plan, nuclei=writer.rows, positive=positive, seconds=seconds)
    write_json(out_dir / "summary.json", summary)
    return summary


def _threads(config: SegmentConfig) -> int:
    """Dask threads: ``postprocess_threads``, or every core of this node when it is None.

    The task reserves only ``postprocess_cpus`` Ray CPUs so it fits any node, but on a CPU
    machine it mostly runs once inference is over, when the node's cores are idle.
    """
    return config.postprocess_threads or max(1, os.cpu_count() or 1)


def slide_summary(plan: SlidePlan, *, nuclei: int, positive: int, seconds: dict[str, float]) -> dict[str, Any]:
    """The slide-level figures: counts, Ki67 labelling index, density, timings."""
    count = nuclei
    area = plan.tissue_area_mm2
    return {
        "slide": plan.key,
        "path": plan.path,
        "status": "ok",
        "nuclei": count,
        "positive": positive,
        "labelling_index_percent": round(100.0 * positive / count, 3) if count else 0.0,
        "tissue_area_mm2": round(area, 4),
        "nuclei_per_mm2": round(count / area, 2) if area > 0 else 0.0,
        "tiles": len(plan.grid.tiles) if plan.grid else 0,
        "mpp": plan.mpp,
        "model_id": plan.model_id,
        "config_hash": plan.run_hash,
        "nucflow_version": __version__,
        "seconds": seconds,
    }
