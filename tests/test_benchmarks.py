"""The benchmark suite: its measuring helpers on hand-made cases, and a smoke run on a tiny slide."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import fixtures, pipeline, run  # noqa: E402


def test_steady_rate_skips_each_actors_first_batch() -> None:
    # Two actors finish their first batches (2 tiles each) at t=10 and t=11 after start-up,
    # then 8 more tiles arrive by t=15: steady rate = (12 - 4) / (15 - 11) = 2 tiles/s.
    events = [(10.0, 2), (11.0, 4), (12.0, 6), (13.0, 8), (14.0, 10), (15.0, 12)]
    assert pipeline.steady_rate(events, skip=1) == pytest.approx(2.0)
    assert pipeline.steady_rate(events, skip=0) == pytest.approx(10 / 5)


def test_cpu_at_interpolates_the_sampled_cpu_series_at_event_times() -> None:
    # CPU seconds sampled at t=0, 1, 3: 0, 2, 4. At t=0.5 halfway to 2 -> 1; at t=2 halfway
    # from 2 to 4 -> 3; before the first sample and after the last the ends hold: 0 and 4.
    series = [(0.0, 0.0), (1.0, 2.0), (3.0, 4.0)]
    assert pipeline.cpu_at(series, [0.5, 2.0, -1.0, 5.0]) == pytest.approx([1.0, 3.0, 0.0, 4.0])
    assert np.isnan(pipeline.cpu_at([], [1.0])[0])


def test_shared_core_limit_adds_read_and_compute_time_per_tile() -> None:
    # 150 tiles/s read, 100 tiles/s compute on the same cores: 1/150 + 1/100 = 1/60 s per tile.
    assert run.shared_core_limit(150.0, 100.0) == pytest.approx(60.0)


def test_naive_versus_pipeline_matches_mutual_nearest_centroids(tmp_path: Path) -> None:
    import pandas as pd

    from nucflow.slide.tiles import Tile

    # One tile core of 400 x 400 px at 0.25 µm/px: 100 µm square at (50, 50) µm.
    tile = Tile(index=0, row=200, col=200, rows=400, cols=400, margin=32, size=464)
    table = pd.DataFrame({  # the pipeline's nuclei (µm): 3 in the core (2 inside it by >= 8 µm), 1 outside
        "centroid_x_um": [60.0, 100.0, 120.0, 10.0], "centroid_y_um": [52.0, 100.0, 120.0, 10.0],
        "area_um2": [20.0, 30.0, 40.0, 50.0]})
    table.to_parquet(tmp_path / "nuclei.parquet")
    # The loop's: one 0.5 µm from (100, 100), one 3 µm from (120, 120) (too far), one near the edge
    # 1 µm from (60, 52), and a second one 1.5 µm from (100, 100) (not its nearest: unmatched).
    ours = [[100.5, 100.0, 33.0], [123.0, 120.0, 40.0], [61.0, 52.0, 20.0], [100.0, 101.5, 10.0]]
    got = pipeline.naive_versus_pipeline(ours, [tile], mpp=0.25, table=tmp_path / "nuclei.parquet")
    assert (got["pipeline_nuclei"], got["naive_nuclei"], got["matched"]) == (3, 4, 2)
    assert got["recall"] == pytest.approx(2 / 3, abs=1e-4) and got["precision"] == pytest.approx(2 / 4)
    assert got["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), abs=1e-4)
    inside = got["interior"]  # (60, 52) is 2 µm from the core's top edge: left out of both
    assert (inside["pipeline_nuclei"], inside["naive_nuclei"]) == (2, 3)
    assert inside["recall"] == pytest.approx(1 / 2) and inside["precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert got["median_distance_um"] == pytest.approx(0.75) and got["area_ratio_median"] == pytest.approx(1.05)


def test_quality_caches_bf16_maps_apart_from_float32_ones(tmp_path: Path) -> None:
    # A CPU with native bf16 runs the model under autocast: its maps differ from float32 ones
    # (slightly) and must not be read back as theirs, nor the other way round.
    import torch

    from benchmarks.quality import _runs, cache_key
    from nucflow.inference.predictors import autocast_dtype

    model = tmp_path / "m.safetensors"
    unet = next(r for r in _runs([str(model)], [None], ["deconvolution"], ["none"]) if r["method"] == "unet")
    keys = {cache_key(unet, "glioma", autocast=dtype) for dtype in (None, torch.bfloat16)}
    assert len(keys) == 2
    assert cache_key(unet, "glioma") == cache_key(dict(unet), "glioma")  # stable
    assert cache_key(unet, "endonuke") not in keys  # and per set
    assert cache_key({**unet, "tta": "flips"}, "glioma") not in keys
    assert autocast_dtype("cpu", amp=False) is None  # amp off: float32, the plain key
    # other weights at the same path (a re-exported model) get other maps
    new, old = (cache_key(unet, "glioma", model_id=i) for i in ("474e374e9b78f78c", "760840250c6caa1b"))
    assert new != old and new not in keys


def test_mirrored_field_equals_symmetric_padding() -> None:
    block = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = np.zeros((23, 16, 3), np.uint8)
    fixtures._mirror_into(out, block)
    np.testing.assert_array_equal(out, np.pad(block, ((0, 18), (0, 9), (0, 0)), mode="symmetric"))


def test_run_pipeline_raises_the_childs_error(tmp_path: Path) -> None:
    from nucflow.cluster import load_cluster_config

    expected = r"(?s)exited with code 1.*PreflightError.*no slide matches .*missing\.svs"
    with pytest.raises(RuntimeError, match=expected):
        pipeline.run_pipeline(tmp_path / "missing.svs", tmp_path / "model.safetensors", tmp_path / "out",
                              cluster=load_cluster_config(), config=pipeline.segment_config(), actors=1)


def test_memory_sampler_counts_child_processes() -> None:
    import psutil

    sampler = pipeline.MemorySampler(psutil.Process().pid)
    alone = sampler.sample()
    code = "import time; b = bytearray(200 * 2**20); time.sleep(600)"  # killed below, once seen
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 300  # bounded poll, generous for a loaded machine
        while sampler.sample() < alone + 150 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sampler.peak >= alone + 150 * 2**20
        assert sampler.peak_processes >= 2
    finally:
        child.kill()
        child.wait()


@pytest.mark.e2e
def test_suite_runs_on_a_tiny_slide(shared_data: Path, tmp_path: Path, bundled_member_model: Path) -> None:
    out = tmp_path / "out"
    # One trained network: the suite's sections, at a third of the bundled ensemble's model time.
    results = run.main(["--smoke", "--out", str(out), "--cache", str(tmp_path / "cache"), "--data", str(shared_data),
                        "--model", str(bundled_member_model)])
    written = json.loads((out / "results.json").read_text())
    assert written["efficiency"] == results["efficiency"] > 0
    assert written["speedup_vs_naive"] > 0 and written["speedup_vs_naive_1x"] > 0
    assert written["naive_4x"]["tiles"] == 2 and written["naive_4x"]["nuclei"] > 0
    # The loop does the pipeline's job at the model's resolution: the same nuclei inside its cores.
    assert written["model"]["path"] == str(bundled_member_model) and written["model"]["source"] == "--model"
    assert written["naive"]["mpp"] == written["model"]["mpp"]  # the model card's resolution, as the pipeline
    assert written["naive_1_thread"]["torch_threads"] == 1
    for versus in written["naive_versus_pipeline"].values():
        assert versus["pipeline_nuclei"] > 0 and versus["interior"]["f1"] >= run.NAIVE_SAME_F1
    assert written["naive_same_nuclei"] is True
    assert written["efficiency_shared_cores"] >= written["efficiency"]
    assert written["shared_core_limit_tiles_per_s"] < min(
        written["read_limit"]["tiles_per_s"], written["compute_limit"]["tiles_per_s"]
    )
    assert written["pipeline"]["import_s"] > 0 and written["pipeline"]["wall_s"] > written["pipeline"]["import_s"]
    assert written["pipeline"]["tiles"] == written["slide"]["tiles"] >= 4  # 4 at 0.5 µm/px, 12 at 0.25
    assert written["pipeline_4x"]["tiles"] == written["slide"]["tiles_4x"] > written["pipeline"]["tiles"]
    assert written["memory"]["peak_rss_gb_1x"] > 0.1
    assert written["read_limit"]["tiles_per_s"] > 0 and written["compute_limit"]["tiles_per_s"] > 0
    assert written["postprocess"]["megapixels_per_s"] > 0 and written["naive"]["nuclei"] > 0
    assert set(written["targets"]) >= {"efficiency >= 0.9", "speedup_vs_naive >= 1.8"}
    versus = written["postprocess_versus_reference"]
    assert versus["identical_to_reference"] and versus["nuclei"] > 0 and versus["megapixels_per_cpu_s"] > 0
    assert 0 < written["cpu_efficiency"]["sum_alone"] and written["cpu_efficiency"]["efficiency"] > 0
    folder = written["small_images_folder"]
    assert folder["slides"] == 1 and folder["tiles"] > 0 and written["small_images"]["ratio"] > 0
    whole = written["small_images_as_one_image"]  # the same pixels as one image: the same tiles
    assert whole["slides"] == 1 and whole["tiles"] == folder["tiles"]
    assert written["small_images"]["ratio_vs_1x_slide"] > 0
    assert written["noop_rerun"]["statuses"] == ["skipped"] and written["noop_rerun"]["slides"] == 4
    assert 0 < written["noop_rerun"]["cpu_s"] and 0 < written["noop_rerun"]["wall_s"]
    report = (out / "RESULTS.md").read_text()
    assert "speed-up vs naive" in report and "shared-core ceiling" in report and written["date"] in report


def _device_train(shared_data: Path, out: Path, *extra: str) -> dict:
    """benchmarks/device_train.py in its own process (it installs a stand-in ``ray.train``)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device_train.py"), "--config", "cpu",
           "--data", str(shared_data), "--no-slides", "--no-skimage-ihc",
           "--tiles", str(shared_data / "ihc/regions"), "--masks", str(shared_data / "masks/monuseg"),
           "--set", "data.crop=64", "--set", "data.batch_size=2", "--max-steps", "4",
           "--checkpoint-every", "2", "--select-after", "0", "--threads", "1", "--no-validate",
           "-o", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads([line for line in done.stdout.splitlines() if line.startswith('{"out"')][-1])


def test_device_train_runs_the_training_loop_without_ray_and_exports_the_chosen_model(
        shared_data: Path, tmp_path: Path) -> None:
    full = _device_train(shared_data, tmp_path / "full", "--budget-s", "10000")
    assert full["stopped"] == "end of the configuration" and full["steps"] == 4  # the last: none after warm-up
    card = json.loads((tmp_path / "full" / "model.json").read_text())
    assert card["training"]["harness"] == "benchmarks/device_train.py"
    rows = (tmp_path / "full" / "losses.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # header + one row a step
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints" / "nucflow-train").iterdir()) == [
        "step_00000002", "step_00000004"]
    # A spent budget stops the run at its first checkpoint, which is then the one exported.
    short = _device_train(shared_data, tmp_path / "short", "--budget-s", "0")
    assert short["stopped"] == "budget of 0 s" and short["steps"] == 2
    # Batches built ahead in two loader processes train the same networks, loss for loss.
    ahead = _device_train(shared_data, tmp_path / "ahead", "--budget-s", "10000", "--loaders", "2")
    assert ahead["steps"] == 4

    def losses(run: str) -> list[list[str]]:
        rows = [r.split(",") for r in (tmp_path / run / "losses.csv").read_text().splitlines()]
        return [r[:-1] for r in rows]  # all but "seconds"

    assert losses("ahead") == losses("full")
    # A run stopped from outside is exported from the checkpoints it left.
    again = _device_train(shared_data, tmp_path / "short", "--export-only")
    assert again["stopped"].startswith("from outside") and again["steps"] == 2


def test_device_postprocess_compares_the_two_paths_on_every_validation_set(shared_data: Path) -> None:
    """With no GPU here, ``--device cpu``: the script's own check (the CuPy path ran on a lent H200)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device_postprocess.py"), "--data", str(shared_data),
           "--per-set", "1", "--device", "cpu", "--no-large"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["set"] for r in rows] == ["deepliif", "glioma", "endonuke"]
    assert all(r["equal"] and r["nuclei"] > 0 and r["device_s"] > 0 for r in rows)
    assert "== 3/3 maps with equal labels" in done.stdout
