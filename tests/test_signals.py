"""Stopping a real ``nucflow segment`` with real signals, and which Ray a local run uses.

Every run here is a real subprocess with its own local Ray. Waits are bounded polls on what
the run has recorded (the Zarr ``done`` grid), never assumptions about how fast it goes, and
no assertion is about how long anything took.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import zarr

from nucflow.slide.synthetic import demo_ihc_image, write_svs

VENV_BIN = Path(sys.executable).parent
NUCFLOW = [sys.executable, "-m", "nucflow"]
_WAIT_S = 600  # generous: a loaded 2-core machine starts Ray in minutes, not seconds

pytestmark = pytest.mark.e2e  # every test here starts real runs and Ray heads of its own


def _ray_env(ray_tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return env


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="nfs-")  # short: Ray's socket paths must fit 107 bytes
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def _done_grid(map_path: Path) -> np.ndarray | None:
    try:
        return np.asarray(zarr.open_array(str(map_path / "done"), mode="r")[:], dtype=bool)
    except Exception:  # noqa: BLE001 - not created yet, or being replaced
        return None


def _wait_for_done(proc: subprocess.Popen[bytes], map_path: Path, at_least: int, log: Path) -> int:
    """Poll the run's ``done`` record until it holds ``at_least`` tiles; the count seen."""
    deadline = time.monotonic() + _WAIT_S
    done = 0
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before {at_least} tiles were recorded:\n{log.read_text()[-3000:]}"
        grid = _done_grid(map_path)
        done = int(grid.sum()) if grid is not None else 0
        if done >= at_least:
            return done
        time.sleep(0.2)
    raise AssertionError(f"{done} tiles recorded after {_WAIT_S} s, waiting for {at_least}")


def _terminal_signals() -> None:
    """In the child: SIGINT as a terminal's foreground job has it. A shell starts background jobs
    (``pytest ... &``) with SIGINT ignored and children inherit that, so Ctrl-C would not reach the run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals, *, group: bool) -> int:
    (os.killpg if group else os.kill)(proc.pid, sig)
    try:
        return proc.wait(timeout=_WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"the run did not stop within {_WAIT_S} s of {sig.name}") from None


def _chunk_files(zarr_path: Path, grid: np.ndarray) -> dict[Path, int]:
    """Modification stamps of the probability chunks of tiles the done grid records."""
    stamps = {}
    for row, col in zip(*np.nonzero(grid), strict=True):
        chunk = zarr_path / "probability" / "c" / str(row) / str(col)
        if chunk.exists():  # a chunk equal to the fill value is never written
            stamps[chunk] = chunk.stat().st_mtime_ns
    return stamps


@pytest.mark.timeout(2400)
def test_sigint_and_sigterm_stop_cleanly_and_the_resume_gives_the_uninterrupted_table(
    tmp_path: Path, ray_tmp: str
) -> None:
    slide = write_svs(tmp_path / "big.svs", demo_ihc_image(repeats=4), mpp=0.5)  # 2048 px
    # 32 px cores at 0.5 µm/px: 64 x 64 = 4096 small tiles, so that even an idle fast machine
    # is still mid-run after each signal (tiles are recorded at most once a second).
    config = tmp_path / "segment.yaml"
    config.write_text("method: threshold\ninference:\n  tile_size: 96\n  margin: 32\n")
    tiles = 64 * 64
    out = tmp_path / "out"
    zarr_path = out / "big" / "probability.zarr"
    cmd = [*NUCFLOW, "segment", str(slide), "--config", str(config), "-q", "-o"]
    env = _ray_env(ray_tmp)

    recorded = 0
    # Ctrl-C as a terminal sends it (to the whole process group), then SIGTERM as SLURM or
    # Kubernetes send it (to the process), each once the run has recorded 20 more tiles.
    for n, (sig, group, status) in enumerate(((signal.SIGINT, True, 130), (signal.SIGTERM, False, 143))):
        log = tmp_path / f"run{n}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen([*cmd, str(out)], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_terminal_signals)
        try:
            seen = _wait_for_done(proc, zarr_path, recorded + 20, log)
            code = _stop(proc, sig, group=group)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = log.read_text()
        assert code == status, f"{sig.name}: exit {code}\n{text[-3000:]}"
        assert f"nucflow segment: stopped by {sig.name}; finished tiles are kept in {out}" in text, text[-3000:]
        for crash in ("SIGABRT", "received at time", "Traceback", "Aborted", "core dumped"):
            assert crash not in text, f"{sig.name}: {crash!r} in the output:\n{text[-3000:]}"
        grid = _done_grid(zarr_path)
        assert grid is not None
        assert seen <= int(grid.sum()) < tiles, "every tile recorded before the signal is kept; the run was mid-way"
        recorded = int(grid.sum())
        assert not (out / "big" / "nuclei.parquet").exists() and not (out / "big" / "summary.json").exists()

    kept = _chunk_files(zarr_path, grid)
    assert kept, "some finished tiles have non-empty chunks"
    resumed = subprocess.run([*cmd, str(out)], env=env, capture_output=True, text=True, timeout=_WAIT_S * 2)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # The tiles finished before the signals were not predicted again: their chunks are untouched.
    assert {path: path.stat().st_mtime_ns for path in kept} == kept

    fresh = subprocess.run([*cmd, str(tmp_path / "fresh")], env=env, capture_output=True, text=True,
                           timeout=_WAIT_S * 2)
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    planned = _done_grid(tmp_path / "fresh" / "big" / "probability.zarr")  # cores on tissue only
    assert planned is not None and planned.sum() > recorded
    np.testing.assert_array_equal(_done_grid(zarr_path), planned)
    a = gpd.read_parquet(out / "big" / "nuclei.parquet")
    b = gpd.read_parquet(tmp_path / "fresh" / "big" / "nuclei.parquet")
    assert len(a) == len(b) > 100
    pd.testing.assert_frame_equal(pd.DataFrame(a.drop(columns=["geometry", "geometry_um"])),
                                  pd.DataFrame(b.drop(columns=["geometry", "geometry_um"])))
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()


# --------------------------------------------------------------------------- which Ray


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def foreign_head(ray_tmp: str) -> Iterator[str]:
    """A `ray start --head` whose address sits in Ray's temp folder, where ``ray.init()`` looks.

    Only this process group is stopped afterwards (``ray stop`` would stop every Ray here).
    """
    port = _free_port()
    args = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=1", "--num-gpus=0",
            "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--include-dashboard=false",
            f"--port={port}", f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={Path(ray_tmp) / 'ray'}"]
    log = Path(ray_tmp) / "head.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(args, env=_ray_env(ray_tmp), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        recorded = Path(ray_tmp) / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + _WAIT_S
        while not (recorded.is_file() and recorded.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield recorded.read_text().strip()
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=5)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def test_a_local_run_starts_its_own_ray_even_with_a_cluster_in_rays_temp_folder(
    tmp_path: Path, ray_tmp: str, foreign_head: str, small_svs: Path
) -> None:
    out = tmp_path / "out"
    done = subprocess.run([*NUCFLOW, "-v", "segment", str(small_svs), "-o", str(out), "--method", "threshold", "-q"],
                          env=_ray_env(ray_tmp), capture_output=True, text=True, timeout=_WAIT_S * 2)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert (out / "small" / "nuclei.parquet").is_file()
    line = next((x for x in text.splitlines() if "nucflow.cluster: started a local Ray at " in x), None)
    assert line is not None, text[-3000:]
    assert foreign_head not in line and "joined" not in text, line
