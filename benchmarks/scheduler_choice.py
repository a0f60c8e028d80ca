"""Why segment uses its own actors and work queue rather than Ray Data: a measurement.

Both variants run the same model on the same tiles of the same slide with the same actor
layout (``--actors`` actors x ``--threads`` CPUs each), read the tiles inside the actors and
write the cores into a Zarr map:

- ``actors``: :class:`nucflow.inference.actors.TileScheduler` (what ``segment`` uses);
- ``ray_data``: ``ray.data.from_items(...).map_batches(<callable class>, concurrency=N)``.

Each is timed twice in alternating order, wall time from submission to the last core
written, start-up included. Run: ``.venv/bin/python benchmarks/scheduler_choice.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nucflow.cluster import load_cluster_config
from nucflow.inference.actors import TileScheduler, WorkItem, actor_options_for_cluster
from nucflow.inference.predictors import MethodSpec
from nucflow.inference.store import ProbabilityMap, create_map
from nucflow.inference.tiled import auto_tile_size, predict_tiles
from nucflow.models import default_model_path, load_model
from nucflow.slide import open_slide, tile_grid
from nucflow.slide.synthetic import demo_ihc_image, write_svs


class _DataWorker:
    """The Ray Data variant's callable class: read, predict and write a batch of tiles."""

    def __init__(self, spec: MethodSpec, slide_path: str, map_path: str, tiles: list, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.predictor = spec.build()
        self.slide = open_slide(slide_path)
        self.target = ProbabilityMap(map_path)
        self.tiles = tiles
        self.mpp = spec.mpp

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tiles = [self.tiles[int(i)] for i in batch["index"]]
        array = self.target.array(mode="r+")

        def read(row: int, col: int, rows: int, cols: int) -> Any:
            return self.slide.read(mpp=self.mpp, row=row, col=col, rows=rows, cols=cols)

        for tile, core in predict_tiles(read, tiles, self.predictor, batch_size=len(tiles)):
            self.target.write_core(tile, core, array=array)
        return {"index": batch["index"]}


def _setup(work: Path, repeats: int) -> tuple[Path, MethodSpec, list]:
    slide = write_svs(work / "bench.svs", demo_ihc_image(repeats=repeats), mpp=0.5)
    path = default_model_path()
    if path is None:
        raise SystemExit("no bundled default model")
    model = load_model(path)
    spec = MethodSpec("unet", mpp=model.card.mpp, model=model)
    with open_slide(slide) as s:
        shape = s.shape_at(spec.mpp)
    grid = tile_grid(shape, tile_size=auto_tile_size(model.card.input_multiple, margin=32), margin=32)
    return slide, spec, list(grid.tiles)


def _run_actors(
    spec_ref: Any, slide: Path, map_path: str, tiles: list, *, actors: int, threads: int, batch: int
) -> float:
    from dataclasses import replace

    import ray

    cluster = replace(load_cluster_config(), cpus_per_actor=threads, max_actors=actors, batch_size_per_cpu=batch)
    options = actor_options_for_cluster(ray.cluster_resources(), cluster=cluster, amp=True, channels_last=True)
    items = [
        WorkItem("bench", str(slide), None, map_path, 0.5, tuple(tiles[i : i + batch]))
        for i in range(0, len(tiles), batch)
    ]
    started = time.perf_counter()
    scheduler = TileScheduler(spec_ref, options)
    try:
        scheduler.run(items, on_done=lambda *_: None, on_error=lambda item, exc: (_ for _ in ()).throw(exc))
    finally:
        scheduler.shutdown()
    return time.perf_counter() - started


def _run_ray_data(
    spec: MethodSpec, slide: Path, map_path: str, tiles: list, *, actors: int, threads: int, batch: int
) -> float:
    import ray

    started = time.perf_counter()
    dataset = ray.data.from_items([{"index": i} for i in range(len(tiles))]).map_batches(
        _DataWorker,
        fn_constructor_kwargs={
            "spec": spec, "slide_path": str(slide), "map_path": map_path, "tiles": tiles, "threads": threads
        },
        batch_size=batch,
        concurrency=actors,
        num_cpus=threads,
    )
    done = sum(len(b["index"]) for b in dataset.iter_batches(batch_size=None))
    assert done == len(tiles)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="mirrored copies of the demo image per side")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scheduler_choice.json"))
    args = parser.parse_args()
    for key, value in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(key, value)
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slide, spec, tiles = _setup(work, args.repeats)
        spec_ref = ray.put(spec)
        shape = open_slide(slide).shape_at(spec.mpp)
        times: dict[str, list[float]] = {"actors": [], "ray_data": []}
        for round_ in range(2):
            for name in ("actors", "ray_data") if round_ == 0 else ("ray_data", "actors"):
                map_path = str(work / f"{name}-{round_}.zarr")
                create_map(map_path, shape=shape, core=tiles[0].size - 64, attrs={})
                kw = {"actors": args.actors, "threads": args.threads, "batch": args.batch}
                if name == "actors":
                    times[name].append(_run_actors(spec_ref, slide, map_path, tiles, **kw))
                else:
                    times[name].append(_run_ray_data(spec, slide, map_path, tiles, **kw))
        same = np.array_equal(ProbabilityMap(str(work / "actors-0.zarr")).array()[:],
                              ProbabilityMap(str(work / "ray_data-0.zarr")).array()[:])
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tiles": len(tiles), "actors": args.actors, "threads_per_actor": args.threads, "batch": args.batch,
        "wall_s": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
        "tiles_per_s_best": {k: round(len(tiles) / min(vs), 3) for k, vs in times.items()},
        "identical_maps": bool(same),
        "load_average": os.getloadavg(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
