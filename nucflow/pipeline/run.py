"""``segment``: whole slides in, nucleus tables out (the library call behind the CLI)."""

from __future__ import annotations

import csv
import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucflow.errors import PreflightError
from nucflow.methods import parse_method
from nucflow.pipeline.config import SegmentConfig, load_segment_config
from nucflow.pipeline.outputs import FinishedSlide, finished_run, read_summary, record_request, request_key
from nucflow.pipeline.preflight import local_output
from nucflow.storage import output_uri, stage_outputs

if TYPE_CHECKING:  # loaded when a slide has work left (see segment)
    from nucflow.cluster import ClusterConfig
    from nucflow.inference.actors import TileScheduler, WorkItem
    from nucflow.inference.predictors import MethodSpec
    from nucflow.pipeline.plan import SlidePlan

__all__ = ["Progress", "SegmentResult", "SlideResult", "segment"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """A progress report: ``done`` of ``total`` units of ``stage`` ("tiles" or "slides")."""

    stage: str
    done: int
    total: int
    slide: str = ""


@dataclass(frozen=True)
class SlideResult:
    """How one slide ended: ``ok``, ``skipped`` (already finished) or ``failed``."""

    slide: str
    path: str
    status: str
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    error_log: str = ""


@dataclass(frozen=True)
class SegmentResult:
    out: Path
    slides: tuple[SlideResult, ...]

    @property
    def failed(self) -> tuple[SlideResult, ...]:
        return tuple(s for s in self.slides if s.status == "failed")


ProgressCallback = Callable[[Progress], None]

#: Finished tiles are written to a slide's ``done`` grid at most this often (and on completion).
_RECORD_EVERY_S = 1.0


def segment(
    slides: Sequence[str | Path],
    out: str | Path,
    *,
    config: SegmentConfig | None = None,
    method: str | None = None,
    model: str | Path | None = None,
    mpp: float | None = None,
    force_mpp: bool = False,
    overwrite: bool = False,
    geojson: bool | str = False,
    address: str | None = None,
    cluster_config: ClusterConfig | None = None,
    progress: ProgressCallback | None = None,
    roi: str | Path | None = None,
    roi_exclude: Sequence[str] | None = None,
) -> SegmentResult:
    """Segment every nucleus of ``slides`` into ``out/<slide>/``.

    Parameters
    ----------
    slides : paths or globs of slides (any OpenSlide format, PNG/JPEG/TIFF/OME-TIFF).
    out : output folder; each slide gets ``out/<slide>/`` and the run ``out/summary.csv``.
    config : settings (``configs/segment.yaml`` when None); ``method`` and ``model``
        override its fields.
    mpp : level-0 µm/px for slides whose metadata lacks it (overrides metadata, with a
        warning; refused when more than 2x from a slide's metadata unless ``force_mpp``).
    overwrite : redo slides that are already (partly) done instead of resuming.
    geojson : also write ``nuclei.geojson`` for QuPath (``"gz"``: ``nuclei.geojson.gz``).
    address : Ray cluster to join (else ``RAY_ADDRESS``, else a local Ray).
    cluster_config : actors, batch sizes, local Ray settings (``configs/cluster.yaml`` when None).
    progress : called with :class:`Progress` as tiles and slides finish.
    roi : regions of interest (:mod:`nucflow.roi`): a QuPath GeoJSON export or mask image for
        one slide, or a folder of ``<slide stem>.geojson`` (or mask) files; only those regions
        are segmented and every figure is also given per region (``out/regions.csv``).
    roi_exclude : annotation classes or names (globs, any case) whose areas are left out
        (None: :data:`nucflow.roi.DEFAULT_EXCLUDE`).

    Returns
    -------
    SegmentResult
        Per-slide outcome; a failed slide does not stop the others.

    Raises
    ------
    PreflightError
        Before any work starts, listing every problem found (see :mod:`nucflow.pipeline.preflight`).
    """
    config = config or load_segment_config()
    if roi_exclude is None:
        from nucflow.roi import DEFAULT_EXCLUDE  # only for regions: nucflow.roi loads shapely

        roi_exclude = DEFAULT_EXCLUDE if roi is not None else ()
    config = replace(config, method=parse_method(method or config.method), model=str(model) if model else config.model)
    # -o s3://...: maps in the bucket, other outputs staged locally and published (nucflow.storage)
    out_uri = output_uri(out)
    # What this request asks for, hashed as given (no model load): a slide finished by the same
    # request is done. Recorded in each finished slide's summary.json; not for outputs in a bucket.
    key = None if out_uri else request_key(config, mpp=mpp, force_mpp=force_mpp, roi=roi, roi_exclude=roi_exclude)
    if key is not None and not overwrite and roi is None:
        local = local_output(out).resolve()
        finished = finished_run(slides, local, key=key)
        if finished is not None:  # nothing to do: no model, thumbnail, Ray, torch or Dask loaded
            log.info("nothing to run: every slide is finished with this request (nothing loaded)")
            return _finished_result(local, finished)
    try:
        out = stage_outputs(out_uri) if out_uri else local_output(out).resolve()
    except OSError as exc:
        raise PreflightError([str(exc)]) from exc
    results = _segment(slides, out, config=config, mpp=mpp, force_mpp=force_mpp, overwrite=overwrite,
                       geojson=geojson, address=address, cluster_config=cluster_config, progress=progress,
                       roi=roi, roi_exclude=roi_exclude, out_uri=out_uri)
    result = SegmentResult(out, tuple(results))
    if key is not None:
        for s in result.slides:
            if s.status in ("ok", "skipped"):
                record_request(out / s.slide, key)
    _write_run_outputs(result)
    return result


def _segment(
    slides: Sequence[str | Path], out: Path, *, config: SegmentConfig, mpp: float | None, force_mpp: bool,
    overwrite: bool, geojson: bool | str, address: str | None, cluster_config: ClusterConfig | None,
    progress: ProgressCallback | None, roi: str | Path | None, roi_exclude: Sequence[str], out_uri: str | None,
) -> list[SlideResult]:
    """Plan every slide, and run the ones with work left on Ray (see :func:`segment`)."""
    import functools

    from nucflow.cluster import check_shared_path, load_cluster_config, ray_session
    from nucflow.pipeline.image import method_spec
    from nucflow.pipeline.preflight import preflight
    from nucflow.roi import match_rois
    from nucflow.slide import slide_stem

    ready = preflight(slides, out, config=config, mpp=mpp, force_mpp=force_mpp, load_spec=method_spec)
    paths, spec, config = ready.paths, ready.spec, ready.config
    rois = [None] * len(paths) if roi is None else match_rois(roi, [slide_stem(p) for p in paths])
    cluster = cluster_config or load_cluster_config()
    # Slides are planned (thumbnail, tissue, Zarr map) one by one in a thread while the model
    # actors start and predict the tiles of the slides planned before (many small images do not
    # wait for the planning of all), but only once ray.init has returned: it forks Ray's
    # processes, and a fork while the planning thread is inside a multi-threaded OpenBLAS call
    # (numpy's matmul) deadlocks in OpenBLAS's fork handler (seen: the driver hung in
    # blas_thread_shutdown_ under ray.init).
    plans = functools.partial(
        _plan_each, paths, ready.names, out, spec=spec, config=config, mpp=mpp, overwrite=overwrite,
        rois=rois, roi_exclude=tuple(roi_exclude),
    )
    # A rerun whose slides all have results is planned first: when nothing is left to do (every
    # slide finished with this configuration, or failing before any tile), it ends here without
    # starting Ray or the model actors.
    early = list(plans()) if _maybe_finished(out, ready.names, overwrite=overwrite) else None
    if early is not None and not any(p.status == "todo" for p in early):
        log.info("nothing to run: every slide is finished with this configuration (Ray not started)")
        return [_outcome(p) for p in early]
    with ray_session(address, config=cluster) as info:
        feed = _PlanFeed(plans if early is None else functools.partial(iter, early))
        try:
            scheduler = _start_actors(spec, config, cluster)
            try:
                if info.nodes > 1 and cluster.check_shared_output:
                    check_shared_path(out_uri or out, timeout_s=cluster.shared_check_timeout_s)
                return _run(feed, scheduler, config, geojson=geojson, progress=progress)
            finally:
                scheduler.shutdown()
        finally:
            feed.close()


def _finished_result(out: Path, finished: list[FinishedSlide]) -> SegmentResult:
    """The result of a rerun whose slides are all finished with its request (see :func:`segment`)."""
    from nucflow.atomic import remove_partials
    from nucflow.pipeline.failures import clear_error_log

    remove_partials(out)  # a killed run's summary.csv
    for f in finished:  # as planning does for a finished slide
        remove_partials(out / f.key)
        clear_error_log(out / f.key)
    result = SegmentResult(out, tuple(SlideResult(f.key, f.path, "skipped") for f in finished))
    _write_run_outputs(result, summaries={f.key: f.summary for f in finished})
    return result


def _maybe_finished(out: Path, names: Sequence[str], *, overwrite: bool) -> bool:
    """Whether every slide's folder holds a summary: the run may have nothing left to do."""
    return not overwrite and all((out / name / "summary.json").is_file() for name in names)


def _outcome(plan: SlidePlan) -> SlideResult:
    """The result of a slide that needs no work: skipped (finished) or failed (at planning)."""
    if plan.status == "failed":
        return SlideResult(plan.key, plan.path, "failed", error=plan.error, error_log=plan.error_log)
    return SlideResult(plan.key, plan.path, "skipped")


def _plan_each(
    paths: list[Path | str],
    names: list[str],
    out: Path,
    *,
    spec: MethodSpec,
    config: SegmentConfig,
    mpp: float | None,
    overwrite: bool,
    rois: Sequence[Path | None],
    roi_exclude: tuple[str, ...],
) -> Iterator[SlidePlan]:
    """Each slide's plan, in order, with the seconds it took."""
    from nucflow.atomic import remove_partials
    from nucflow.pipeline.plan import plan_slide

    remove_partials(out)  # a killed run's summary.csv
    for path, key, roi in zip(paths, names, rois, strict=True):
        started = time.perf_counter()
        plan = plan_slide(path, key, out, spec=spec, config=config, mpp=mpp, overwrite=overwrite, roi=roi,
                          roi_exclude=roi_exclude)
        yield replace(plan, seconds={"plan": round(time.perf_counter() - started, 3)})


_END = object()


class _PlanFeed:
    """Plans made in a thread, handed over as they come (see :func:`_segment`)."""

    def __init__(self, plans: Callable[[], Iterable[SlidePlan]]) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._ended = False
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._fill, args=(plans,), name="nucflow-planning", daemon=True)
        self._thread.start()

    def _fill(self, plans: Callable[[], Iterable[SlidePlan]]) -> None:
        try:
            for plan in plans():
                self._queue.put(plan)
                if self._stop.is_set():  # the run stopped: plan no further slide
                    break
        except Exception as exc:  # noqa: BLE001 - raised in the driver's thread by take()
            self._queue.put(exc)
        self._queue.put(_END)

    def take(self, *, block: bool) -> list[SlidePlan] | None:
        """The plans made since the last call (``block``: wait for at least one); None after the last."""
        if self._error is not None:
            raise self._error
        if self._ended:
            return None
        taken: list[SlidePlan] = []
        while True:
            try:
                item = self._queue.get(timeout=0.5) if block and not taken else self._queue.get_nowait()
            except queue.Empty:
                if block and not taken:
                    continue  # a short wait at a time, so that signals (Ctrl-C, SIGTERM) get through
                return taken
            if item is _END:
                self._ended = True
                return taken or None
            if isinstance(item, Exception):  # raised after the plans made before it are handed over
                self._error = item
                if not taken:
                    raise item
                return taken
            taken.append(item)

    def close(self) -> None:
        """Stop planning after the current slide, and wait for it (its map written whole)."""
        self._stop.set()
        self._thread.join()


def _start_actors(spec: MethodSpec, config: SegmentConfig, cluster: ClusterConfig) -> TileScheduler:
    """The model actors, starting (their processes load the model while the driver plans)."""
    import ray

    from nucflow.inference.actors import TileScheduler, actor_options_for_cluster

    options = actor_options_for_cluster(
        ray.cluster_resources(), cluster=cluster, amp=config.inference.amp, channels_last=config.inference.channels_last
    )
    return TileScheduler(ray.put(spec), options, max_retries=config.inference.max_retries)


def _run(
    feed: _PlanFeed,
    scheduler: TileScheduler,
    config: SegmentConfig,
    *,
    geojson: bool | str,
    progress: ProgressCallback | None,
) -> list[SlideResult]:
    """Predict each slide's tiles as its plan comes, then wait for the finishing tasks."""
    # Model actors on the CPU hold every core: a slide's post-processing that follows its tiles
    # then runs on one Dask thread, a second would only compete with them (see finish_slide).
    beside_model = 1 if scheduler.options.device == "cpu" else None
    tracker = _Tracker(config, geojson=geojson, progress=progress, threads_while_predicting=beside_model)
    order: list[str] = []
    outcome: dict[str, SlideResult] = {}

    def more(block: bool) -> list[WorkItem] | None:
        plans = feed.take(block=block)
        if plans is None:
            return None
        items = []
        for p in plans:
            order.append(p.key)
            if p.status != "todo":
                outcome[p.key] = _outcome(p)
                continue
            tracker.add(p)
            items += _work_items(p, scheduler.options.batch_size)
        return items

    try:
        scheduler.run([], on_done=tracker.tiles_done, on_error=tracker.failed, more=more)
    finally:
        tracker.record_done()
    scheduler.shutdown()  # free the actors' slots and memory for the finishing tasks
    outcome.update(tracker.finish())
    return [outcome[key] for key in order]


def _work_items(plan: SlidePlan, batch_size: int) -> list[WorkItem]:
    from nucflow.inference.actors import WorkItem

    assert plan.grid is not None
    tiles = [plan.grid.tiles[i] for i in plan.todo]
    return [
        WorkItem(plan.key, plan.path, plan.mpp_override, plan.map_path, plan.mpp, batch, plan.params)
        for batch in (tuple(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size))
    ]


class _Tracker:
    """Counts tiles to completion per slide and reports progress; finished tiles go to the
    slides' ``done`` grids through a :class:`DoneRecorder`, and each slide's finishing task runs
    in a :class:`FinishingQueue`, started with the run so post-processing overlaps inference.
    A slide's inference time goes into its map's metadata with its last tiles; its finishing
    task writes ``summary.json``, once, with it."""

    def __init__(
        self, config: SegmentConfig, *, geojson: bool | str, progress: ProgressCallback | None,
        threads_while_predicting: int | None = None,
    ) -> None:
        from nucflow.inference.store import DoneRecorder
        from nucflow.pipeline.finishing import FinishingQueue

        self.plans: dict[str, SlidePlan] = {}
        self.remaining: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.errors: dict[str, tuple[str, str]] = {}  # slide -> (error line, error log)
        self.total, self.done = 0, 0
        self.progress = progress
        self.recorder = DoneRecorder({}, every_s=_RECORD_EVERY_S)
        self.queue = FinishingQueue([], config, geojson=geojson, threads_while_predicting=threads_while_predicting)

    def add(self, plan: SlidePlan) -> None:
        """A slide with work left, as its plan comes: its tiles counted, its finishing task queued."""
        key = plan.key
        self.plans[key], self.remaining[key], self.started[key] = plan, len(plan.todo), time.perf_counter()
        self.total += len(plan.todo)
        self.recorder.watch(key, plan.map_path, plan.grid.tiles if plan.grid is not None else ())
        self.queue.add(plan)

    def tiles_done(self, item: WorkItem, indices: tuple[int, ...]) -> None:
        key = item.slide_key
        self.recorder.add(key, indices)
        self.remaining[key] -= len(indices)
        self.done += len(indices)
        self._report("tiles", self.done, self.total, key)
        if self.remaining[key] == 0 and key not in self.errors:
            self.recorder.finished(key, time.perf_counter() - self.started[key])
        elif self.recorder.due():
            self.recorder.flush()
        self.queue.pump()

    def record_done(self) -> None:
        """Write every finished tile to its ``done`` grid (also when the run stops for any reason)."""
        self.recorder.flush()

    def failed(self, item: WorkItem, exc: BaseException) -> None:
        key = item.slide_key
        if key not in self.errors:
            from nucflow.pipeline.failures import record_failure

            plan = self.plans[key]
            self.errors[key] = record_failure(plan.out_dir, plan.path, exc, stage="inference")
            log.info("slide %s failed: %s", key, self.errors[key][0])  # the caller reports it, once
            self.queue.cancel(key)
        self.done += len(item.tiles)
        self._report("tiles", self.done, self.total, key)

    def finish(self) -> dict[str, SlideResult]:
        """Wait for every finishing task (starting the ones still waiting); the outcomes."""
        tasks = self.queue.wait_all()
        results = {
            k: SlideResult(k, self.plans[k].path, "failed", error=line, error_log=log_path)
            for k, (line, log_path) in self.errors.items()
        }
        for n, (key, ref) in enumerate(tasks.items(), start=1):
            results[key] = self._collect(key, ref)
            self._report("slides", n, len(tasks), key)
        return results

    def _collect(self, key: str, ref: Any) -> SlideResult:
        import ray

        from nucflow.pipeline.failures import record_failure

        path = self.plans[key].path
        try:
            summary = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the task raised, or its worker died
            line, log_path = record_failure(self.plans[key].out_dir, path, exc, stage="post-processing")
            return SlideResult(key, path, "failed", error=line, error_log=log_path)
        if summary["nuclei"] == 0:
            log.warning("slide %s: no nuclei found (no tissue or an empty slide?)", key)
        return SlideResult(key, path, "ok", summary=summary)

    def _report(self, stage: str, done: int, total: int, slide: str) -> None:
        if self.progress is not None:
            self.progress(Progress(stage, done, total, slide))


_CSV_FIELDS = (
    "slide", "path", "status", "error", "error_log", "nuclei", "positive", "labelling_index_percent",
    "hotspot_labelling_index_percent", "h_score", "tissue_area_mm2", "nuclei_per_mm2", "tiles", "seconds_total",
)


def _write_run_outputs(result: SegmentResult, *, summaries: dict[str, dict[str, Any]] | None = None) -> None:
    """``summary.csv``, ``report.html`` and ``regions.csv`` of the run.

    When a rerun's ``summary.csv`` comes out the same as the one there (the same slides, statuses
    and figures) and ``report.html`` was written after it, the report is left as it is: it would
    say the same (a rerun with nothing to do then writes nothing).
    """
    from nucflow.atomic import write_text

    out = result.out
    text = _run_summary(result, summaries or {})
    table, report = out / "summary.csv", out / "report.html"
    try:
        with open(table, newline="") as written:  # as written: csv ends its lines with \r\n
            same = written.read() == text and report.stat().st_mtime_ns >= table.stat().st_mtime_ns
    except (OSError, UnicodeDecodeError):
        same = False
    if same:
        return
    write_text(table, text)
    from nucflow.report import slides_of_folder, write_region_table, write_report

    report_slides = slides_of_folder(out, result.slides)
    write_report(report, report_slides)
    write_region_table(out / "regions.csv", report_slides)


def _run_summary(result: SegmentResult, summaries: dict[str, dict[str, Any]]) -> str:
    """``summary.csv``: one row per slide of this run (finished ones from their summary.json,
    or from ``summaries`` when given)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for s in result.slides:
        summary = s.summary
        if s.status == "skipped":
            summary = summaries.get(s.slide) or read_summary(result.out / s.slide) or {}
        seconds = sum(summary.get("seconds", {}).values())
        writer.writerow({**summary, "slide": s.slide, "path": s.path, "status": s.status, "error": s.error,
                         "error_log": s.error_log, "seconds_total": round(seconds, 3) if summary else ""})
    return buffer.getvalue()
