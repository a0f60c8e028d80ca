"""Slides in an S3 bucket, read through fsspec from a real S3 server on loopback (moto's standalone server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from nucflow.errors import SlideError
from nucflow.slide import open_slide
from nucflow.storage import expand_uri, local_copy, remote_identity

BUCKET = "slides"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, small_svs: Path):
    """A moto S3 server on 127.0.0.1 (started and stopped here) with the small SVS and some bad keys."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}", "NUCFLOW_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        fs.put_file(str(small_svs), f"{BUCKET}/small.svs")
        fs.pipe(f"{BUCKET}/notes.svs", b"these are notes, not a slide\n" * 10)
        fs.pipe(f"{BUCKET}/cut.svs", small_svs.read_bytes()[:4000])
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def test_remote_slide_reads_like_the_local_file(s3: dict[str, str], small_svs: Path) -> None:
    with open_slide(f"s3://{BUCKET}/small.svs") as remote, open_slide(small_svs) as local:
        assert remote.source == f"s3://{BUCKET}/small.svs" and remote.vendor == "aperio"
        assert remote.mpp == local.mpp and remote.size == local.size
        region = dict(mpp=0.7, row=10, col=20, rows=200, cols=300)
        assert np.array_equal(remote.read(**region), local.read(**region))
    copy = local_copy(f"s3://{BUCKET}/small.svs")
    assert copy.read_bytes() == small_svs.read_bytes() and str(copy).startswith(s3["NUCFLOW_CACHE"])
    assert local_copy(f"s3://{BUCKET}/small.svs") == copy  # cached: not fetched again
    assert expand_uri(f"s3://{BUCKET}/*.svs") == [f"s3://{BUCKET}/{n}" for n in ("cut.svs", "notes.svs", "small.svs")]
    identity = remote_identity(f"s3://{BUCKET}/small.svs")
    assert identity["size"] == small_svs.stat().st_size and identity["version"]


@pytest.mark.parametrize(("key", "message"), [
    ("nope.svs", "does not exist"),
    ("notes.svs", "not a slide"),
    ("cut.svs", "truncated"),
])
def test_bad_remote_slides_are_named(s3: dict[str, str], key: str, message: str) -> None:
    with pytest.raises(SlideError, match=message) as caught:
        with open_slide(f"s3://{BUCKET}/{key}") as slide:
            slide.read(mpp=0.5, row=0, col=0, rows=256, cols=256)
    assert f"s3://{BUCKET}/{key}" in str(caught.value)


def test_missing_credentials_and_unreachable_store_are_named(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    import fsspec

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    fsspec.filesystem("s3").clear_instance_cache()
    with pytest.raises(SlideError, match="no credentials") as caught:
        open_slide(f"s3://{BUCKET}/small.svs")
    assert f"s3://{BUCKET}/small.svs" in str(caught.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    fsspec.filesystem("s3").clear_instance_cache()
    started = time.monotonic()
    with pytest.raises(SlideError, match="cannot reach") as caught:
        open_slide(f"s3://{BUCKET}/small.svs")
    assert f"s3://{BUCKET}/small.svs" in str(caught.value) and time.monotonic() - started < 60
    monkeypatch.undo()
    fsspec.filesystem("s3").clear_instance_cache()  # no instance with the bad endpoint for later tests


def test_http_slide_from_a_plain_web_server(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setenv("NUCFLOW_CACHE", str(tmp_path / "cache"))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(shared_data / "slides"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with open_slide(f"{base}/CMU-1-Small-Region.svs") as slide:
            assert slide.vendor == "aperio" and slide.size == (2967, 2220)
            assert slide.source == f"{base}/CMU-1-Small-Region.svs"
        with pytest.raises(SlideError, match="does not exist"):
            open_slide(f"{base}/missing.svs")
    finally:
        server.shutdown()


def _table(out: Path, name: str) -> gpd.GeoDataFrame:
    return gpd.read_parquet(out / name / "nuclei.parquet").sort_values("id").reset_index(drop=True)


def _segment_cli(slide: str, out: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nucflow", "segment", slide, "-o", out, "--method", "threshold", "-q", *extra],
        env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def local_table(s3: dict[str, str], small_svs: Path, tmp_path_factory: pytest.TempPathFactory) -> gpd.GeoDataFrame:
    """The table of the small slide segmented from its local file, to a local folder."""
    out = tmp_path_factory.mktemp("local")
    run = _segment_cli(str(small_svs), str(out), {**os.environ, **s3, "RAY_ADDRESS": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    return _table(out, "small")


def _same_table(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    assert len(a) == len(b) > 10
    pd.testing.assert_frame_equal(pd.DataFrame(a.drop(columns=["geometry", "geometry_um"])),
                                  pd.DataFrame(b.drop(columns=["geometry", "geometry_um"])))
    assert a.geometry.geom_equals(b.geometry).all()


def test_segment_reads_a_slide_from_the_bucket_like_the_local_file(
    s3: dict[str, str], local_table: gpd.GeoDataFrame, tmp_path: Path
) -> None:
    env = {**os.environ, **s3, "RAY_ADDRESS": ""}
    run = _segment_cli(f"s3://{BUCKET}/small.svs", str(tmp_path / "remote"), env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "remote" / "small" / "summary.json").read_text())["path"] == f"s3://{BUCKET}/small.svs"
    _same_table(_table(tmp_path / "remote", "small"), local_table)


@pytest.mark.e2e
def test_outputs_in_the_bucket_resume_there_and_equal_a_local_run(
    s3: dict[str, str], local_table: gpd.GeoDataFrame, tmp_path: Path
) -> None:
    import fsspec
    import zarr

    env = {**os.environ, **s3, "RAY_ADDRESS": "", "NUCFLOW_CACHE": str(tmp_path / "node" / "slides")}
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("results")
    remote = _segment_cli(f"s3://{BUCKET}/small.svs", "s3://results/run", env, "--geojson")
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert "summary: s3://results/run/summary.csv" in remote.stdout
    keys = {key.split("results/run/", 1)[1] for key in fs.find("results/run")}
    for name in ("summary.csv", "report.html", "small/summary.json", "small/nuclei.parquet", "small/nuclei.geojson",
                 "small/overlay.png", "small/probability.zarr/zarr.json"):
        assert name in keys, sorted(keys)
    assert not [k for k in keys if ".partial" in k]  # nothing half-written left visible
    with fs.open("results/run/small/nuclei.parquet") as handle:
        first = gpd.read_parquet(handle).sort_values("id").reset_index(drop=True)
    _same_table(first, local_table)
    attrs = zarr.open_group("s3://results/run/small/probability.zarr", mode="r").attrs.asdict()
    assert attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "probability"

    # a run killed after some tiles, resumed from another machine: only the bucket survives
    fs.rm("results/run/small/summary.json")
    fs.rm("results/run/small/nuclei.parquet")
    done = zarr.open_array("s3://results/run/small/probability.zarr/done", mode="r+")
    grid = np.asarray(done[:])
    assert grid.sum() >= 1
    grid.flat[: max(1, grid.size // 2)] = 0
    done[:] = grid
    import shutil

    shutil.rmtree(tmp_path / "node")
    again = _segment_cli(f"s3://{BUCKET}/small.svs", "s3://results/run", env, "--geojson")
    assert again.returncode == 0, again.stderr[-3000:]
    with fs.open("results/run/small/nuclei.parquet") as handle:
        resumed = gpd.read_parquet(handle).sort_values("id").reset_index(drop=True)
    _same_table(resumed, local_table)
    # and once more: finished on the bucket (its summary.json, the slide's size, ETag and sample), so skipped
    skipped = _segment_cli(f"s3://{BUCKET}/small.svs", "s3://results/run", env)
    assert skipped.returncode == 0 and "skipped" in skipped.stdout, skipped.stdout + skipped.stderr[-2000:]


@pytest.mark.e2e
def test_a_run_killed_while_writing_to_the_bucket_resumes_there_to_the_local_table(
    s3: dict[str, str], tmp_path: Path, kill_mid_run
) -> None:
    import shutil
    import tempfile

    import fsspec
    import zarr

    from nucflow.slide.synthetic import demo_ihc_image, write_svs

    slide = write_svs(tmp_path / "big.svs", demo_ihc_image(repeats=2), mpp=0.5)  # 1024 px
    # 64 px cores: 16 x 16 = 256 tiles, each written to the bucket, so the kill lands mid-run
    # (tiles are recorded at most once a second)
    config = tmp_path / "segment.yaml"
    config.write_text("inference:\n  tile_size: 128\n  margin: 32\n")
    ray_tmp = tempfile.mkdtemp(prefix="nfk-")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, **s3, "RAY_ADDRESS": "", "RAY_TMPDIR": ray_tmp, "NUCFLOW_CACHE": str(tmp_path / "node")}
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("killed")
    cmd = [sys.executable, "-m", "nucflow", "segment", str(slide), "-o", "s3://killed/run", "--method", "threshold",
           "--config", str(config), "-q"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        done = kill_mid_run(proc, "s3://killed/run/big/probability.zarr/done")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert 20 <= done < 16 * 16, f"the kill should land mid-run; {done} tiles were recorded"
    keys = fs.find("killed/run")
    assert not [k for k in keys if k.endswith(("big/summary.json", "big/nuclei.parquet"))], keys

    resumed = _segment_cli(str(slide), "s3://killed/run", env, "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fs.invalidate_cache()  # the listing above is cached; the resumed run has written since
    grid = np.asarray(zarr.open_array("s3://killed/run/big/probability.zarr/done", mode="r")[:])
    assert grid.sum() > done  # the resumed run recorded the rest in the bucket's grid
    local = _segment_cli(str(slide), str(tmp_path / "local"), env, "--config", str(config))
    assert local.returncode == 0, local.stderr[-3000:]
    with fs.open("killed/run/big/nuclei.parquet") as handle:
        table = gpd.read_parquet(handle).sort_values("id").reset_index(drop=True)
    _same_table(table, _table(tmp_path / "local", "big"))
    assert not [k for k in fs.find("killed/run") if ".partial" in k]  # nothing half-written left visible


def test_a_missing_output_bucket_is_refused_before_starting(s3: dict[str, str], small_svs: Path) -> None:
    env = {**os.environ, **s3, "RAY_ADDRESS": ""}
    missing = _segment_cli(str(small_svs), "s3://no-such-bucket/run", env)
    assert missing.returncode != 0 and "s3://no-such-bucket/run" in missing.stderr
    assert "nothing was started" in missing.stderr
