"""The benchmark suite: its measuring helpers on hand-made cases, and a smoke run on a tiny slide."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import pipeline, run  # noqa: E402


def test_steady_rate_skips_each_actors_first_batch() -> None:
    # Two actors finish their first batches (2 tiles each) at t=10 and t=11 after start-up,
    # then 8 more tiles arrive by t=15: steady rate = (12 - 4) / (15 - 11) = 2 tiles/s.
    events = [(10.0, 2), (11.0, 4), (12.0, 6), (13.0, 8), (14.0, 10), (15.0, 12)]
    assert pipeline.steady_rate(events, skip=1) == pytest.approx(2.0)
    assert pipeline.steady_rate(events, skip=0) == pytest.approx(10 / 5)


def test_memory_sampler_counts_child_processes() -> None:
    import psutil

    sampler = pipeline.MemorySampler(psutil.Process().pid)
    alone = sampler.sample()
    code = "import time; b = bytearray(200 * 2**20); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while sampler.sample() < alone + 150 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sampler.peak >= alone + 150 * 2**20
        assert sampler.peak_processes >= 2
    finally:
        child.kill()
        child.wait()


def test_suite_runs_on_a_tiny_slide(ray_local, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = run.main(["--smoke", "--out", str(out), "--cache", str(tmp_path / "cache"), "--data", str(shared_data)])
    written = json.loads((out / "results.json").read_text())
    assert written["efficiency"] == results["efficiency"] > 0
    assert written["speedup_vs_naive"] > 0
    assert written["pipeline"]["tiles"] == written["slide"]["tiles"] == 4
    assert written["pipeline_4x"]["tiles"] > written["pipeline"]["tiles"]
    assert written["memory"]["peak_rss_gb_1x"] > 0.1
    assert written["read_limit"]["tiles_per_s"] > 0 and written["compute_limit"]["tiles_per_s"] > 0
    assert written["postprocess"]["megapixels_per_s"] > 0 and written["naive"]["nuclei"] > 0
    assert set(written["targets"]) >= {"efficiency >= 0.9", "speedup_vs_naive >= 1.8"}
    report = (out / "RESULTS.md").read_text()
    assert "speed-up vs naive" in report and written["date"] in report
