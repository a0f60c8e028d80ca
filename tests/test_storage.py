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


def test_segment_reads_a_slide_from_the_bucket_like_the_local_file(
    s3: dict[str, str], small_svs: Path, tmp_path: Path
) -> None:
    env = {**os.environ, **s3, "RAY_ADDRESS": ""}
    tables = {}
    for name, slide in (("remote", f"s3://{BUCKET}/small.svs"), ("local", str(small_svs))):
        out = tmp_path / name
        run = subprocess.run(
            [sys.executable, "-m", "nucflow", "segment", slide, "-o", str(out), "--method", "threshold", "-q"],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        summary = json.loads((out / "small" / "summary.json").read_text())
        assert summary["path"] == slide
        tables[name] = _table(out, "small")
    # the same command again: the slide on the bucket is recognised (size, ETag, sample) and skipped
    again = subprocess.run(
        [sys.executable, "-m", "nucflow", "segment", f"s3://{BUCKET}/small.svs", "-o", str(tmp_path / "remote"),
         "--method", "threshold", "-q"], env=env, capture_output=True, text=True, timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in (tmp_path / "remote" / "summary.csv").read_text()
    remote, local = tables["remote"], tables["local"]
    assert len(remote) == len(local) > 10
    pd.testing.assert_frame_equal(pd.DataFrame(remote.drop(columns=["geometry", "geometry_um"])),
                                  pd.DataFrame(local.drop(columns=["geometry", "geometry_um"])))
    assert remote.geometry.geom_equals(local.geometry).all()
