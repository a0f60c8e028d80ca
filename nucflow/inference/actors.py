"""Model actors on Ray and the work queue that streams tiles of every slide through them.

Each :class:`TileWorker` actor holds one predictor, pinned to one GPU (or a share of one) or
to a set of CPU slots. A work item is one batch of tiles of one slide; the actor reads the
tiles itself (from a path every node can see), predicts, and writes the cores straight into
the slide's Zarr map, so tile pixels never travel through the driver. Actors accept two
items at once: one decodes while the other computes (the predictor serialises compute).

:class:`TileScheduler` keeps every actor busy across slides, replaces an actor that dies and
re-queues its unfinished items, and reports each finished or failed item to the caller.
"""

from __future__ import annotations

import collections
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray

from nucflow.cluster import ClusterConfig
from nucflow.inference.predictors import MethodSpec
from nucflow.inference.store import ProbabilityMap
from nucflow.inference.tiled import predict_tiles
from nucflow.slide.tiles import Tile

__all__ = ["ACTOR_PREFIX", "ActorOptions", "TileScheduler", "TileWorker", "WorkItem", "actor_options_for_cluster"]

log = logging.getLogger(__name__)

#: Model actors are named ``<prefix><run id>-<n>`` so operators (and tests) can find them.
ACTOR_PREFIX = "nucflow-tiles-"


@dataclass(frozen=True)
class WorkItem:
    """One batch of tiles of one slide, with everything an actor needs to process it."""

    slide_key: str
    slide_path: str
    mpp_override: float | None  # --mpp as given; None: the slide's metadata
    map_path: str
    mpp: float
    tiles: tuple[Tile, ...]
    params: dict[str, Any] = field(default_factory=dict)


class TileWorker:
    """Ray actor: read a batch of tiles, predict, write their cores (see module docstring)."""

    def __init__(self, spec: MethodSpec, *, device: str, threads: int, amp: bool, channels_last: bool) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.predictor = spec.build(device=device, amp=amp, channels_last=channels_last)
        # The tiles' pixels go to the map's rgb array from CPU actors only: a GPU actor's CPU feeds
        # the GPU, and the finishing task reads the slide on the cores such actors leave idle.
        self.keep_rgb = device == "cpu"
        self._slides: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.pid = os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def process(self, item: WorkItem) -> tuple[str, tuple[int, ...]]:
        """Predict and write ``item``'s tiles; returns (slide key, tile indices written)."""
        slide = self._slide(item.slide_path, item.mpp_override)
        target = ProbabilityMap(item.map_path)
        array, rgb = target.array(mode="r+"), target.rgb_array(mode="r+") if self.keep_rgb else None
        windows: dict[tuple[int, int], Any] = {}  # the windows read, for the map's rgb array

        def read_window(row: int, col: int, rows: int, cols: int) -> Any:
            window = slide.read(mpp=item.mpp, row=row, col=col, rows=rows, cols=cols)
            if rgb is not None:
                windows[row, col] = window
            return window

        cores = predict_tiles(read_window, item.tiles, self.predictor, batch_size=len(item.tiles), params=item.params)
        for tile, core in cores:
            if rgb is not None:  # the core's pixels, for the stain columns (written before its probabilities)
                m = tile.margin
                target.write_rgb(tile, windows.pop(tile.read_origin)[m : m + tile.rows, m : m + tile.cols], array=rgb)
            target.write_core(tile, core, array=array)
        return item.slide_key, tuple(t.index for t in item.tiles)

    def _slide(self, path: str, mpp: float | None) -> Any:
        from nucflow.slide import open_slide

        key = f"{path}|{mpp}"
        if key not in self._slides:
            self._slides[key] = open_slide(path, mpp=mpp)
            if len(self._slides) > 8:
                self._slides.popitem(last=False)[1].close()
        return self._slides[key]


@dataclass(frozen=True)
class ActorOptions:
    """How many model actors to start, what each holds, and its batch size."""

    count: int
    num_cpus: float
    num_gpus: float
    device: str
    threads: int
    batch_size: int
    amp: bool = True
    channels_last: bool = True
    inflight: int = 2


#: Tile batches queued on each model actor when ``inflight_per_actor`` is null. A GPU actor
#: decodes one batch while the GPU computes another; a CPU actor's one core would only
#: time-share two, and with one the finishing task gets the gaps: the 4x benchmark slide ended
#: in 29.3-29.8 s instead of 36.2-37.0 s with the same CPU seconds and 50-110 MB less peak
#: memory (interleaved pairs, issue 13), the 1x slide and 16 small images in the same time.
INFLIGHT_DEFAULT = {"cuda": 2, "cpu": 1}


def actor_options_for_cluster(
    resources: dict[str, float], *, cluster: ClusterConfig, amp: bool, channels_last: bool
) -> ActorOptions:
    """One actor per GPU share when the cluster has GPUs, else one per ``cpus_per_actor`` CPUs."""
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if gpus > 0:
        count = gpus * cluster.actors_per_gpu
        num_cpus, num_gpus, device, threads = 1.0, 1.0 / cluster.actors_per_gpu, "cuda", 1
        batch = cluster.batch_size_per_gpu
    else:
        threads = max(1, min(cluster.cpus_per_actor, cpus))
        count, num_cpus, num_gpus, device = max(1, cpus // threads), float(threads), 0.0, "cpu"
        batch = cluster.batch_size_per_cpu
    if cluster.max_actors:
        count = min(count, cluster.max_actors)
    inflight = cluster.inflight_per_actor or INFLIGHT_DEFAULT[device]
    return ActorOptions(count, num_cpus, num_gpus, device, threads, batch, amp, channels_last, inflight)


@dataclass(frozen=True)
class _Pending:
    slot: int
    actor: Any
    item: WorkItem
    tries: int


_RETRY = object()

OnDone = Callable[[WorkItem, tuple[int, ...]], None]
OnError = Callable[[WorkItem, BaseException], None]
#: More work as it comes (``block``: wait for some): new items, or None when no more will come.
More = Callable[[bool], "list[WorkItem] | None"]

#: Seconds between looks for more work while items are in flight (see :meth:`TileScheduler.run`).
_MORE_POLL_S = 0.1


class TileScheduler:
    """Streams work items through a pool of :class:`TileWorker` actors.

    Items are taken in order, at most ``options.inflight`` per actor. An item whose actor
    died is re-queued (up to ``max_retries`` times) on a replacement actor; an item that
    raised is reported to ``on_error`` and not retried (its slide is broken, not the actor).
    """

    def __init__(self, spec_ref: Any, options: ActorOptions, *, max_retries: int = 3) -> None:
        self.options = options
        self.max_retries = max_retries
        self._spec_ref = spec_ref
        concurrency = max(1, options.inflight)
        self._remote: Any = ray.remote(max_concurrency=concurrency, max_restarts=0)(TileWorker)  # type: ignore[call-overload]
        self._run_id = uuid.uuid4().hex[:8]
        self._started = 0
        self.actors: list[Any] = [self._start() for _ in range(options.count)]
        self.replaced = 0

    def _start(self) -> Any:
        o = self.options
        self._started += 1
        name = f"{ACTOR_PREFIX}{self._run_id}-{self._started}"
        return self._remote.options(name=name, num_cpus=o.num_cpus, num_gpus=o.num_gpus).remote(
            self._spec_ref, device=o.device, threads=o.threads, amp=o.amp, channels_last=o.channels_last
        )

    def run(self, items: Iterable[WorkItem], *, on_done: OnDone, on_error: OnError, more: More | None = None) -> None:
        """Process ``items``, then what ``more`` gives as it comes (slides planned while their
        predecessors' tiles run), until ``more`` says no more will come."""
        queue: collections.deque[tuple[WorkItem, int]] = collections.deque((item, 0) for item in items)
        pending: dict[Any, _Pending] = {}
        load = [0] * len(self.actors)
        while queue or pending or more is not None:
            if more is not None:
                new = more(not queue and not pending)  # wait for work only when there is none
                if new is None:
                    more = None
                else:
                    queue.extend((item, 0) for item in new)
            self._dispatch(queue, pending, load)
            if not pending:
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if more is None else _MORE_POLL_S)
            if not ready:
                continue
            job = pending.pop(ready[0])
            load[job.slot] -= 1
            outcome = self._outcome(ready[0], job)
            if outcome is _RETRY:
                log.warning("model actor died; retrying %d tiles of %s", len(job.item.tiles), job.item.slide_key)
                queue.appendleft((job.item, job.tries + 1))
            elif isinstance(outcome, BaseException):
                on_error(job.item, outcome)
            else:
                on_done(job.item, outcome)

    def _dispatch(self, queue: collections.deque, pending: dict[Any, _Pending], load: list[int]) -> None:
        while queue:
            slot = min(range(len(self.actors)), key=load.__getitem__)
            if load[slot] >= self.options.inflight:
                return
            item, tries = queue.popleft()
            actor = self.actors[slot]
            pending[actor.process.remote(item)] = _Pending(slot, actor, item, tries)
            load[slot] += 1

    def _outcome(self, ref: Any, job: _Pending) -> Any:
        """The tile indices written, an exception to report, or _RETRY after an actor death."""
        try:
            return ray.get(ref)[1]
        except ray.exceptions.RayActorError as exc:
            if self.actors[job.slot] is job.actor:  # first news of this death: replace it once
                self._replace(job.slot)
            return _RETRY if job.tries < self.max_retries else exc
        except ray.exceptions.RayTaskError as exc:
            return exc.as_instanceof_cause()

    def _replace(self, slot: int) -> None:
        try:
            ray.kill(self.actors[slot], no_restart=True)
        except Exception:  # noqa: BLE001 - the actor is already gone, which is the point
            log.debug("dead actor could not be killed", exc_info=True)
        self.actors[slot] = self._start()
        self.replaced += 1

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
