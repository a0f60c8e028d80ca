"""One :func:`nucflow.segment` call in a fresh Python process, as ``nucflow segment`` runs it.

:func:`benchmarks.pipeline.run_pipeline` starts this script so that the memory and wall time
it measures are the segment run's alone (this process, its local Ray and the model actors),
not the benchmark's, which by then holds fixtures and earlier results. Usage::

    python benchmarks/segment_child.py JOB.pkl RESULT.json

``JOB.pkl`` is a pickled dict of :func:`nucflow.segment` keyword arguments (``slides``,
``out``, ``model``, ``config``, ``cluster_config``, ``overwrite``; the frozen config
dataclasses travel as they are). ``RESULT.json`` is written at the end with
``time.monotonic()`` readings (system-wide on Linux, so the parent can compare them with its
own): ``started`` (before any import), ``imported`` (after ``import nucflow``),
``segment_started``, ``segment_ended``, ``events`` (one ``[time, tiles done]`` per tile
progress report) and each slide's ``slide``, ``status`` and ``error``. A failure exits
non-zero with its traceback on stderr.
"""

import time

STARTED = time.monotonic()

import json  # noqa: E402 - after the start time, so that start-up is measured from here
import pickle  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def main(job_path: str, result_path: str) -> None:
    from nucflow import segment

    imported = time.monotonic()
    job = pickle.loads(Path(job_path).read_bytes())  # written by the benchmark that started us
    events: list[tuple[float, int]] = []

    def progress(p: Any) -> None:
        if p.stage == "tiles":
            events.append((time.monotonic(), p.done))

    segment_started = time.monotonic()
    result = segment(**job, progress=progress)
    segment_ended = time.monotonic()
    record = {
        "started": STARTED, "imported": imported, "segment_started": segment_started,
        "segment_ended": segment_ended, "events": events,
        "slides": [{"slide": s.slide, "status": s.status, "error": s.error} for s in result.slides],
    }
    Path(result_path).write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:3])
