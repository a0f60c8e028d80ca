"""Slides are planned in a thread and handed to the scheduler as they come (issue 13, small images).

The end-to-end runs (several slides, failures among them, tables equal to in-memory results)
are in ``test_segment.py``; here the hand-over itself, without Ray.
"""

from __future__ import annotations

import threading
import time

import pytest

from nucflow.pipeline.run import _PlanFeed


def test_plans_come_in_order_as_they_are_made_then_none() -> None:
    gate = threading.Event()

    def plans():
        yield "a"
        gate.wait(10)  # the second slide is still being planned
        yield "b"
        yield "c"

    feed = _PlanFeed(plans)  # type: ignore[arg-type]
    assert feed.take(block=True) == ["a"]
    assert feed.take(block=False) == []  # nothing new yet: no waiting
    gate.set()
    taken: list = []
    while (got := feed.take(block=True)) is not None:
        taken += got
    assert taken == ["b", "c"]
    assert feed.take(block=True) is None
    feed.close()


def test_a_planning_error_reaches_the_driver() -> None:
    def plans():
        yield "a"
        raise OSError("disk full")

    feed = _PlanFeed(plans)  # type: ignore[arg-type]
    assert feed.take(block=True) == ["a"]
    with pytest.raises(OSError, match="disk full"):
        while feed.take(block=True) is not None:
            pass
    feed.close()


def test_close_stops_planning_after_the_current_slide() -> None:
    made: list[int] = []

    def plans():
        for i in range(1000):
            time.sleep(0.005)
            made.append(i)
            yield i

    feed = _PlanFeed(plans)  # type: ignore[arg-type]
    assert feed.take(block=True)
    feed.close()  # as a stopped run does: waits for the slide being planned, plans no other
    assert len(made) < 1000
    count = len(made)
    time.sleep(0.05)
    assert len(made) == count
