"""Run nucflow's benchmark suite and write ``results.json`` and ``RESULTS.md``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py --out benchmarks/

Every figure is measured in this one run next to its reference, so ratios hold on a busy
machine: read limit, compute limit, pipeline tiles/s and efficiency (against the issue's
min(read, compute) and against the shared-core ceiling), post-processing megapixels/s, peak
memory at 1x and 4x slide area, 1 vs 2 model actors, the naive loop and the speed-up over it
(headline on the 4x slide), seconds per mm² of tissue, and the CPU inference options. Each
pipeline run is a fresh child process, as ``nucflow segment`` would be. Slides and
the benchmark model are cached in ``--cache`` between runs. ``--smoke`` runs every section
on a tiny slide in seconds (the test suite does that).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import fixtures, limits, pipeline  # noqa: E402
from benchmarks.report import write_report  # noqa: E402

__all__ = ["main", "shared_core_limit"]

DATA = ROOT.parent / "shared" / "data"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="folder for results.json, RESULTS.md")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "nucflow-bench-cache",
                        help="slides, model and pipeline outputs (reused between runs)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared real data folder")
    parser.add_argument("--side", type=int, default=16,
                        help="tissue side of the 1x slide in 512 px tile cores (16: about 17 mm² at 1x, 67 mm² at 4x)")
    parser.add_argument("--naive-tiles", type=int, default=32, help="tiles the naive loop runs (evenly spaced)")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per compute-limit configuration")
    parser.add_argument("--warm-steps", type=int, default=200, help="warm-start steps of the benchmark model")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its first call takes minutes)")
    parser.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    parser.add_argument("--model", type=Path, default=None,
                        help="the model to benchmark (default: the bundled model)")
    parser.add_argument("--smoke", action="store_true", help="tiny slide and short timings: checks the suite runs")
    return parser.parse_args(argv)


def _smoke(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "side": 1, "naive_tiles": 2, "seconds": 0.3, "warm_steps": 2,
                                 "no_compile": True, "no_onnx": True})


class Run:
    """One benchmark run: its settings, its fixtures and the results gathered so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cores = os.cpu_count() or 1
        self.results: dict[str, Any] = {"loadavg": {"start": _load()}, "section_seconds": {}}
        self._last = time.perf_counter()

    def section(self, name: str, value: Any = None) -> Any:
        """Record a section's result, the load average after it and the seconds it took."""
        now = time.perf_counter()
        if value is not None:
            self.results[name] = value
        self.results["loadavg"][name] = _load()
        self.args.out.mkdir(parents=True, exist_ok=True)
        (self.args.out / "results.partial.json").write_text(json.dumps(self.results, indent=2) + "\n")
        self.results["section_seconds"][name] = round(now - self._last, 1)
        self._last = now
        return value


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _fixtures(run: Run) -> None:
    from nucflow.inference import auto_tile_size
    from nucflow.models import load_model

    args, side = run.args, run.args.side * 512
    args.cache.mkdir(parents=True, exist_ok=True)
    # The 1x tissue is the top-left quarter of the 4x tissue (the field is mirrored from its origin).
    run.base = fixtures.bench_slide(args.cache / f"ihc-{side}.svs", args.data, rows=side, cols=side)
    run.big = fixtures.bench_slide(args.cache / f"ihc-{2 * side}.svs", args.data, rows=2 * side, cols=2 * side)
    crop = fixtures.real_ihc_field(args.data, rows=min(side, 1024), cols=min(side, 1024))
    run.model, about = fixtures.benchmark_model(args.cache, crop, steps=args.warm_steps, model=args.model)
    run.section("fixtures")
    card = load_model(run.model).card
    run.config = pipeline.segment_config()
    if run.config.stain_profile is None:  # the model card's, as segment resolves it
        run.config = replace(run.config, stain_profile=card.stain_profile)
    run.tile = run.config.inference.tile_size or auto_tile_size(card.input_multiple, margin=run.config.inference.margin)
    run.mpp = card.mpp
    run.tiles = _grid(run.base.path, run)
    run.tiles_4x = _grid(run.big.path, run)
    params = sum(v.numel() for v in load_model(run.model).state_dict.values())
    run.results["model"] = {**about, "parameters": int(params), "tile_size": run.tile, "mpp": run.mpp,
                            "model_id": card.model_id}
    run.results["slide"] = {
        "source": "DeepLIIF Ki67 regions ROI_1/7/127 (real pixels), 40x downscaled to 0.5 µm/px and mirrored",
        "rows": run.base.rows, "cols": run.base.cols, "mpp": run.base.mpp, "tiles": len(run.tiles),
        "rows_4x": run.big.rows, "cols_4x": run.big.cols, "tiles_4x": len(run.tiles_4x),
    }


def _grid(path: Path, run: Run) -> list:
    from nucflow.slide import open_slide, tile_grid, tissue_mask

    tissue_config = run.config.tissue
    with open_slide(path) as slide:
        thumb, thumb_mpp = slide.thumbnail(max_size=tissue_config.thumbnail_size)
        shape = slide.shape_at(run.mpp)
    tissue = tissue_mask(thumb, mpp=thumb_mpp, min_saturation=tissue_config.min_saturation,
                         max_luminance=tissue_config.max_luminance, min_area_um2=tissue_config.min_area_um2)
    grid = tile_grid(shape, tile_size=run.tile, margin=run.config.inference.margin, tissue=tissue)
    return list(grid.tiles)


def _limits(run: Run) -> None:
    args = run.args
    run.section("cpu_options", limits.cpu_options(
        run.model, size=run.tile, batch=2, rounds=1 if args.smoke else 3, calls=1 if args.smoke else 3,
        compile_model=not args.no_compile, onnx=not args.no_onnx,
    ))
    run.section("read_limit", limits.read_limit(run.base.path, run.tiles, mpp=run.mpp, threads=run.cores))
    batches = (1,) if args.smoke else (1, 2, 4)
    options = {"amp": run.config.inference.amp, "channels_last": run.config.inference.channels_last}
    run.section("compute_limit", limits.compute_limit(
        run.model, options=options, size=run.tile, cores=run.cores, batches=batches, seconds=args.seconds,
        one_layout=args.smoke,
    ))


def _pipelines(run: Run) -> None:
    from nucflow.cluster import load_cluster_config

    runs = run.args.cache / "runs"
    default = load_cluster_config()
    actors = max(1, run.cores // default.cpus_per_actor)
    base = run.section("pipeline", pipeline.run_pipeline(
        run.base.path, run.model, runs / "base", cluster=default, config=run.config, actors=actors
    ))
    block, profile = run.config.postprocess_block, run.config.stain_profile
    run.section("postprocess_standalone", [
        pipeline.postprocess_rate(base["map"], threads=n, block=block, stain_profile=profile)
        for n in sorted({run.cores} if run.args.smoke else {1, run.cores})
    ])
    run.section("postprocess_versus_reference", pipeline.postprocess_versus_reference(
        base["map"], run.base.path, stain_profile=profile, block=block, rounds=1 if run.args.smoke else 3,
    ))
    base["cpus_per_actor"] = default.cpus_per_actor
    if not run.args.smoke:  # the smoke run skips the second layout: the same code as the first
        other = load_cluster_config(cpus_per_actor=run.cores if default.cpus_per_actor == 1 else 1)
        other_actors = max(1, run.cores // other.cpus_per_actor)
        run.section("pipeline_other_layout", pipeline.run_pipeline(
            run.base.path, run.model, runs / "layout", cluster=other, config=run.config, actors=other_actors
        ))
        run.results["pipeline_other_layout"]["cpus_per_actor"] = other.cpus_per_actor
    run.section("pipeline_4x", pipeline.run_pipeline(
        run.big.path, run.model, runs / "big", cluster=default, config=run.config, actors=actors
    ))


def _small_images(run: Run) -> None:
    """The 1x slide's tissue as a folder of 512 px tiles and as one image; then the no-op rerun
    (:func:`_noop_rerun`).

    ``--side`` x ``--side`` PNG tiles of 512 x 512 px (256 at the default 16) holding exactly
    the 1x slide's tissue field, in one ``segment`` call, against the same pixels as one PNG
    (the issue's "one large slide of the same total area": the same tiles to predict, decoded
    the same way) and against the 1x slide's run (``pipeline``), which has a glass border
    around that field (31 more tiles at ``--side 4``).
    """
    from nucflow.cluster import load_cluster_config

    args = run.args
    tiles = fixtures.tile_folder(args.cache / f"tiles-{args.side}", args.data, rows=args.side, cols=args.side)
    whole = _one_image(tiles, args.cache / f"tiles-{args.side}-as-one.png", side=args.side)
    cluster = load_cluster_config()
    common = {"cluster": cluster, "config": run.config, "actors": max(1, run.cores // cluster.cpus_per_actor),
              "mpp": run.base.mpp}
    runs = args.cache / "runs"
    run.section("small_images_folder", pipeline.run_pipeline(tiles, run.model, runs / "tiles", **common))
    run.section("small_images_as_one_image", pipeline.run_pipeline(whole, run.model, runs / "tiles-as-one", **common))
    _noop_rerun(run)


def _one_image(tiles: list[Path], path: Path, *, side: int) -> Path:
    """The ``side`` x ``side`` tiles (``tile_<row>_<col>.png``, row-major) as one PNG (cached)."""
    if path.is_file():
        return path
    import numpy as np
    from skimage.io import imread, imsave

    image = np.concatenate([np.concatenate([imread(tiles[r * side + c])[..., :3] for c in range(side)], axis=1)
                            for r in range(side)], axis=0)
    tmp = path.with_name(f".{path.name}.partial.png")
    imsave(tmp, image, check_contrast=False)
    tmp.replace(path)
    return path


#: The no-op rerun's cohort: NOOP_SIDE x NOOP_SIDE images of NOOP_PX px (100 of 256 px).
NOOP_SIDE, NOOP_PX = 10, 256


def _noop_rerun(run: Run) -> None:
    """``nucflow segment`` over a finished cohort of 100 small images (4 in a smoke run): nothing to do.

    The images are 256 px squares of the real IHC field at 0.5 µm/px (128 µm: one model tile
    each at 0.25 µm/px); the default settings but for ``tissue.min_area_um2`` (2000 µm², since
    a whole image is 16,384 µm²). The cohort is finished by the first call and cached.
    """
    args = run.args
    side = 2 if args.smoke else NOOP_SIDE
    images = fixtures.tile_folder(args.cache / f"noop-{side}x{side}", args.data, rows=side, cols=side, side=NOOP_PX)
    config = args.cache / "noop-segment.yaml"
    config.write_text("tissue:\n  min_area_um2: 2000\n")
    run.section("noop_rerun", pipeline.noop_rerun(images, args.cache / "runs" / f"noop-{side}x{side}",
                                                  mpp=run.base.mpp, config=config, rounds=1 if args.smoke else 3))


def _naive(run: Run) -> None:
    """The naive loop on evenly spaced tiles of each slide (the middle one of each ``len / n`` in the
    grid's order): the 4x one is the headline's reference.

    The loop does the pipeline's job on the pipeline's tiles (the model's resolution, the same
    tile grid, stain gate and labels) and measures the same columns as nucflow's table; its
    nuclei are compared with the pipeline tables' on the same tile cores
    (``naive_versus_pipeline``). Each slide's loop runs again with one torch thread: torch
    takes every core by default, and on a shared machine its OpenMP threads spin while they
    wait for each other, so the model's CPU per tile then follows the other users' load (see
    the README). The 4x slide also gets the loop that keeps centroid and area only, the least
    a script can do.
    """
    sections = (("naive", run.base, run.tiles, "table", None), ("naive_1_thread", run.base, run.tiles, "table", 1),
                ("naive_4x", run.big, run.tiles_4x, "table", None),
                ("naive_4x_1_thread", run.big, run.tiles_4x, "table", 1),
                ("naive_4x_centroids", run.big, run.tiles_4x, "centroids", None))
    compared = {"naive": ("1x", "pipeline"), "naive_4x": ("4x", "pipeline_4x")}
    versus = {}
    for key, slide, tiles, columns, threads in sections:
        n = min(run.args.naive_tiles, len(tiles))
        step = len(tiles) / n
        subset = [tiles[int((i + 0.5) * step)] for i in range(n)]  # the middle of each stretch of the grid
        result = pipeline.naive_loop(slide.path, run.model, subset, mpp=run.mpp, stain_profile=run.config.stain_profile,
                                     columns=columns, threads=threads)
        nuclei = result.pop("nuclei_um")
        if key in compared:
            name, reference = compared[key]
            table = Path(run.results[reference]["map"]).with_name("nuclei.parquet")
            versus[name] = pipeline.naive_versus_pipeline(nuclei, subset, mpp=run.mpp, table=table)
        run.section(key, result)
    run.section("naive_versus_pipeline", versus)


def _summarise(run: Run) -> None:
    """The headline figures and the targets, from the sections measured above."""
    r = run.results
    p, p4 = r["pipeline"], r["pipeline_4x"]
    read, compute = r["read_limit"]["tiles_per_s"], r["compute_limit"]["tiles_per_s"]
    limit = min(read, compute)
    core = run.tile - 2 * run.config.inference.margin
    post_s = p["stage_seconds"].get("postprocess", float("nan"))
    map_mp = _map_megapixels(p["map"])
    area = p["tissue_area_mm2"]
    r["efficiency"] = round(p["steady_tiles_per_s"] / limit, 3)
    r["shared_core_limit_tiles_per_s"] = round(shared_core_limit(read, compute), 3)
    r["efficiency_shared_cores"] = round(p["steady_tiles_per_s"] / shared_core_limit(read, compute), 3)
    r["efficiency_end_to_end"] = round(p["end_to_end_tiles_per_s"] / limit, 3)
    r["efficiency_cpu_time"] = _cpu_time(r)["efficiency"]
    r["speedup_vs_naive"] = round(p4["end_to_end_tiles_per_s"] / r["naive_4x"]["tiles_per_s"], 3)
    r["speedup_vs_naive_steady"] = round(p4["steady_tiles_per_s"] / r["naive_4x"]["tiles_per_s"], 3)
    r["speedup_vs_naive_1x"] = round(p["end_to_end_tiles_per_s"] / r["naive"]["tiles_per_s"], 3)
    r["speedup_vs_naive_centroids"] = round(p4["end_to_end_tiles_per_s"] / r["naive_4x_centroids"]["tiles_per_s"], 3)
    r["speedup_vs_naive_1_thread"] = round(p4["end_to_end_tiles_per_s"] / r["naive_4x_1_thread"]["tiles_per_s"], 3)
    r["speedup_vs_naive_1_thread_1x"] = round(p["end_to_end_tiles_per_s"] / r["naive_1_thread"]["tiles_per_s"], 3)
    # The loop does the pipeline's job: nuclei well inside the compared cores must be the same ones.
    r["naive_same_nuclei"] = all((v["interior"]["f1"] or 0.0) >= NAIVE_SAME_F1
                                 for v in r["naive_versus_pipeline"].values())
    r["naive_same_nuclei_least_f1"] = NAIVE_SAME_F1
    r["postprocess"] = {
        "megapixels": round(map_mp, 2), "seconds": post_s, "megapixels_per_s": round(map_mp / post_s, 3),
        "share_of_wall": round(post_s / p["wall_s"], 3), "cpus": run.config.postprocess_cpus,
        "model_megapixels_per_s": round(r["compute_limit"]["tiles_per_s"] * core * core / 1e6, 3),
    }
    r["memory"] = {"peak_rss_gb_1x": p["peak_rss_gb"], "peak_rss_gb_4x": p4["peak_rss_gb"],
                   "growth": round(p4["peak_rss_gb"] / p["peak_rss_gb"] - 1.0, 3),
                   "tiles_1x": p["tiles"], "tiles_4x": p4["tiles"]}
    r["scaling"] = {
        f"{q['actors']} actor(s) x {q['cpus_per_actor']} thread(s), steady tiles/s":
        q["steady_tiles_per_s"] for q in (p, r.get("pipeline_other_layout")) if q
    }
    r["seconds_per_mm2"] = {"end_to_end": round(p["wall_s"] / area, 3),
                            "inference": round(p["tiles"] / p["steady_tiles_per_s"] / area, 3),
                            "tissue_area_mm2": area, "at_mpp": run.mpp,
                            "end_to_end_4x": round(p4["wall_s"] / p4["tissue_area_mm2"], 3),
                            "tissue_area_mm2_4x": p4["tissue_area_mm2"]}
    r["cpu_time"] = _cpu_time(r)
    versus = r["postprocess_versus_reference"]
    r["postprocess_per_core"] = {
        "megapixels_per_cpu_s": versus["megapixels_per_cpu_s"],
        "reference_megapixels_per_cpu_s": versus["reference_megapixels_per_cpu_s"],
        "speedup": versus["speedup"], "identical_to_reference": versus["identical_to_reference"],
    }
    r["cpu_efficiency"] = _cpu_efficiency(r, map_mp)
    folder, whole, one = r["small_images_folder"], r["small_images_as_one_image"], r["pipeline"]
    r["small_images"] = {
        "images": folder["slides"], "tiles_folder": folder["tiles"], "tiles_one_image": whole["tiles"],
        "tiles_slide": one["tiles"],
        "end_to_end_tiles_per_s_folder": folder["end_to_end_tiles_per_s"],
        "end_to_end_tiles_per_s_one_image": whole["end_to_end_tiles_per_s"],
        "end_to_end_tiles_per_s_slide": one["end_to_end_tiles_per_s"],
        # the reference: the same pixels as one image
        "ratio": round(folder["end_to_end_tiles_per_s"] / whole["end_to_end_tiles_per_s"], 3),
        # the reference of the earlier rounds: the 1x slide, the same field inside a glass border
        "ratio_vs_1x_slide": round(folder["end_to_end_tiles_per_s"] / one["end_to_end_tiles_per_s"], 3),
    }
    noop = r["noop_rerun"]
    r["noop_rerun_summary"] = {"slides": noop["slides"], "wall_s": noop["wall_s"], "cpu_s": noop["cpu_s"],
                               "rewriting_report_wall_s": noop["rewriting_report_wall_s"],
                               "statuses": noop["statuses"]}
    r["targets"] = {"efficiency >= 0.9": r["efficiency"] >= 0.9,
                    "post-processing >= 10 MP/s per core": versus["megapixels_per_cpu_s"] >= 10,
                    "CPU-time efficiency >= 0.9": r["cpu_efficiency"]["efficiency"] >= 0.9,
                    "small images >= 0.8x one slide": r["small_images"]["ratio"] >= 0.8,
                    "no-op rerun of 100 slides < 3 s": noop["wall_s"] < 3.0,
                    "speedup_vs_naive >= 1.8": r["speedup_vs_naive"] >= 1.8,
                    "memory growth at 4x area <= 10%": abs(r["memory"]["growth"]) <= 0.10,
                    "post-processing faster than the model": r["postprocess"]["megapixels_per_s"]
                    >= r["postprocess"]["model_megapixels_per_s"]}


#: Least F1 of the naive loop's nuclei against the pipeline's, inside the compared tile cores, for
#: ``naive_same_nuclei`` (measured 0.96-0.98: its float32 model and its own resize, not bf16 and
#: nucflow's reader; README, Benchmarks).
NAIVE_SAME_F1 = 0.9


def shared_core_limit(read: float, compute: float) -> float:
    """Tiles/s when reading and computing share the same cores: 1 / (1/read + 1/compute).

    Both limits are measured with every core; on a CPU-only machine each tile costs the
    pipeline its read time plus its compute time on those cores, so this is its ceiling.
    """
    return 1.0 / (1.0 / read + 1.0 / compute)


def _cpu_time(r: dict) -> dict:
    """Load-independent view: CPU seconds per tile of the whole process tree (see RESULTS.md)."""
    p, model = r["pipeline"], r["compute_limit"]["least_cpu_s_per_tile"]
    e2e = p["cpu_s"] / p["tiles"]
    return {
        "model_alone_cpu_s_per_tile": model,
        "pipeline_steady_cpu_s_per_tile": p["steady_cpu_s_per_tile"],
        "efficiency": round(model / p["steady_cpu_s_per_tile"], 3),
        "pipeline_end_to_end_cpu_s_per_tile": round(e2e, 4),
        "naive_cpu_s_per_tile": r["naive"]["cpu_s_per_tile"],
        "naive_1_thread_cpu_s_per_tile": r["naive_1_thread"]["cpu_s_per_tile"],
        "naive_over_pipeline_end_to_end": round(r["naive"]["cpu_s_per_tile"] / e2e, 3),
    }


def _cpu_efficiency(r: dict, map_mp: float) -> dict:
    """The pipeline's CPU seconds per tile against reading, the model and post-processing each alone.

    Read: the CPU seconds per context window read with one thread (``read_limit``); model: the
    least CPU seconds per tile of the compute limit; post-processing: the current code's CPU seconds
    per megapixel (``postprocess_versus_reference``) times the map's megapixels per tile. The
    pipeline: CPU seconds of its whole process tree from its first finished batch to its exit
    (inference, post-processing, writing, Ray), per tile after that batch; and per extra tile of
    the 4x slide over the 1x slide (``efficiency_marginal``: without the run's fixed costs).
    """
    p = r["pipeline"]
    read = r["read_limit"]["cpu_s_per_tile"]
    model = r["compute_limit"]["least_cpu_s_per_tile"]
    post = map_mp / p["tiles"] / r["postprocess_versus_reference"]["megapixels_per_cpu_s"]
    pipeline_cpu = p["cpu_s_per_tile_after_first_batch"]
    alone = read + model + post
    # What one more tile costs the pipeline: the 4x slide's CPU after its first batch minus the
    # 1x slide's, over the tiles between them (the same tissue, mirrored), so the run's fixed
    # costs (imports of the finishing worker, report, Ray's daemons) cancel out.
    p4 = r["pipeline_4x"]
    extra_tiles = p4["tiles_after_first_batch"] - p["tiles_after_first_batch"]
    marginal = (p4["cpu_s_after_first_batch"] - p["cpu_s_after_first_batch"]) / extra_tiles if extra_tiles > 0 \
        else float("nan")
    return {"read_cpu_s_per_tile": round(read, 5),
            "read_wall_s_per_tile_1_thread": round(1.0 / r["read_limit"]["tiles_per_s_1_threads"], 5),
            "model_cpu_s_per_tile": model,
            "postprocess_cpu_s_per_tile": round(post, 4), "sum_alone": round(alone, 4),
            "pipeline_cpu_s_per_tile": pipeline_cpu, "efficiency": round(alone / pipeline_cpu, 3),
            "pipeline_marginal_cpu_s_per_tile": round(marginal, 4),
            "efficiency_marginal": round(alone / marginal, 3)}


def _map_megapixels(map_path: str) -> float:
    import zarr

    shape = zarr.open_array(f"{map_path}/probability", mode="r").shape
    return shape[0] * shape[1] / 1e6


def _machine(run: Run) -> dict:
    import ray
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {"cpu": cpu, "cores": run.cores, "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "gpu": "none (GPU path code-ready only)", "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        args = _smoke(args)
    for key, value in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                       "RAY_TMPDIR": tempfile.mkdtemp(prefix="nucflow-bench-ray-")}.items():
        os.environ.setdefault(key, value)
    run = Run(args)
    started = time.perf_counter()
    run.results["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    given = sys.argv[1:] if argv is None else argv
    run.results["command"] = " ".join([".venv/bin/python benchmarks/run.py", *given])
    run.results["machine"] = _machine(run)
    for step in (_fixtures, _limits, _pipelines, _small_images, _naive, _summarise):
        step(run)
    run.results["loadavg"]["end"] = _load()
    run.results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(run.results, indent=2) + "\n")
    (args.out / "results.partial.json").unlink(missing_ok=True)
    write_report(run.results, args.out / "RESULTS.md")
    return run.results


if __name__ == "__main__":
    main()
