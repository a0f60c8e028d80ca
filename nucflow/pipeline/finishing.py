"""The finishing-task queue: each slide's post-processing and outputs (:func:`finish_slide`) as a
Ray task, started in slide order with at most one running per node.

A slide's task is started before its tiles are predicted, not after its last: it post-processes
each part of the map as soon as the tiles under it are recorded (see
:class:`nucflow.inference.store.DoneRecorder`), so post-processing (and its worker's start-up)
runs beside inference, while a long cohort does not start a process per slide at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import ray

from nucflow.pipeline.config import SegmentConfig
from nucflow.pipeline.finish import finish_slide
from nucflow.pipeline.plan import SlidePlan

__all__ = ["FinishingQueue"]


class FinishingQueue:
    """Starts, limits, cancels and collects the finishing tasks of ``plans``' slides."""

    def __init__(
        self, plans: list[SlidePlan], config: SegmentConfig, *, geojson: bool | str,
        threads_while_predicting: int | None = None,
    ) -> None:
        self.plans = {p.key: p for p in plans}
        self.geojson = geojson
        self.threads_while_predicting = threads_while_predicting  # see finish_slide
        self.max_running = max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
        # A task asking for more CPUs than any node has would wait forever: cap it.
        cpus = min(config.postprocess_cpus, _largest_node_cpus())
        self.config = replace(config, postprocess_cpus=cpus)
        self._task: Any = ray.remote(num_cpus=cpus, max_retries=1, scheduling_strategy="SPREAD")(
            finish_slide  # type: ignore[arg-type]
        )
        self.waiting: list[str] = list(self.plans)  # not started yet, in slide order
        self.running: dict[Any, str] = {}  # task -> slide
        self.started: dict[str, Any] = {}  # slide -> task, for every task started
        self.pump()

    def add(self, plan: SlidePlan) -> None:
        """One more slide (planned after the run started), after the ones waiting."""
        self.plans[plan.key] = plan
        self.waiting.append(plan.key)
        self.pump()

    def pump(self) -> None:
        """Forget tasks that ended; start waiting ones while fewer than one per node run."""
        if self.running:
            ended, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
            for ref in ended:
                del self.running[ref]
        while self.waiting and len(self.running) < self.max_running:
            key = self.waiting.pop(0)
            ref = self._task.remote(self.plans[key], self.config, geojson=self.geojson,
                                    threads_while_predicting=self.threads_while_predicting)
            self.started[key], self.running[ref] = ref, key

    def cancel(self, key: str) -> None:
        """A failed slide's task would wait for tiles that never come: drop or cancel it."""
        if key in self.waiting:
            self.waiting.remove(key)
        ref = self.started.pop(key, None)
        if ref is not None:
            self.running.pop(ref, None)
            ray.cancel(ref, force=True)

    def wait_all(self) -> dict[str, Any]:
        """Start every waiting task and wait for all; slide -> its task (``ray.get`` gives its summary)."""
        while self.waiting or self.running:
            if self.running:
                ray.wait(list(self.running), num_returns=1)
            self.pump()
        return dict(self.started)


def _largest_node_cpus() -> float:
    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0) or 1.0
