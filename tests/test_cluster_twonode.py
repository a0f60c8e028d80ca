"""A real two-node Ray cluster on loopback, with token authentication, driven like a user would.

The head and one worker node each run ``ray start --block`` in their own process group, with
their own temp dir and one CPU; teardown kills those two process groups only (never
``ray stop``, which would stop every Ray on the machine).

A path only one node can see: both nodes share this host's filesystem, so the worker node is
started in its own mount namespace (``unshare --mount``, as root) with an empty tmpfs mounted
over ``node-local/``. The driver and head see what is written there; the worker node really
does not, exactly as with a node-local disk on a second machine. Where mount namespaces are
not available, that one test is skipped and the rest still run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nucflow.cluster import JobClient
from nucflow.errors import ClusterError

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
NUCFLOW = str(VENV_BIN / "nucflow")

#: Every wait below is a bounded poll or a limit this generous: on a loaded 2-core machine
#: Ray nodes, jobs and Ray Train take minutes, and no test asserts on how long anything took.
PATIENCE_S = 900

pytestmark = [pytest.mark.timeout(3 * PATIENCE_S), pytest.mark.e2e]


@dataclass(frozen=True)
class TwoNodes:
    gcs: str
    jobs_url: str
    token: str
    env: dict[str, str]
    root: Path
    node_local: Path | None

    def client(self) -> JobClient:
        return JobClient(self.jobs_url, token=self.token)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one ``ray start --block`` and everything it spawned: its own process group."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


def _wait_for_nodes(cluster: TwoNodes, procs: list[subprocess.Popen[bytes]], want: int) -> None:
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a Ray node exited early; see logs in {cluster.root}")
        try:
            api = StateApiClient(cluster.jobs_url, headers={"Authorization": f"Bearer {cluster.token}"})
            nodes = api.list(StateResource.NODES, options=ListApiOptions(), raise_on_missing_output=False)
            if sum(n.state == "ALIVE" for n in nodes) >= want:
                return
        except Exception:  # noqa: BLE001 - the dashboard is still starting
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the two-node cluster did not come up in {PATIENCE_S} s; logs in {cluster.root}")


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    """Head + worker on 127.0.0.1, one CPU each, token auth on; only these processes are stopped."""
    root = Path(tempfile.mkdtemp(prefix="nfc-"))  # short: Ray's socket paths must fit 107 bytes
    token = secrets.token_hex(16)
    env = _cluster_env(token)
    port, dash = _free_port(), _free_port()
    common = ["--block", "--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1",
              "--disable-usage-stats"]
    head_args = [RAY, "start", "--head", *common, f"--port={port}", f"--dashboard-port={dash}",
                 "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                 f"--ray-client-server-port={_free_port()}",
                 f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={root / 'A'}"]
    worker_args = [RAY, "start", *common, f"--address=127.0.0.1:{port}",
                   f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={root / 'B'}"]
    node_local = None
    if _can_unshare():
        node_local = root / "node-local"
        node_local.mkdir()
        mount = f"mount -t tmpfs nucflow-node-local {node_local} && exec \"$@\""
        worker_args = ["unshare", "--mount", "--", "sh", "-c", mount, "sh", *worker_args]
    cluster = TwoNodes(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", token, env, root, node_local)
    procs = [_start(head_args, env, root / "head.log")]
    try:
        _wait_for_port(port, procs[0], root)
        procs.append(_start(worker_args, env, root / "worker.log"))
        _wait_for_nodes(cluster, procs, want=2)
        yield cluster
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the Ray head did not start; see {root / 'head.log'}")


def _nucflow(*args: str, env: dict[str, str], timeout: float = PATIENCE_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NUCFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- the Jobs API


def test_submit_follows_job_and_exits_with_its_status(two_nodes: TwoNodes, tmp_path: Path) -> None:
    """`nucflow submit -- --version` runs the submitted checkout's CLI on the cluster."""
    from nucflow import __version__

    done = _nucflow("submit", "--address", two_nodes.jobs_url, "--", "--version", env=two_nodes.env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert f"nucflow, version {__version__}" in done.stdout
    token_file = tmp_path / "token"
    token_file.write_text(two_nodes.token + "\n")
    no_token_env = {k: v for k, v in two_nodes.env.items() if k != "RAY_AUTH_TOKEN"}
    status = _nucflow("submit", "--address", two_nodes.jobs_url, "--token-file", str(token_file),
                      "--status", job_id, env=no_token_env)
    assert status.stdout.startswith(f"{job_id} SUCCEEDED"), status.stdout + status.stderr
    refused = _nucflow("submit", "--address", two_nodes.jobs_url, "--status", job_id,
                       env=no_token_env)
    assert refused.returncode == 1 and "refused the request" in refused.stderr
    logs = _nucflow("submit", "--address", two_nodes.jobs_url, "--logs", job_id, env=two_nodes.env)
    assert f"version {__version__}" in logs.stdout


def test_failed_job_exits_nonzero(two_nodes: TwoNodes) -> None:
    done = _nucflow("submit", "--address", two_nodes.jobs_url, "--", "no-such-command",
                    env=two_nodes.env)
    assert done.returncode == 1
    assert "FAILED" in done.stderr
    assert "No such command" in done.stdout + done.stderr


def test_no_wait_then_stop(two_nodes: TwoNodes) -> None:
    client = two_nodes.client()
    done = _nucflow("submit", "--address", two_nodes.jobs_url, "--no-wait", "--", "--help",
                    env=two_nodes.env)
    assert done.returncode == 0 and "Usage:" not in done.stdout  # logs not followed
    assert client.wait(done.stdout.strip(), timeout_s=PATIENCE_S).succeeded
    job_id = client.submit_entrypoint("sleep 3600")  # never ends before the stop, however slow
    stop = _nucflow("submit", "--address", two_nodes.jobs_url, "--stop", job_id, env=two_nodes.env)
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    assert client.wait(job_id, timeout_s=PATIENCE_S).status == "STOPPED"


_WHERE = """
import json, ray, nucflow
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Pin
ray.init()

@ray.remote(num_cpus=1)
def where():
    import nucflow
    return ray.get_runtime_context().get_node_id(), nucflow.__file__

nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
found = ray.get([where.options(scheduling_strategy=Pin(n, soft=False)).remote() for n in nodes])
print("RESULT", json.dumps({"driver": nucflow.__file__, "tasks": found}))
"""


def test_job_runs_the_submitted_code_on_both_nodes(two_nodes: TwoNodes, tmp_path: Path) -> None:
    """One task pinned to each node imports nucflow from the job's uploaded working directory."""
    script = tmp_path / "where.py"
    script.write_text(_WHERE)
    client = two_nodes.client()
    job_id = client.submit_entrypoint(f"python {script}")
    info = client.wait(job_id, timeout_s=PATIENCE_S)
    logs = client.logs(job_id)
    assert info.succeeded, logs
    result = json.loads(logs.split("RESULT", 1)[1].strip().splitlines()[0])
    installed = str(Path(__file__).resolve().parents[1] / "nucflow")
    for path in [result["driver"], *(file for _, file in result["tasks"])]:
        assert "working_dir_files" in path and not path.startswith(installed), path
    _assert_job_used_both_nodes(two_nodes, job_id)
    assert set(client.info(job_id, with_nodes=True).node_ids) == {n for n, _ in result["tasks"]}


def test_token_is_required(two_nodes: TwoNodes) -> None:
    with pytest.raises(ClusterError, match="refused the request.*token"):
        JobClient(two_nodes.jobs_url, token=None).info("raysubmit_none")
    with pytest.raises(ClusterError, match="refused the request.*token"):
        JobClient(two_nodes.jobs_url, token="wrong-token").info("raysubmit_none")


def test_unknown_job_is_a_cluster_error(two_nodes: TwoNodes) -> None:
    with pytest.raises(ClusterError, match="raysubmit_doesnotexist"):
        two_nodes.client().info("raysubmit_doesnotexist")


# --------------------------------------------------------------------------- shared outputs

_DRIVER = """
import json, sys
from nucflow.cluster import ClusterConfig, check_shared_path, connect
from nucflow.errors import ClusterError
info = connect(sys.argv[1], config=ClusterConfig())
out = {"nodes": info.nodes, "cpus": info.cpus, "gpus": info.gpus}
for path in sys.argv[2:]:
    try:
        check_shared_path(path, timeout_s=600)
        out[path] = "ok"
    except ClusterError as exc:
        out[path] = str(exc)
print(json.dumps(out))
"""


def test_connect_and_check_shared_path(two_nodes: TwoNodes, tmp_path: Path) -> None:
    """A driver joining with --address sees both nodes; a shared path passes, others are refused."""
    shared = tmp_path / "shared-out"
    paths = [str(shared), f"file://{tmp_path / 'shared-uri'}", "memory://nucflow-out"]
    if two_nodes.node_local is not None:
        paths.append(str(two_nodes.node_local / "out"))
    done = subprocess.run([sys.executable, "-c", _DRIVER, two_nodes.gcs, *paths],
                          env=two_nodes.env, capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["nodes"], result["cpus"], result["gpus"]) == (2, 2.0, 0.0)
    assert result[str(shared)] == "ok"
    assert list(shared.iterdir()) == []  # markers removed
    assert result[f"file://{tmp_path / 'shared-uri'}"] == "ok"  # the fsspec route
    assert "memory://nucflow-out" in result["memory://nucflow-out"]
    assert "cannot read it" in result["memory://nucflow-out"]
    if two_nodes.node_local is None:
        pytest.skip("no mount namespaces here: the node-local path case needs `unshare --mount`")
    refused = result[str(two_nodes.node_local / "out")]
    assert "is not shared by every Ray node" in refused and "cannot read it" in refused
    assert refused.count("cannot read it") == 1  # only the worker node; the head sees it
    assert "shared filesystem" in refused and "object-store URI" in refused


# --------------------------------------------------------------------------- the real commands


def test_submit_segment_matches_a_local_run(
    two_nodes: TwoNodes, ray_local, small_svs: Path, demo_svs: Path, tmp_path: Path
) -> None:
    """`nucflow submit -- segment` on two slides: the same tables as a local run, both nodes used."""
    import geopandas as gpd
    import pandas as pd

    from nucflow.pipeline import load_segment_config, segment

    config = tmp_path / "segment.yaml"
    config.write_text("method: threshold\ninference:\n  tile_size: 128\n  margin: 32\n")
    slides = [str(small_svs), str(demo_svs)]
    local = segment(slides, tmp_path / "local", config=load_segment_config(config))
    assert [s.status for s in local.slides] == ["ok", "ok"]

    out = tmp_path / "cluster"
    done = _nucflow("submit", "--address", two_nodes.jobs_url, "--", "segment", *slides,
                    "-o", str(out), "--config", str(config), "-q", env=two_nodes.env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for key in ("small", "demo"):
        here = gpd.read_parquet(tmp_path / "local" / key / "nuclei.parquet")
        there = gpd.read_parquet(out / key / "nuclei.parquet")
        assert len(here) > 10
        pd.testing.assert_frame_equal(pd.DataFrame(here.drop(columns="geometry")),
                                      pd.DataFrame(there.drop(columns="geometry")))
        assert here.geometry.geom_equals_exact(there.geometry, tolerance=0).all()
    _assert_job_used_both_nodes(two_nodes, done.stdout.splitlines()[0].strip())


def _assert_job_used_both_nodes(cluster: TwoNodes, job_id: str) -> None:
    client = cluster.client()
    deadline = time.monotonic() + 300  # task events reach the dashboard a little after the job
    while len(nodes := client.info(job_id, with_nodes=True).node_ids) < 2:
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert len(nodes) == 2, nodes


_TRAIN_YAML = """\
network: {ngf: 4, depth: 3, norm: batch, dropout: 0.5, dropout_blocks: 1, ndf: 4}
data: {mpp: 1.0, crop: 32, batch_size: 4, tile_mpp: 0.5, mask_mpp: 0.5}
loss: {pseudo: 1.0, pseudo_steps: 1}
max_steps: 3
checkpoint_every: 2
log_every: 1
"""



def test_submit_train_runs_ddp_over_both_nodes(
    two_nodes: TwoNodes, shared_data: Path, tmp_path: Path
) -> None:
    """`nucflow submit -- train --workers 2`: one DDP worker per node, checkpoints on the shared path."""
    from nucflow.models import load_model
    from nucflow.training._train import RUN_NAME

    config = tmp_path / "train.yaml"
    config.write_text(_TRAIN_YAML)
    out = tmp_path / "run"
    done = _nucflow(
        "submit", "--address", two_nodes.jobs_url, "--", "train",
        "--tiles", str(shared_data / "ihc/regions"),
        "--masks", str(shared_data / "masks/monuseg"), "-o", str(out), "--config", str(config),
        "--workers", "2", "--cpus-per-worker", "1", env=two_nodes.env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = sorted(p.name for p in (out / "checkpoints" / RUN_NAME).glob("step_*"))
    assert steps == ["step_00000002", "step_00000003"]
    assert load_model(out / "model.safetensors").card.steps in (2, 3)
    _assert_job_used_both_nodes(two_nodes, done.stdout.splitlines()[0].strip())
