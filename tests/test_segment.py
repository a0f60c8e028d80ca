"""The segment pipeline end to end: real slides, a real local Ray, real Zarr and Dask."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner

from nucflow.cli import main
from nucflow.errors import ConfigError, InputError, PreflightError
from nucflow.inference import predict_image, predict_whole
from nucflow.inference.actors import ACTOR_PREFIX
from nucflow.inference.predictors import UNetPredictor
from nucflow.inference.store import ProbabilityMap, create_map
from nucflow.inference.store import read_rgb as read_stored_rgb
from nucflow.models import load_model
from nucflow.pipeline import load_segment_config, segment
from nucflow.pipeline.image import (
    find_tissue,
    interior_markers,
    mask_shrink_um,
    method_spec,
    postprocess_profile,
    with_stain_profile,
)
from nucflow.pipeline.plan import plan_slide
from nucflow.postprocess import label_nuclei, load_stain_profile, nuclei_table, read_rgb_from_array
from nucflow.slide import open_slide, tile_grid
from nucflow.slide.synthetic import demo_ihc_image, write_svs
from nucflow.slide.tiles import Tile
from nucflow.stain import stain_gate

pytestmark = pytest.mark.usefixtures("ray_local")

_DEFAULTS = load_segment_config()
SMALL_TILES = replace(_DEFAULTS, inference=replace(_DEFAULTS.inference, tile_size=128, margin=32))


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory: pytest.TempPathFactory, demo_svs: Path, tiny_model: Path):
    """The demo slide segmented once with the tiny UNet in 64 tiles of 128 px (64 px cores)."""
    out = tmp_path_factory.mktemp("unet-run")
    result = segment([demo_svs], out, model=tiny_model, config=SMALL_TILES, geojson=True)
    return out, result


def _table(out: Path, key: str) -> gpd.GeoDataFrame:
    return gpd.read_parquet(out / key / "nuclei.parquet")


def test_outputs_of_a_slide(unet_run) -> None:
    out, result = unet_run
    assert [s.status for s in result.slides] == ["ok"]
    slide_dir = out / "demo"
    for name in ("probability.zarr", "nuclei.parquet", "nuclei.geojson", "overlay.png", "summary.json"):
        assert (slide_dir / name).exists(), name
    summary = json.loads((slide_dir / "summary.json").read_text())
    table = _table(out, "demo")
    assert summary["nuclei"] == len(table)
    assert summary["positive"] == int(table["dab_positive"].sum())
    assert {"plan", "inference", "postprocess"} <= set(summary["seconds"])
    assert summary["tissue_area_mm2"] == pytest.approx(1024 * 1024 * 0.25**2 / 1e6, rel=0.1)
    csv = pd.read_csv(out / "summary.csv")
    assert list(csv["slide"]) == ["demo"] and csv.loc[0, "nuclei"] == len(table)
    scoring = summary["scoring"]  # scores from the table's intensity classes (tests/test_scoring.py)
    assert scoring["positive"] == summary["positive"] == int((table["dab_intensity"] > 0).sum())
    assert sum(scoring["intensity_counts"].values()) == len(table)
    assert csv.loc[0, "h_score"] == pytest.approx(summary["h_score"])
    assert "<td class='name'><a href='#slide-demo'>demo</a></td>" in (out / "report.html").read_text()
    assert not list(out.rglob("*.partial*")) and not list(out.rglob(".*.tmp"))


def test_probability_map_attributes(unet_run, tiny_model: Path) -> None:
    out, _ = unet_run
    group = zarr.open_group(str(out / "demo" / "probability.zarr"), mode="r")
    attrs = dict(group.attrs)
    assert attrs["mpp"] == 0.5 and attrs["slide_mpp"] == 0.25 and attrs["level0_scale"] == 2.0
    assert attrs["level0_offset"] == [0, 0]
    assert attrs["model_id"] == load_model(tiny_model).card.model_id
    assert attrs["nucflow_version"]
    array = group["probability"]
    assert array.dtype == np.uint8 and array.shape == (512, 512)
    assert array.chunks == (64, 64) and attrs["tile_core"] == 64 and attrs["tile_margin"] == 32
    assert group["done"][:].all()


def test_stitched_map_matches_in_memory_and_whole_image_prediction(unet_run, demo_svs: Path, tiny_model: Path) -> None:
    out, _ = unet_run
    stitched = zarr.open_array(str(out / "demo" / "probability.zarr" / "probability"), mode="r")[:]
    with open_slide(demo_svs) as slide:
        rgb = slide.read(mpp=0.5, row=0, col=0, rows=512, cols=512)
    model = load_model(tiny_model)
    tiled = predict_image(rgb, model, margin=32, tile_size=128)
    # The run's ki67 profile gates each core's faint brown pixels (stain_gate); gate the same cores.
    profile = load_stain_profile("ki67")
    keep = np.ones(tiled.shape, bool)
    for tile in tile_grid(tiled.shape, tile_size=128, margin=32).tiles:
        core = (slice(tile.row, tile.row + tile.rows), slice(tile.col, tile.col + tile.cols))
        keep[core] = stain_gate(rgb[core], tiled[core], factor=profile.stain_gate, threshold=profile.threshold)
    assert 0 < (~keep).sum() < keep.sum()
    tiled = np.where(keep, tiled, 0.0)
    # Same tiles in memory: identical up to the uint8 quantisation of the map.
    assert np.abs(stitched / 255.0 - tiled).max() <= 0.5 / 255 + 1e-6
    whole = np.where(keep, predict_whole(rgb, UNetPredictor(model)), 0.0)
    diff = np.abs(stitched / 255.0 - whole)
    # Tolerance: away from the image border every seam pixel equals the one-pass prediction up
    # to uint8 rounding (0.5/255), since 32 px of context cover this UNet's receptive field.
    # Within 32 px of the image border the one pass sees zero padding where tiles see white
    # glass, which moves probabilities by at most 0.1.
    assert diff[32:-32, 32:-32].max() <= 0.5 / 255 + 1e-6
    assert diff.max() < 0.1


def test_blocked_postprocessing_counts_equal_in_memory(unet_run) -> None:
    out, _ = unet_run
    prob = zarr.open_array(str(out / "demo" / "probability.zarr" / "probability"), mode="r")[:]
    labels = label_nuclei(prob, mpp=0.5, config=load_stain_profile("ki67"))
    assert len(_table(out, "demo")) == len(np.unique(labels)) - 1


def test_stain_columns_equal_in_memory_from_the_tiles_pixels(unet_run, demo_svs: Path, tiny_model: Path) -> None:
    """The finishing task takes the stain columns' pixels from the ``rgb`` array the model actors
    wrote beside the map (then removes it): the table equals the blocked table computed on the
    slide's pixels read whole, every column."""
    out, _ = unet_run
    group = zarr.open_group(str(out / "demo" / "probability.zarr"), mode="r")
    assert not {"rgb", "thumbnail", "tissue"} & set(group)  # working copies, removed once the slide is finished
    with open_slide(demo_svs) as slide:
        rgb = slide.read(mpp=0.5, row=0, col=0, rows=512, cols=512)
    config = replace(SMALL_TILES, model=str(tiny_model))
    spec = method_spec(config)
    profile = postprocess_profile(with_stain_profile(config, spec), shrink_um=mask_shrink_um(spec),
                                  interior=interior_markers(spec))
    expected = nuclei_table(out / "demo" / "probability.zarr", config=profile, read_rgb=read_rgb_from_array(rgb),
                            block_size=config.postprocess_block)
    table = _table(out, "demo")
    assert len(table) == len(expected) > 0 and table["dab_od"].notna().all()
    pd.testing.assert_frame_equal(pd.DataFrame(table.drop(columns=["geometry", "geometry_um"])),
                                  pd.DataFrame(expected.drop(columns=["geometry", "geometry_um"])))


def test_stored_rgb_reads_the_slide_where_no_core_was_written(tmp_path: Path, demo_svs: Path) -> None:
    """``read_rgb`` of a map whose rgb array has some cores written: those from the array, the rest
    (a core never written) from the slide, equal to the slide read whole."""
    with open_slide(demo_svs) as slide:
        whole = slide.read(mpp=0.5, row=0, col=0, rows=256, cols=256)
        store = create_map(tmp_path / "p.zarr", shape=(256, 256), core=64, attrs={"mpp": 0.5}, rgb=True)
        array = store.rgb_array(mode="r+")
        assert array is not None and store.array().chunks == array.chunks[:2]
        assert array.compressors == () and array.filters == ()  # a working copy, stored raw (issue 13)
        assert array.config.write_empty_chunks  # no all-zero check per chunk written (1.75 ms per core)
        written = [Tile(0, 0, 0, 64, 64, 32, 128), Tile(1, 64, 128, 64, 64, 32, 128)]
        for tile in written:
            store.write_rgb(tile, whole[tile.row : tile.row + 64, tile.col : tile.col + 64], array=array)
        calls = []

        def read_slide(row: int, col: int, rows: int, cols: int) -> np.ndarray:
            calls.append((row, col, rows, cols))
            return slide.read(mpp=0.5, row=row, col=col, rows=rows, cols=cols)

        region = read_stored_rgb(array, read_slide, 10, 20, 150, 200)
    assert np.array_equal(region, whole[10:160, 20:220])
    assert (10, 20, 54, 44) not in calls and (64, 128, 64, 64) not in calls  # the written cores' parts
    assert (10, 64, 54, 64) in calls  # a core never written, from the slide
    store.drop_rgb()
    assert store.rgb_array() is None


def test_planning_keeps_the_thumbnail_and_tissue_for_the_finishing_task(tmp_path: Path, demo_svs: Path,
                                                                        tiny_model: Path) -> None:
    """A new map holds the thumbnail and tissue mask planning found (the finishing task reads them
    instead of finding them again): the same as find_tissue gives."""
    config = replace(SMALL_TILES, model=str(tiny_model))
    plan = plan_slide(demo_svs, "demo", tmp_path, spec=method_spec(config), config=config, mpp=None, overwrite=False)
    kept = ProbabilityMap(plan.map_path).read_thumbnail()
    with open_slide(demo_svs) as slide:
        thumb, thumb_mpp, tissue = find_tissue(slide, config.tissue)
    assert kept is not None and kept[1] == thumb_mpp == plan.thumbnail_mpp
    assert np.array_equal(kept[0], thumb) and np.array_equal(kept[2], tissue) and tissue.any() and kept[2].dtype == bool
    ProbabilityMap(plan.map_path).drop_rgb()
    assert ProbabilityMap(plan.map_path).read_thumbnail() is None


def test_cpu_model_actors_write_the_cores_pixels_and_gpu_ones_leave_them(tmp_path: Path, demo_svs: Path,
                                                                          tiny_model: Path) -> None:
    """A CPU actor writes each core's pixels (as Slide.read gives them) beside its probabilities; a
    GPU actor's CPU feeds the GPU, so it leaves rgb empty (the finishing task then reads the slide)."""
    from nucflow.inference.actors import TileWorker, WorkItem

    config = replace(SMALL_TILES, model=str(tiny_model))
    spec = method_spec(config)
    plan = plan_slide(demo_svs, "demo", tmp_path, spec=spec, config=config, mpp=None, overwrite=False)
    worker = TileWorker(spec, device="cpu", threads=1, amp=False, channels_last=False)
    first, second = plan.grid.tiles[:2]
    for tile, keep in ((first, True), (second, False)):
        worker.keep_rgb = keep  # as a GPU actor sets it
        worker.process(WorkItem("demo", plan.path, None, plan.map_path, plan.mpp, (tile,), plan.params))
    stored = ProbabilityMap(plan.map_path).rgb_array()
    with open_slide(demo_svs) as slide:
        expected = slide.read(mpp=plan.mpp, row=first.row, col=first.col, rows=first.rows, cols=first.cols)
    assert stored is not None
    assert np.array_equal(stored[first.row : first.row + first.rows, first.col : first.col + first.cols], expected)
    assert not np.asarray(stored[second.row : second.row + second.rows, second.col : second.col + second.cols]).any()


def test_geojson_is_a_qupath_detection_collection(unet_run) -> None:
    out, _ = unet_run
    collection = json.loads((out / "demo" / "nuclei.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == len(_table(out, "demo"))
    if collection["features"]:
        props = collection["features"][0]["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] in ("Negative", "1+", "2+", "3+")


def test_rerun_skips_finished_slides_and_overwrite_redoes(unet_run, demo_svs: Path, tiny_model: Path) -> None:
    out, _ = unet_run
    before = (out / "demo" / "summary.json").stat().st_mtime_ns
    again = segment([demo_svs], out, model=tiny_model, config=SMALL_TILES, geojson=True)
    assert [s.status for s in again.slides] == ["skipped"]
    assert (out / "demo" / "summary.json").stat().st_mtime_ns == before
    assert pd.read_csv(out / "summary.csv").loc[0, "status"] == "skipped"


_NOOP_RERUN = """
import json, sys, time
from dataclasses import replace
started = time.perf_counter()
from nucflow.pipeline import load_segment_config, segment
defaults = load_segment_config()
config = replace(defaults, inference=replace(defaults.inference, tile_size=128, margin=32))
result = segment([sys.argv[1]], sys.argv[2], model=sys.argv[3], config=config, geojson=True)
heavy = ("ray", "torch", "dask", "skimage", "geopandas", "scipy", "matplotlib", "zarr")
print(json.dumps({"status": [s.status for s in result.slides], "loaded": [m for m in heavy if m in sys.modules],
                  "seconds": time.perf_counter() - started}))
"""


def test_noop_rerun_finishes_without_starting_ray(unet_run, demo_svs: Path, tiny_model: Path, tmp_path: Path) -> None:
    """All slides finished with the same request: the rerun, in a fresh process, reads each slide's
    summary.json and identity and ends, without importing Ray, torch, Dask, scikit-image or the
    report's matplotlib; Ray's temp folder gets no session. A second rerun leaves summary.csv and
    report.html as they are (the same slides, statuses and figures)."""
    out, _ = unet_run
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""}

    def rerun() -> dict:
        done = subprocess.run([sys.executable, "-c", _NOOP_RERUN, str(demo_svs), str(out), str(tiny_model)],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    report = rerun()
    assert report["status"] == ["skipped"] and report["loaded"] in ([], ["matplotlib"]), report
    assert list(ray_tmp.iterdir()) == []
    written = {name: (out / name).stat().st_mtime_ns for name in ("summary.csv", "report.html")}
    assert pd.read_csv(out / "summary.csv").loc[0, "status"] == "skipped"
    again = rerun()
    assert again["status"] == ["skipped"] and again["loaded"] == [], again
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written


def test_other_model_on_same_output_needs_overwrite(tmp_path: Path, small_svs: Path, tiny_model: Path) -> None:
    segment([small_svs], tmp_path, method="threshold")
    clash = segment([small_svs], tmp_path, model=tiny_model)
    assert clash.slides[0].status == "failed" and "pass --overwrite" in clash.slides[0].error
    assert json.loads((tmp_path / "small" / "summary.json").read_text())["model_id"] == "baseline-threshold"
    redone = segment([small_svs], tmp_path, model=tiny_model, overwrite=True)
    assert [s.status for s in redone.slides] == ["ok"], redone.slides[0].error


def test_many_slides_failures_and_name_clashes(tmp_path: Path, small_svs: Path, shared_data: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(small_svs, tmp_path / folder / "small.svs")
    broken = tmp_path / "broken.svs"
    broken.write_bytes(small_svs.read_bytes()[:3000])
    blank = write_svs(tmp_path / "blank.svs", np.full((512, 512, 3), 245, np.uint8), mpp=0.5)
    ome = shared_data / "slides" / "OS-2-vsi.ome.tif"
    cmu = shared_data / "slides" / "CMU-1-Small-Region.svs"
    out = tmp_path / "out"
    slides = [str(tmp_path / "*" / "small.svs"), broken, blank, ome, cmu]
    result = segment(slides, out, method="threshold")
    by_status = {s.slide: s.status for s in result.slides}
    assert sorted(k for k, v in by_status.items() if v == "ok") == sorted(
        ["CMU-1-Small-Region", "OS-2-vsi", "blank", *[k for k in by_status if k.startswith("small-")]]
    )
    assert len([k for k in by_status if k.startswith("small-")]) == 2
    assert by_status["broken"] == "failed" and "broken.svs" in result.failed[0].error
    assert json.loads((out / "blank" / "summary.json").read_text())["nuclei"] == 0
    assert len(_table(out, "blank")) == 0
    for real in ("CMU-1-Small-Region", "OS-2-vsi"):
        assert json.loads((out / real / "summary.json").read_text())["nuclei"] > 50
    csv = pd.read_csv(out / "summary.csv")
    assert set(csv["status"]) == {"ok", "failed"} and csv.set_index("slide").loc["broken", "error"]
    report = (out / "report.html").read_text()  # the cohort page of this partly failed run
    assert "<tr class='failed'><td class='name'>broken</td>" in report
    assert all(f"id='slide-{k}'" in report for k, v in by_status.items() if v == "ok")
    small = [k for k in by_status if k.startswith("small-")]
    tables = [_table(out, k) for k in small]
    assert len(tables[0]) > 10 and len(tables[0]) == len(tables[1])


def test_input_errors_name_the_input(tmp_path: Path, small_svs: Path) -> None:
    with pytest.raises(InputError, match="no slide matches"):
        segment([str(tmp_path / "*.svs")], tmp_path / "out", method="threshold")
    bad_model = tmp_path / "bad.safetensors"
    bad_model.write_bytes(b"not weights")
    with pytest.raises(PreflightError, match="bad"):  # a ModelError, reported before Ray starts
        segment([small_svs], tmp_path / "out", model=bad_model)
    config = tmp_path / "segment.yaml"
    config.write_text("method: threshold\ntile_szie: 256\n")
    with pytest.raises(ConfigError, match="tile_szie.*segment.yaml"):
        load_segment_config(config)
    config.write_text("inference:\n  margni: 3\n")
    with pytest.raises(ConfigError, match="margni"):
        load_segment_config(config)


def test_cli_reports_failures_with_exit_status(tmp_path: Path, small_svs: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    runner = CliRunner()
    result = runner.invoke(
        main, ["segment", str(small_svs), str(junk), "-o", str(tmp_path / "o"), "--method", "threshold", "-q"]
    )
    assert result.exit_code == 1
    assert "1 slide(s) failed: junk" in result.output
    assert "small:" in result.output
    missing = runner.invoke(main, ["segment", str(tmp_path / "none*.svs"), "-o", str(tmp_path / "o")])
    assert missing.exit_code == 1 and "no slide matches" in missing.output


def test_killed_model_actor_is_replaced_and_its_tiles_retried(
    tmp_path: Path, demo_svs: Path, tiny_model: Path, unet_run, caplog: pytest.LogCaptureFixture
) -> None:
    import ray

    killed: list[str] = []

    def kill_first_actor(event) -> None:
        if killed or event.stage != "tiles":
            return
        names = [
            a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(ACTOR_PREFIX)
        ]
        killed.append(names[0])
        ray.kill(ray.get_actor(names[0]))

    from nucflow.cluster import load_cluster_config

    cluster = replace(load_cluster_config(), batch_size_per_cpu=1, cpus_per_actor=1)
    with caplog.at_level(logging.WARNING):
        result = segment(
            [demo_svs],
            tmp_path,
            model=tiny_model,
            config=SMALL_TILES,
            cluster_config=cluster,
            progress=kill_first_actor,
        )
    assert killed and [s.status for s in result.slides] == ["ok"]
    assert "model actor died" in caplog.text
    reference = zarr.open_array(str(unet_run[0] / "demo" / "probability.zarr" / "probability"))[:]
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "demo" / "probability.zarr" / "probability"))[:], reference
    )
    assert len(_table(tmp_path, "demo")) == len(_table(unet_run[0], "demo"))


@pytest.mark.e2e
def test_resume_after_a_real_kill_ends_with_the_same_table(tmp_path: Path, tiny_model: Path, kill_mid_run) -> None:
    slide = write_svs(tmp_path / "big.svs", demo_ihc_image(repeats=4), mpp=0.5)  # 2048 px
    config = tmp_path / "segment.yaml"  # 128 px tiles with 64 px cores: 1024 tiles, seconds of work
    config.write_text("inference:\n  tile_size: 128\n  margin: 32\n")
    tiles = 32 * 32
    out = tmp_path / "out"
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="nf-ray-")}  # short: socket paths <= 107 bytes
    cmd = [sys.executable, "-m", "nucflow", "segment", str(slide), "-o", str(out), "--model", str(tiny_model)]
    cmd += ["--config", str(config), "-q"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = kill_mid_run(proc, str(out / "big" / "probability.zarr" / "done"))
    assert 20 <= done < tiles, f"kill should land mid-run, {done} tiles were done"
    assert not (out / "big" / "nuclei.parquet").exists() and not (out / "big" / "summary.json").exists()

    seen: list[int] = []
    resumed = segment(
        [slide], out, model=tiny_model, config=SMALL_TILES,
        progress=lambda e: seen.append(e.total) if e.stage == "tiles" else None,
    )
    assert [s.status for s in resumed.slides] == ["ok"], resumed.slides[0].error
    assert seen and seen[0] <= tiles - 20  # only the unfinished tiles ran again
    fresh = segment([slide], tmp_path / "fresh", model=tiny_model, config=SMALL_TILES)
    assert fresh.slides[0].status == "ok"
    a, b = _table(out, "big"), _table(tmp_path / "fresh", "big")
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(
        pd.DataFrame(a.drop(columns=["geometry", "geometry_um"])),
        pd.DataFrame(b.drop(columns=["geometry", "geometry_um"])),
    )
    assert a.geometry.geom_equals(b.geometry).all()


def test_finishing_follows_tiles_as_they_are_recorded(
    tmp_path: Path, demo_svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The finishing task starts before a slide's last tile: each part of the map waits until
    # the done grid shows its tiles written, and the table is the one of a finished map.
    # Checked by the order of events (the task polls the grid and finds the late tiles missing,
    # then they are recorded, then it finishes), never by how long anything took. The parts
    # labelled while tiles are missing run on threads_while_predicting Dask threads, the
    # others on postprocess_threads.
    import threading

    from nucflow.inference.store import ProbabilityMap
    from nucflow.pipeline.finish import finish_slide
    from nucflow.pipeline.image import method_spec
    from nucflow.pipeline.plan import plan_slide
    from nucflow.postprocess import _blocked

    config = replace(SMALL_TILES, method="threshold", postprocess_block=64, postprocess_threads=2)
    segment([demo_svs], tmp_path / "run", config=config)
    spec = method_spec(config)
    tables = {}
    events: list[str] = []
    late_chunks: set[tuple[int, int]] = set()  # filled for the "following" run only
    failure: list[BaseException] = []
    polled = ProbabilityMap.done_chunks

    def recording_poll(self: ProbabilityMap) -> set[tuple[int, int]]:
        chunks = polled(self)
        if late_chunks:
            events.append("polled: late tiles missing" if late_chunks - chunks else "polled: all recorded")
        return chunks

    computed = _blocked._BlockedRun.compute

    def recording_compute(self, grid, *, scheduler: str, num_workers: int | None) -> list:
        if late_chunks:
            events.append(f"part on {num_workers} threads")
        return computed(self, grid, scheduler=scheduler, num_workers=num_workers)

    def finish_following(plan) -> None:
        try:
            finish_slide(plan, config, geojson=False, poll_s=0.05, threads_while_predicting=1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failure.append(exc)

    monkeypatch.setattr(ProbabilityMap, "done_chunks", recording_poll)
    monkeypatch.setattr(_blocked._BlockedRun, "compute", recording_compute)
    for name in ("reference", "following"):
        shutil.copytree(tmp_path / "run" / "demo" / "probability.zarr", tmp_path / name / "demo" / "probability.zarr")
        plan = plan_slide(demo_svs, "demo", tmp_path / name, spec=spec, config=config, mpp=None, overwrite=False)
        assert plan.status == "todo" and plan.todo == () and plan.grid is not None
        if name == "reference":
            finish_slide(plan, config, geojson=False)
        else:
            last_row = max(t.row for t in plan.grid.tiles)
            late = [t for t in plan.grid.tiles if t.row == last_row]  # the last row's tiles
            late_chunks.update(t.chunk for t in late)
            done = zarr.open_array(f"{plan.map_path}/done", mode="r+")
            for tile in late:
                done[tile.chunk] = 0
            task = threading.Thread(target=finish_following, args=(plan,))
            task.start()
            deadline = time.monotonic() + 600  # bounded, generous: a loaded machine is slow
            while events.count("polled: late tiles missing") < 2 and task.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert events.count("polled: late tiles missing") >= 2, (events, failure)
            assert task.is_alive() and not (tmp_path / name / "demo" / "nuclei.parquet").exists()
            events.append("late tiles recorded")  # before the write: a poll that sees them comes after
            ProbabilityMap(plan.map_path).mark_done(late)
            task.join(timeout=600)
            assert not task.is_alive() and not failure, failure
            # It waited while the tiles were missing and went on once it saw them recorded.
            assert "polled: all recorded" in events[events.index("late tiles recorded"):]
            before, after = events[: events.index("late tiles recorded")], events[events.index("late tiles recorded"):]
            assert "part on 1 threads" in before and "part on 2 threads" not in before, events
            assert "part on 2 threads" in after and "part on 1 threads" not in after, events
            assert (tmp_path / name / "demo" / "summary.json").is_file()
        tables[name] = _table(tmp_path / name, "demo")
    assert len(tables["following"]) == len(tables["reference"]) > 10
    assert tables["following"].geometry.geom_equals_exact(tables["reference"].geometry, tolerance=0).all()
