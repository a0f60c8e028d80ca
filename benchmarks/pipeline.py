"""The pipeline measured end to end, its memory, its post-processing, and the naive loop.

* :func:`run_pipeline`: :func:`nucflow.segment` on one slide in a fresh child Python process
  (``segment_child.py``, as a user's ``nucflow segment`` runs), with a progress callback
  (tile completion times) and a :class:`MemorySampler` rooted at the child: its local Ray's
  raylet, GCS and workers are the child's descendants, and the benchmark process is left out.
* :func:`postprocess_rate`: megapixels/s of :func:`nucflow.postprocess.nuclei_table` on a
  finished probability map, at a given number of Dask threads.
* :func:`postprocess_versus_reference`: CPU seconds per megapixel of the post-processing and of
  the implementation it replaced (``postprocess_reference.py``), interleaved in one run.
* :func:`naive_loop`: what users write by hand, in one fresh process: read a tile at the
  model's resolution, predict, gate, label, measure, append; :func:`naive_versus_pipeline`
  compares its nuclei with the pipeline's on the same tile cores.
* :func:`noop_rerun`: ``nucflow segment`` (the command, in fresh processes) over a finished
  cohort of small images: nothing to do.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

__all__ = [
    "MemorySampler", "cpu_at", "naive_loop", "naive_versus_pipeline", "noop_rerun", "postprocess_rate",
    "postprocess_versus_reference", "run_pipeline", "steady_rate",
]

CHILD = Path(__file__).with_name("segment_child.py")


class MemorySampler:
    """A process and all its descendants, sampled every ``interval`` s: peak summed RSS, CPU time.

    ``peak`` is the largest summed RSS seen (bytes), ``peak_top`` the biggest processes then;
    :meth:`cpu_seconds` is the user + system CPU time the tree has used so far (the last value
    seen for each process, so processes that exited still count). ``series`` holds one
    ``(time.monotonic(), CPU seconds so far)`` per sample, for :func:`cpu_at`.
    """

    def __init__(self, pid: int, *, interval: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self.peak_top: list[tuple[str, float]] = []
        self.cpu: dict[int, float] = {}
        self.by_name: dict[str, float] = {}
        self.series: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        """Sample now; returns the summed RSS in bytes."""
        seen: list[tuple[int, str]] = []
        with self._lock:
            try:
                children = self.root.children(recursive=True)
            except psutil.NoSuchProcess:  # the root has exited (a zombie until reaped)
                children = []
            for proc in [self.root, *children]:
                try:
                    with proc.oneshot():
                        rss, times, name = proc.memory_info().rss, proc.cpu_times(), proc.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                seen.append((rss, name))
                cpu = times.user + times.system
                # CPU since the last sample goes to what the process is called now (Ray renames
                # a worker after the task it runs).
                self.by_name[name] = self.by_name.get(name, 0.0) + cpu - self.cpu.get(proc.pid, 0.0)
                self.cpu[proc.pid] = cpu
            self.series.append((time.monotonic(), sum(self.cpu.values())))
            total = sum(rss for rss, _ in seen)
            if total > self.peak:
                self.peak, self.peak_processes = total, len(seen)
                self.peak_top = [(name, round(rss / 2**30, 3)) for rss, name in sorted(seen, reverse=True)[:4]]
        return total

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds so far per process name (``/proc/PID/comm``: the driver is ``python``;
        Ray names a worker after the task or actor it runs, ``ray::TileWorker``), each sampling
        interval's CPU counted under the name seen at its end."""
        return {k: round(v, 2) for k, v in sorted(self.by_name.items(), key=lambda kv: -kv[1])}

    def cpu_seconds(self) -> float:
        self.sample()
        return sum(self.cpu.values())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def steady_rate(events: list[tuple[float, int]], *, skip: int) -> float:
    """Tiles/s between the ``skip``-th completion (each actor's first batch) and the last.

    ``events`` are (time, tiles done so far). Skipping every actor's first batch leaves out
    Ray and actor start-up, which :func:`run_pipeline` reports separately.
    """
    if len(events) <= skip + 1:
        skip = 0
    t0, n0 = events[skip] if skip < len(events) else (events[0][0], 0)
    t1, n1 = events[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def cpu_at(series: Sequence[tuple[float, float]], times: Sequence[float]) -> list[float]:
    """CPU seconds at each of ``times``, linearly interpolated in ``series`` of (time, CPU seconds).

    Times outside the series take its first or last value. The sampler reads CPU time every
    few tenths of a second in the benchmark process; progress events come from the child.
    """
    if not series:
        return [float("nan")] * len(times)
    t, cpu = zip(*series, strict=True)
    return [float(v) for v in np.interp(times, t, cpu)]


def _steady_cpu(events: list[tuple[float, int]], cpu: list[float], *, skip: int) -> float:
    """CPU seconds of the whole process tree per tile over the window of :func:`steady_rate`."""
    if len(events) <= skip + 1:
        skip = 0
    tiles = events[-1][1] - events[skip][1]
    return (cpu[-1] - cpu[skip]) / tiles if tiles > 0 else float("nan")


def run_pipeline(
    slide: Path | list[Path], model: Path, out: Path, *, cluster: Any, config: Any, actors: int,
    mpp: float | None = None, overwrite: bool = True,
) -> dict:
    """Segment ``slide`` (or several) with ``model`` into ``out`` in a child process; times, tiles/s and peak memory.

    ``mpp`` is passed to :func:`nucflow.segment` for images without a resolution (PNG);
    ``overwrite=False`` resumes, so a finished ``out`` measures a rerun with nothing to do.
    Tiles, nuclei and tissue area are summed over the slides.

    The child (``segment_child.py``) gets ``config`` and ``cluster`` pickled and starts its
    own local Ray (``RAY_ADDRESS`` is dropped from its environment). ``wall_s`` runs from
    the child's launch to its exit, Python start-up and imports included (``import_s``).

    Raises
    ------
    RuntimeError
        The child failed (with the tail of its output) or the slide did not finish ``ok``.
    """
    with tempfile.TemporaryDirectory(prefix="nucflow-bench-child-") as tmp:
        slides = [str(s) for s in slide] if isinstance(slide, list) else [str(slide)]
        job = {"slides": slides, "out": str(out), "model": str(model), "config": config,
               "cluster_config": cluster, "overwrite": overwrite, "mpp": mpp}
        child, memory, launched, wall = _run_child(job, Path(tmp))
    failed = [s for s in child["slides"] if s["status"] == "failed"]
    if failed:
        raise RuntimeError(f"benchmark slide failed: {failed[0]['error']}")
    summaries = [json.loads((out / s["slide"] / "summary.json").read_text()) for s in child["slides"]]
    summary = summaries[0]
    events = [(float(t), int(n)) for t, n in child["events"]]
    cpu = cpu_at(memory.series, [t for t, _ in events])
    tiles, begun = sum(int(s["tiles"]) for s in summaries), child["segment_started"]
    total_cpu = sum(memory.cpu.values())
    after_first = tiles - events[0][1] if events else 0
    return {
        "slides": len(summaries),
        "statuses": sorted({s["status"] for s in child["slides"]}),
        "tiles": tiles,
        "actors": actors,
        "wall_s": round(wall, 2),
        "import_s": round(child["imported"] - launched, 2),
        "segment_call_s": round(child["segment_ended"] - begun, 2),
        "stage_seconds": {k: round(sum(float(s["seconds"].get(k, 0.0)) for s in summaries), 3)
                          for k in summary["seconds"]},
        "startup_to_first_batch_s": round(events[0][0] - begun, 2) if events else None,
        "inference_span_s": round(events[-1][0] - events[0][0], 2) if events else None,
        "steady_tiles_per_s": round(steady_rate(events, skip=actors), 3) if events else None,
        "end_to_end_tiles_per_s": round(tiles / wall, 3),
        "nuclei": sum(int(s["nuclei"]) for s in summaries),
        "tissue_area_mm2": round(sum(float(s["tissue_area_mm2"]) for s in summaries), 4),
        "peak_rss_gb": round(memory.peak / 2**30, 3),
        "peak_processes": memory.peak_processes,
        "peak_top_processes_gb": memory.peak_top,
        "cpu_s": round(sum(memory.cpu.values()), 1),
        # The driver is "python"; Ray's workers are named after what they last ran.
        "cpu_s_by_process": memory.cpu_by_name(),
        "steady_cpu_s_per_tile": round(_steady_cpu(events, cpu, skip=actors), 4) if events else None,
        # Everything after the first batch (inference, post-processing, writing, Ray) per tile.
        "cpu_s_per_tile_after_first_batch": round((total_cpu - cpu[0]) / after_first, 4)
        if after_first > 0 else None,
        "cpu_s_after_first_batch": round(total_cpu - cpu[0], 2) if events else None,
        "tiles_after_first_batch": after_first,
        "map": str(out / child["slides"][0]["slide"] / "probability.zarr"),
    }


def _run_child(job: dict, tmp: Path) -> tuple[dict, MemorySampler, float, float]:
    """Run ``segment_child.py`` on ``job`` under a :class:`MemorySampler`.

    Returns the child's result record, the sampler, the launch time (``time.monotonic()``)
    and the wall seconds from launch to exit.
    """
    (tmp / "job.pkl").write_bytes(pickle.dumps(job))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, str(CHILD), str(tmp / "job.pkl"), str(tmp / "result.json")]
    with (tmp / "child.log").open("wb") as log:
        launched = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            with MemorySampler(process.pid) as memory:
                code = process.wait()
                wall = time.monotonic() - launched
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if code != 0:
        tail = (tmp / "child.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"benchmark segment child exited with code {code}; its output ends:\n{tail}")
    return json.loads((tmp / "result.json").read_text()), memory, launched, wall


def noop_rerun(images: list[Path], out: Path, *, mpp: float, config: Path | None = None, rounds: int = 3) -> dict:
    """``nucflow segment IMAGES -o OUT --mpp MPP -q`` over a finished cohort: seconds with nothing to do.

    Each call is a fresh ``python -m nucflow`` process, as a user runs it. The first call
    finishes the cohort (it may be finished already: the folder is cached between benchmark
    runs); then ``rounds`` reruns with nothing to do (``wall_s``, ``cpu_s``: medians, from
    launch to exit, the CPU time of the process); then one rerun after ``report.html`` is
    removed, which writes the report again (``rewriting_report_*``), as the first rerun after a
    run does (its statuses change from ok to skipped).
    """
    command = [sys.executable, "-m", "nucflow", "segment", *map(str, images), "-o", str(out), "--mpp", str(mpp), "-q"]
    if config is not None:
        command += ["--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="nf-noop-")  # short: Ray's socket paths
    try:
        prepare = _timed(command, env)
    except RuntimeError:  # cached by an earlier configuration (another model, method or tiling): redo it
        prepare = _timed([*command, "--overwrite"], env)
    reruns = [_timed(command, env) for _ in range(rounds)]
    with open(out / "summary.csv", newline="", encoding="utf-8") as table:
        statuses = sorted({row["status"] for row in csv.DictReader(table)})
    (out / "report.html").unlink()
    rewriting = _timed(command, env)
    return {
        "slides": len(images), "finishing_run_s": round(prepare[0], 2), "rounds": rounds,
        "wall_s": round(float(np.median([w for w, _ in reruns])), 3),
        "cpu_s": round(float(np.median([c for _, c in reruns])), 3),
        "walls_s": [round(w, 3) for w, _ in reruns], "statuses": statuses,
        "rewriting_report_wall_s": round(rewriting[0], 3), "rewriting_report_cpu_s": round(rewriting[1], 3),
    }


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``command`` to its end: its wall seconds and its CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:5])} ... exited with {done.returncode}: {done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def postprocess_rate(map_path: str, *, threads: int, block: int, stain_profile: str) -> dict:
    """Megapixels/s of the blocked post-processing (labels and features, no RGB) of a map."""
    import zarr

    from nucflow.postprocess import load_stain_profile, nuclei_table

    array = zarr.open_array(f"{map_path}/probability", mode="r")
    started = time.perf_counter()
    table = nuclei_table(array, config=load_stain_profile(stain_profile), block_size=block, num_workers=threads)
    seconds = time.perf_counter() - started
    megapixels = array.shape[0] * array.shape[1] / 1e6
    return {"threads": threads, "megapixels": round(megapixels, 2), "seconds": round(seconds, 2),
            "megapixels_per_s": round(megapixels / seconds, 3), "nuclei": int(len(table))}


def postprocess_versus_reference(
    map_path: str, slide: Path, *, stain_profile: str, block: int, rounds: int = 3, window: int = 4096
) -> dict:
    """CPU seconds per megapixel of the blocked post-processing, current and reference, interleaved.

    A ``window`` px square at the centre of a finished map (tissue), its RGB read from the
    slide beforehand; every block of it through the current ``_block_table`` and through
    ``benchmarks/postprocess_reference.py`` (the implementation before issue 13), one thread,
    alternating which goes first, ``rounds`` times each; medians of this thread's CPU time
    (``time.thread_time``), so the figures are per core and other load counts little. Also
    checks the two give the same nuclei, columns and outlines.
    """
    import shapely
    import zarr

    from benchmarks import postprocess_reference as reference
    from nucflow.postprocess import MapGeometry, load_stain_profile, read_rgb_from_array
    from nucflow.postprocess._blocked import _block_table, blocks
    from nucflow.slide import open_slide

    group = zarr.open_group(map_path, mode="r")
    array = group["probability"]
    mpp = float({**group.attrs.asdict(), **array.attrs.asdict()}["mpp"])
    rows, cols = min(array.shape[0], window), min(array.shape[1], window)
    r0, c0 = (array.shape[0] - rows) // 2, (array.shape[1] - cols) // 2
    prob = np.asarray(array[r0 : r0 + rows, c0 : c0 + cols])
    with open_slide(slide) as opened:
        rgb = opened.read(mpp=mpp, row=r0, col=c0, rows=rows, cols=cols)
    config = load_stain_profile(stain_profile)
    geometry, reader = MapGeometry(mpp=mpp), read_rgb_from_array(rgb)
    grid = blocks(prob.shape, block_size=block, halo=config.in_pixels(mpp).halo)
    functions = {"current": _block_table, "reference": reference.block_table}
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    outputs: dict[str, list] = {}
    for i in range(rounds):
        for name in (("current", "reference") if i % 2 == 0 else ("reference", "current")):
            started = time.thread_time()
            parts = [functions[name](prob[b.region[0] : b.region[1], b.region[2] : b.region[3]], block=b,
                                     read_rgb=reader, geometry=geometry, config=config) for b in grid]
            seconds[name].append(time.thread_time() - started)
            outputs[name] = [p for p in parts if p is not None]
    current, ref = outputs["current"], outputs["reference"]
    identical = len(current) == len(ref) and all(
        a[0].keys() == b[0].keys()
        and all(np.array_equal(a[0][k], b[0][k], equal_nan=True) for k in a[0])
        and len(a[1]) == len(b[1])
        and all(shapely.equals_exact(x, y, tolerance=0) for x, y in zip(a[1], b[1], strict=True))
        for a, b in zip(current, ref, strict=True)
    )
    megapixels = prob.size / 1e6
    median = {name: float(np.median(values)) for name, values in seconds.items()}
    return {
        "megapixels": round(megapixels, 2), "blocks": len(grid), "block": block, "rounds": rounds,
        "nuclei": sum(len(p[1]) for p in current),
        "cpu_s": {name: round(v, 3) for name, v in median.items()},
        "megapixels_per_cpu_s": round(megapixels / median["current"], 3),
        "reference_megapixels_per_cpu_s": round(megapixels / median["reference"], 3),
        "speedup": round(median["reference"] / median["current"], 3),
        "identical_to_reference": bool(identical),
    }


def naive_loop(
    slide: Path, model: Path, tiles: list, *, mpp: float, stain_profile: str, columns: str = "table",
    threads: int | None = None,
) -> dict:
    """One fresh process, tile by tile: OpenSlide read, torch forward, stain gate, label, measure, append.

    The same job as the pipeline on ``tiles`` (its grid at the model's resolution ``mpp``, the
    model card's): each context window is read with OpenSlide at level 0 and resized to the
    model's pixels (PIL, bilinear), composited on white past the slide's edges; the model runs
    in float32 under ``no_grad`` with torch's default threads (or ``threads``); the stain
    profile's gate (:func:`nucflow.stain.stain_gate`) and :func:`nucflow.postprocess.label_nuclei`
    (the same labels as nucflow's) run on the core at ``mpp``; then, as a hand-written script
    would with scikit-image: ``columns="table"`` measures what nucflow's table holds
    (``regionprops_table``: centroid, area, perimeter, eccentricity, solidity, mean probability
    and ``rgb2hed`` stain densities, in µm; an outline per nucleus from ``find_contours``, in
    level-0 pixels), appends it and writes the GeoParquet at the end; ``columns="centroids"``
    keeps centroid and area only. Runs in a spawned process so that nothing the benchmark
    process did before (torch thread pools sized by :func:`benchmarks.limits.cpu_options`,
    imported libraries, memory held) bears on it.

    Returns the timings, ``stage_cpu_s_per_tile`` (read, model, gate and labels, measures) and
    ``nuclei_um``: each nucleus' centroid x, y and area (µm, µm²) for
    :func:`naive_versus_pipeline` (not a figure: the caller pops it).
    """
    import multiprocessing

    if columns not in ("table", "centroids"):
        raise ValueError(f"columns must be 'table' or 'centroids', got {columns!r}")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_naive_loop, (slide, model, tiles), {
            "mpp": mpp, "stain_profile": stain_profile, "columns": columns, "threads": threads})


def _naive_loop(
    slide: Path, model: Path, tiles: list, *, mpp: float, stain_profile: str, columns: str, threads: int | None
) -> dict:
    import tempfile

    import geopandas as gpd
    import openslide
    import pandas as pd
    import torch

    from nucflow.models import load_model
    from nucflow.postprocess import label_nuclei, load_stain_profile
    from nucflow.stain import stain_gate

    if threads:
        torch.set_num_threads(threads)
    config = load_stain_profile(stain_profile)
    started, cpu_started = time.perf_counter(), time.process_time()
    net = load_model(model).build()
    handle = openslide.OpenSlide(str(slide))
    scale = mpp / float(handle.properties[openslide.PROPERTY_NAME_MPP_X])  # level-0 px per model px
    parts: list[pd.DataFrame] = []
    stages = dict.fromkeys(("read", "model", "labels", "measures"), 0.0)
    for tile in tiles:
        t0 = time.process_time()
        rgb = _naive_read(handle, tile, scale=scale)
        t1 = time.process_time()
        with torch.no_grad():
            prob = net(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0)[0, 0].numpy()
        t2 = time.process_time()
        m = tile.margin
        core = (slice(m, m + tile.rows), slice(m, m + tile.cols))
        prob, rgb = prob[core], rgb[core]
        if config.stain_gate:
            prob = np.where(stain_gate(rgb, prob, factor=config.stain_gate, threshold=config.threshold), prob, 0.0)
        labels = label_nuclei(prob, mpp=mpp, config=config)
        t3 = time.process_time()
        parts.append(_naive_measures(labels, prob, rgb, tile, mpp=mpp, scale=scale, columns=columns))
        for name, spent in zip(stages, (t1 - t0, t2 - t1, t3 - t2, time.process_time() - t3), strict=True):
            stages[name] += spent
    handle.close()
    table = pd.concat(parts, ignore_index=True)
    if columns == "table":
        with tempfile.TemporaryDirectory() as folder:
            gpd.GeoDataFrame(table, geometry="geometry").to_parquet(Path(folder) / "nuclei.parquet")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"tiles": len(tiles), "columns": columns, "mpp": mpp, "seconds": round(seconds, 2),
            "tiles_per_s": round(len(tiles) / seconds, 3), "cpu_s_per_tile": round(cpu / len(tiles), 4),
            "stage_cpu_s_per_tile": {k: round(v / len(tiles), 4) for k, v in stages.items()},
            "torch_threads": torch.get_num_threads(), "nuclei": len(table),
            "nuclei_um": table[["centroid_x_um", "centroid_y_um", "area_um2"]].to_numpy().tolist()}


def _naive_read(handle: Any, tile: Any, *, scale: float) -> np.ndarray:
    """The tile's context window at the model's resolution, as a script gets it: OpenSlide's
    level 0 around it (1 px more each side), on white past the slide's edges, resized by PIL
    (bilinear) from the window's exact level-0 box (pixel centres as ``nucflow.slide`` puts them)."""
    from PIL import Image

    row, col = tile.read_origin
    x0, y0, side = col * scale, row * scale, tile.size * scale
    left, top = math.floor(x0) - 1, math.floor(y0) - 1
    width, height = math.ceil(x0 + side) + 1 - left, math.ceil(y0 + side) + 1 - top
    rgba = np.asarray(handle.read_region((left, top), 0, (width, height)))
    alpha = rgba[..., 3:].astype(np.uint16)  # premultiplied: transparent past the edge is (0, 0, 0, 0)
    rgb = np.minimum(rgba[..., :3] + (255 - alpha), 255).astype(np.uint8)
    box = (x0 - left, y0 - top, x0 - left + side, y0 - top + side)
    return np.array(Image.fromarray(rgb).resize((tile.size, tile.size), Image.Resampling.BILINEAR, box=box))


def _naive_measures(
    labels: np.ndarray, prob: np.ndarray, rgb: np.ndarray, tile: Any, *, mpp: float, scale: float, columns: str
) -> Any:
    """One tile's rows, the way a script with scikit-image gets them (µm; outlines in level-0 px)."""
    import pandas as pd
    import shapely
    from skimage.color import rgb2hed
    from skimage.measure import find_contours, regionprops_table

    if columns == "centroids":
        props = regionprops_table(labels, properties=("label", "centroid", "area"))
    else:
        hed = rgb2hed(rgb)
        props = regionprops_table(
            labels, intensity_image=np.dstack([prob, hed[..., 0], hed[..., 2]]),
            properties=("label", "centroid", "area", "perimeter", "eccentricity", "solidity", "intensity_mean",
                        "bbox", "image"),
        )
    frame = pd.DataFrame({k: v for k, v in props.items() if k != "image"})
    # Pixel (r, c) of the core covers model pixels [r, r + 1) from the tile's corner: its centre is + 0.5.
    frame["centroid_x_um"] = (frame.pop("centroid-1") + tile.col + 0.5) * mpp
    frame["centroid_y_um"] = (frame.pop("centroid-0") + tile.row + 0.5) * mpp
    frame["area_um2"] = frame.pop("area") * mpp * mpp
    if columns == "centroids":
        return frame
    frame["perimeter_um"] = frame.pop("perimeter") * mpp
    outlines = []
    for image, top, left in zip(props["image"], props["bbox-0"], props["bbox-1"], strict=True):
        contour = max(find_contours(np.pad(image, 1).astype(float), 0.5), key=len)
        xy = contour[:, ::-1] + (left - 1 + tile.col + 0.5, top - 1 + tile.row + 0.5)
        outlines.append(shapely.Polygon(xy * scale))
    frame["geometry"] = outlines
    return frame


def naive_versus_pipeline(
    nuclei_um: Sequence[Sequence[float]], tiles: list, *, mpp: float, table: Path,
    tolerance_um: float = 2.0, edge_um: float = 8.0,
) -> dict:
    """The naive loop's nuclei against the pipeline's on the same tile cores.

    ``nuclei_um`` are the loop's (centroid x, centroid y, area) in µm (:func:`naive_loop`);
    ``table`` is the pipeline's ``nuclei.parquet`` of the same slide, of which the nuclei
    whose centroid lies in one of ``tiles``' cores (at ``mpp``) are compared. A pair matches
    when each is the other's nearest centroid and they are at most ``tolerance_um`` apart.
    ``recall``: the pipeline's nuclei matched; ``precision``: the loop's matched. The loop
    labels each core alone (no halo) and its map is float32 where the pipeline's is bf16,
    stored as uint8, so nuclei on core edges differ by design: ``interior`` repeats the
    counts for nuclei at least ``edge_um`` inside a core. ``area_ratio_median``: the median of
    the loop's area over the pipeline's, matched pairs.
    """
    import pandas as pd
    from scipy.spatial import cKDTree

    cores = np.array([[t.col, t.row, t.col + t.cols, t.row + t.rows] for t in tiles], float) * mpp

    def inside(points: np.ndarray, inset: float) -> np.ndarray:
        x, y = points[:, :1], points[:, 1:2]
        return ((x >= cores[:, 0] + inset) & (x < cores[:, 2] - inset)
                & (y >= cores[:, 1] + inset) & (y < cores[:, 3] - inset)).any(axis=1)

    theirs = pd.read_parquet(table, columns=["centroid_x_um", "centroid_y_um", "area_um2"]).to_numpy(float)
    theirs = theirs[inside(theirs, 0.0)]
    ours = np.asarray(nuclei_um, float).reshape(-1, 3)
    pairs = np.zeros((0, 2), np.intp)
    if len(theirs) and len(ours):
        distance, nearest = cKDTree(theirs[:, :2]).query(ours[:, :2])
        _, back = cKDTree(ours[:, :2]).query(theirs[:, :2])
        mine = np.flatnonzero((distance <= tolerance_um) & (back[nearest] == np.arange(len(ours))))
        pairs = np.column_stack([mine, nearest[mine]])

    def counts(keep_ours: np.ndarray, keep_theirs: np.ndarray) -> dict:
        n_ours, n_theirs = int(keep_ours.sum()), int(keep_theirs.sum())
        if not n_ours or not n_theirs:  # nothing to compare (JSON has no NaN)
            return {"pipeline_nuclei": n_theirs, "naive_nuclei": n_ours, "recall": None, "precision": None, "f1": None}
        recall = int(keep_theirs[pairs[:, 1]].sum()) / n_theirs
        precision = int(keep_ours[pairs[:, 0]].sum()) / n_ours
        f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
        return {"pipeline_nuclei": n_theirs, "naive_nuclei": n_ours, "recall": round(recall, 4),
                "precision": round(precision, 4), "f1": round(f1, 4)}

    everything = counts(np.ones(len(ours), bool), np.ones(len(theirs), bool))
    interior = counts(inside(ours, edge_um), inside(theirs, edge_um))
    gap = np.hypot(*(ours[pairs[:, 0], :2] - theirs[pairs[:, 1], :2]).T) if len(pairs) else np.zeros(0)
    areas = ours[pairs[:, 0], 2] / theirs[pairs[:, 1], 2] if len(pairs) else np.zeros(0)
    return {"tiles": len(tiles), **everything, "matched": len(pairs), "interior": interior,
            "median_distance_um": round(float(np.median(gap)), 3) if len(gap) else None,
            "area_ratio_median": round(float(np.median(areas)), 4) if len(areas) else None,
            "tolerance_um": tolerance_um, "edge_um": edge_um}


def segment_config(*, postprocess_cpus: float | None = None) -> Any:
    """``nucflow/configs/segment.yaml``, optionally with another ``postprocess_cpus``."""
    from nucflow.pipeline.config import load_segment_config

    config = load_segment_config()
    return config if postprocess_cpus is None else replace(config, postprocess_cpus=postprocess_cpus)
