"""Planning a run: which slides, where their outputs go, and which tiles are still to do."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scipy import ndimage as ndi

from nucflow import __version__
from nucflow.atomic import remove_partials
from nucflow.config import config_hash, to_dict
from nucflow.errors import InputError, NucflowError, SlideError
from nucflow.inference.predictors import MethodSpec
from nucflow.inference.store import MapMetadata, create_map, open_map
from nucflow.pipeline.config import SegmentConfig
from nucflow.pipeline.failures import clear_error_log, error_line, record_failure
from nucflow.pipeline.image import (
    find_tissue,
    fit_params,
    interior_markers,
    mask_shrink_um,
    postprocess_profile,
    work_grid,
)
from nucflow.pipeline.outputs import (  # re-exported: the planning's names for them
    expand_slides,
    map_location,
    output_names,
    recorded_identity,
    same_slide,
    slide_identity,
)
from nucflow.roi import DEFAULT_EXCLUDE, Regions, load_regions
from nucflow.slide import TileGrid, open_slide
from nucflow.storage import is_uri, unpublish

__all__ = [
    "SlidePlan", "expand_slides", "map_location", "output_names", "plan_slide", "recorded_identity", "slide_identity",
    "slide_regions",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlidePlan:
    """One slide's work: its output folder, tissue, tile grid, and tiles still to do.

    ``status`` is ``"todo"`` (tiles or post-processing remain), ``"done"`` (finished with this
    configuration; skipped) or ``"failed"`` (``error`` says why).
    """

    key: str
    path: str
    out_dir: str
    status: str
    error: str = ""
    error_log: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    #: ``--mpp`` as given (None: the slide's metadata); the map records the resolution used.
    mpp_override: float | None = None
    mpp: float = 0.0
    level0_scale: float = 1.0
    grid: TileGrid | None = None
    todo: tuple[int, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    tissue_area_mm2: float = 0.0
    thumbnail_mpp: float = 0.0
    model_id: str = ""
    map_hash: str = ""
    run_hash: str = ""
    mask_shrink_um: float = 0.0
    interior_markers: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    #: The slide's scanned area (x, y, width, height; level-0 px) where its format records one.
    bounds: tuple[int, int, int, int] | None = None
    #: Its region-of-interest file (:mod:`nucflow.roi`), and the annotation classes excluded.
    roi: str | None = None
    roi_exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    @property
    def qupath_offset(self) -> tuple[int, int]:
        """Level-0 (x, y) of QuPath's origin: GeoJSON coordinates are level-0 minus this."""
        return (self.bounds[0], self.bounds[1]) if self.bounds else (0, 0)

    @property
    def map_path(self) -> str:
        """The Zarr map: in the output folder, or in the bucket itself for outputs there."""
        return map_location(self.out_dir)


class OutputFolderError(InputError):
    """The output folder holds results this run must not reuse (another slide, model or tiling)."""


def plan_slide(
    path: Path | str, key: str, out: Path, *, spec: MethodSpec, config: SegmentConfig, mpp: float | None,
    overwrite: bool,
    roi: Path | None = None, roi_exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
) -> SlidePlan:
    """Open a slide, find its tissue and tiles, and reconcile with what ``out`` already holds.

    Errors that concern only this slide come back as a ``"failed"`` plan, so the others go on.
    """
    out_dir = out / key
    try:
        return _plan(path, key, out_dir, spec=spec, config=config, mpp=mpp, overwrite=overwrite,
                     roi=roi, roi_exclude=roi_exclude)
    except OutputFolderError as exc:  # the folder's results stay as they are: no log written into it
        return SlidePlan(key, str(path), str(out_dir), "failed", error=error_line(exc))
    except NucflowError as exc:
        if not isinstance(exc, SlideError | InputError):
            raise
        line, log_path = record_failure(out_dir, str(path), exc)
        return SlidePlan(key, str(path), str(out_dir), "failed", error=line, error_log=log_path)
    except (OSError, ValueError) as exc:  # the output folder or an earlier map: this slide's own trouble
        line, log_path = record_failure(out_dir, str(path), exc)
        return SlidePlan(key, str(path), str(out_dir), "failed", error=line, error_log=log_path)


def _plan(
    path: Path | str, key: str, out_dir: Path, *, spec: MethodSpec, config: SegmentConfig, mpp: float | None,
    overwrite: bool,
    roi: Path | None = None, roi_exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
) -> SlidePlan:
    identity = slide_identity(path)
    with open_slide(path, mpp=mpp) as slide:
        thumb, thumb_mpp, tissue = find_tissue(slide, config.tissue)
        shape = slide.shape_at(spec.mpp)
        slide_mpp = slide.mpp
        level0_size = slide.size
        bounds = slide.bounds
    shrink, interior = mask_shrink_um(spec), interior_markers(spec)
    profile = postprocess_profile(config, shrink_um=shrink, interior=interior)  # as it will run
    roi_hash: list[Any] = []
    planned = area_mask = tissue
    if roi is not None:  # the regions' tissue, planned with a nucleus' reach around it so edge nuclei are whole
        regions = slide_regions(roi, roi_exclude, size=level0_size, offset=(bounds[0], bounds[1]) if bounds else (0, 0))
        in_roi = tissue & (regions.label_grid(tissue.shape, thumb_mpp / slide_mpp) >= 0)
        reach = profile.max_diameter_um / thumb_mpp + 1.0
        planned = tissue & (ndi.distance_transform_edt(~in_roi) <= reach) if in_roi.any() else in_roi
        area_mask = in_roi
        roi_hash = [regions.digest, list(roi_exclude)]
    grid = work_grid(shape, spec, config, planned)
    params = fit_params(spec, thumb, tissue, profile)
    size, margin = grid.core + 2 * grid.margin, grid.margin
    map_hash = config_hash(spec.model_id, spec.mpp, spec.sigma, size, margin, to_dict(config.tissue), params, mpp,
                           *([spec.tta] if spec.tta != "none" else []))
    # The post-processing as it will run (the profile file's contents, not just its name or path,
    # plus what the card adds): editing a profile re-finishes the slides it made.
    run_hash = config_hash(map_hash, to_dict(config), to_dict(profile), __version__, *roi_hash)
    plan = SlidePlan(
        key, str(path), str(out_dir), "todo", mpp_override=mpp, mpp=spec.mpp, level0_scale=spec.mpp / slide_mpp,
        grid=grid, params=params, tissue_area_mm2=float(area_mask.sum()) * (thumb_mpp / 1000.0) ** 2,
        thumbnail_mpp=thumb_mpp, model_id=spec.model_id, map_hash=map_hash, run_hash=run_hash,
        mask_shrink_um=shrink, interior_markers=interior, identity=identity, bounds=bounds,
        roi=None if roi is None else str(roi), roi_exclude=tuple(roi_exclude),
    )
    return _reconcile(plan, slide_mpp=slide_mpp, overwrite=overwrite, thumbnail=(thumb, thumb_mpp, tissue))


def slide_regions(
    roi: str | Path, exclude: tuple[str, ...], *, size: tuple[int, int], offset: tuple[int, int]
) -> Regions:
    """A slide's regions of interest (QuPath coordinates shifted by its ``offset``), checked to lie on
    the slide of level-0 ``size`` (rows, cols)."""
    regions = load_regions(roi, exclude=exclude, offset=offset, slide_size=(size[1], size[0]))
    regions.check_inside(size[1], size[0])
    return regions


def _reconcile(
    plan: SlidePlan, *, slide_mpp: float, overwrite: bool, thumbnail: tuple[Any, float, Any] | None = None
) -> SlidePlan:
    out_dir = Path(plan.out_dir)
    if overwrite:
        unpublish(out_dir, recursive=True)  # outputs in a bucket: the slide's objects there
    if overwrite and out_dir.exists():
        shutil.rmtree(out_dir)
    recorded = recorded_identity(out_dir) if out_dir.is_dir() else None
    if recorded is not None and not same_slide(recorded, plan.identity):
        raise OutputFolderError(
            f"{out_dir} holds results of another slide ({recorded.get('path')}), not of {plan.path}; "
            "pass --overwrite to replace them, or choose another -o"
        )
    remove_partials(out_dir)  # left by a killed or failed run of this slide; never results
    clear_error_log(out_dir)
    if _finished_with(out_dir, plan.run_hash):
        return replace(plan, status="done")
    existing = open_map(plan.map_path)
    if existing is not None and existing.metadata.map_hash == plan.map_hash:
        done = existing.done_chunks()
        assert plan.grid is not None
        return replace(plan, todo=tuple(t.index for t in plan.grid.tiles if t.chunk not in done))
    if existing is not None or (out_dir / "summary.json").exists():
        raise OutputFolderError(
            f"{out_dir} holds results of slide {plan.path} made with another model, method or tiling; "
            "pass --overwrite to redo it, or choose another output folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    assert plan.grid is not None
    # With the tiles' pixels (rgb), thumbnail and tissue beside the map for the finishing task, unless
    # the map is in a bucket (three times its bytes through the network).
    local = not is_uri(plan.map_path)
    created = create_map(plan.map_path, shape=plan.grid.shape, core=plan.grid.core,
                         attrs=_map_metadata(plan, slide_mpp), rgb=local)
    if local and thumbnail is not None:
        created.write_thumbnail(*thumbnail)
    return replace(plan, todo=tuple(t.index for t in plan.grid.tiles))


def _map_metadata(plan: SlidePlan, slide_mpp: float) -> MapMetadata:
    assert plan.grid is not None
    return MapMetadata(
        mpp=plan.mpp,
        slide_mpp=slide_mpp,
        level0_scale=plan.level0_scale,
        # QuPath shows slides with openslide.bounds-* cropped to them: its (0, 0) is this level-0 (x, y)
        slide_bounds=plan.bounds,
        qupath_offset=plan.qupath_offset,
        slide_path=plan.path,
        slide_identity=plan.identity,
        model_id=plan.model_id,
        map_hash=plan.map_hash,
        tile_size=plan.grid.tiles[0].size if plan.grid.tiles else None,
        tile_core=plan.grid.core,
        tile_margin=plan.grid.margin,
        nucflow_version=__version__,
    )


def _finished_with(out_dir: Path, run_hash: str) -> bool:
    summary = out_dir / "summary.json"
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("config_hash") == run_hash
    except (OSError, json.JSONDecodeError):
        return False
