"""nucflow.cluster without a second node: configuration, addresses, tokens, the submit CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from nucflow.cli import main
from nucflow.cluster import (
    ClusterConfig,
    JobClient,
    check_shared_path,
    connect,
    load_cluster_config,
    read_auth_token,
)
from nucflow.config import CONFIG_DIR
from nucflow.errors import ClusterError, ConfigError


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- configuration


def test_shipped_cluster_yaml_matches_the_dataclass_defaults() -> None:
    assert load_cluster_config() == ClusterConfig()
    assert load_cluster_config(CONFIG_DIR / "cluster.yaml", batch_size_per_gpu=32).batch_size_per_gpu == 32


def test_unknown_cluster_key_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("actors_per_gpu: 2\nbatch_per_gpu: 8\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'batch_per_gpu' in .*cluster\.yaml"):
        load_cluster_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("batch_size_per_gpu: 0", "batch_size_per_gpu must be a positive integer, got 0"),
        ("cpus_per_actor: 1.5", "cpus_per_actor must be a positive integer, got 1.5"),
        ("max_actors: -1", "max_actors must be a positive integer, got -1"),
        ("object_store_gb: 0", "object_store_gb must be a positive number, got 0"),
        ("shared_check_timeout_s: true", "shared_check_timeout_s must be a positive number"),
        ("include_dashboard: 'yes'", "include_dashboard must be true or false, got 'yes'"),
    ],
)
def test_bad_cluster_values_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_cluster_config(path)


# --------------------------------------------------------------------------- connect


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("http://head:8265", "is a dashboard/Jobs URL.*nucflow submit --address"),
        ("head-node", "is not HOST:PORT"),
        ("head-node:notaport", "is not HOST:PORT"),
    ],
)
def test_connect_refuses_malformed_addresses(address: str, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        connect(address, config=ClusterConfig())


def test_connect_fails_fast_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ClusterError, match=rf"nothing answers at Ray address '127.0.0.1:{port}'"):
        connect(config=ClusterConfig())


def test_connect_reuses_an_initialised_ray(ray_local) -> None:
    info = connect(config=ClusterConfig())
    assert (info.nodes, info.cpus, info.gpus, info.started_here) == (1, 2.0, 0.0, False)
    assert "1 node(s), 2 CPU(s), 0 GPU(s)" in info.describe()


def test_single_node_needs_no_shared_path_check(ray_local, tmp_path: Path) -> None:
    check_shared_path(tmp_path / "out")
    assert not (tmp_path / "out").exists()


_LOCAL = """
import json, os, ray
from nucflow.cluster import ClusterConfig, connect
info = connect(config=ClusterConfig(object_store_gb=0.1))
node = ray.nodes()[0]
print(json.dumps({"started": info.started_here, "nodes": info.nodes, "cpus": info.cpus,
                  "store": node["Resources"]["object_store_memory"],
                  "auth": os.environ["RAY_AUTH_MODE"],
                  "arenas": ray.get(ray.remote(lambda: os.environ.get("MALLOC_ARENA_MAX")).remote()),
                  "omp": ray.get(ray.remote(lambda: os.environ.get("OMP_WAIT_POLICY")).remote())}))
ray.shutdown()
"""


def test_connect_starts_a_local_ray_on_loopback(tmp_path: Path) -> None:
    """No address: a local Ray with every local CPU, no token file written."""
    ray_tmp = tempfile.mkdtemp(prefix="nfc-")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k not in ("MALLOC_ARENA_MAX", "OMP_WAIT_POLICY")}
    env.update(RAY_TMPDIR=ray_tmp, HOME=str(tmp_path))
    try:
        done = subprocess.run([sys.executable, "-c", _LOCAL], env=env, capture_output=True,
                              text=True, timeout=600)  # generous: Ray starts slowly on a loaded machine
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["started"] is True and result["nodes"] == 1
    assert result["cpus"] == os.cpu_count()
    assert result["store"] == pytest.approx(0.1 * 2**30, rel=0.01)
    assert result["auth"] == "disabled"
    assert result["arenas"] == "2"  # its workers' malloc arenas (see _LOCAL_RAY_ENV)
    assert result["omp"] == "PASSIVE"  # nucflow.OPENMP_DEFAULTS, inherited from the driver
    assert not (tmp_path / ".ray" / "auth_token").exists()


# --------------------------------------------------------------------------- tokens


def test_token_sources_in_rays_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert read_auth_token() is None
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert read_auth_token() is None  # token mode without any token: send none
    monkeypatch.delenv("RAY_AUTH_MODE")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert read_auth_token() is None  # the default file counts only in token mode
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert read_auth_token() == "from-home"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert read_auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert read_auth_token() == "from-env"
    (tmp_path / "explicit").write_text(" explicit \n")
    assert read_auth_token(tmp_path / "explicit") == "explicit"


def test_unreadable_or_empty_token_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="cannot read the Ray auth token file .*missing"):
        read_auth_token(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ClusterError, match="auth token file .*empty is empty"):
        read_auth_token(tmp_path / "empty")


# --------------------------------------------------------------------------- jobs API and CLI


def test_unreachable_jobs_api_is_a_cluster_error() -> None:
    address = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ClusterError, match=f"cannot reach the Ray Jobs API at {address}"):
        JobClient(address)


def test_submit_cli_usage_errors() -> None:
    runner = CliRunner()
    assert "give a nucflow command after --" in runner.invoke(main, ["submit"]).output
    both = runner.invoke(main, ["submit", "--status", "a", "--logs", "b"])
    assert both.exit_code == 2 and "give one of --status, --logs, --stop" in both.output
    mixed = runner.invoke(main, ["submit", "--stop", "a", "--", "segment"])
    assert mixed.exit_code == 2


def test_submit_cli_reports_bad_env_and_unreachable_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    address = f"http://127.0.0.1:{_closed_port()}"
    bad = runner.invoke(main, ["submit", "--address", address, "--env", "NOEQUALS", "--", "segment"])
    assert bad.exit_code == 1 and "--env takes KEY=VALUE, got 'NOEQUALS'" in bad.output
    monkeypatch.chdir(tmp_path)
    Path("slide.svs").write_bytes(b"")
    down = runner.invoke(main, ["submit", "--address", address, "--", "segment", "slide.svs",
                                "-o", "out"])
    assert down.exit_code == 1 and "cannot reach the Ray Jobs API" in down.output
    assert "'slide.svs' is a relative path" in down.output
    assert "'out' is a relative path" in down.output


def test_batches_in_flight_per_actor_follow_the_device_unless_set() -> None:
    from nucflow.cluster import load_cluster_config
    from nucflow.inference.actors import actor_options_for_cluster

    default = load_cluster_config()
    assert default.inflight_per_actor is None
    cpu = actor_options_for_cluster({"CPU": 2.0}, cluster=default, amp=True, channels_last=True)
    gpu = actor_options_for_cluster({"CPU": 8.0, "GPU": 2.0}, cluster=default, amp=True, channels_last=True)
    assert (cpu.device, cpu.count, cpu.inflight) == ("cpu", 2, 1)
    assert (gpu.device, gpu.count, gpu.inflight) == ("cuda", 2, 2)
    three = load_cluster_config(inflight_per_actor=3)
    assert actor_options_for_cluster({"CPU": 2.0}, cluster=three, amp=True, channels_last=True).inflight == 3
    with pytest.raises(ConfigError, match="inflight_per_actor"):
        load_cluster_config(inflight_per_actor=0)


def test_openmp_defaults_are_set_on_import_and_never_override_the_user() -> None:
    code = "import os, nucflow; print(os.environ['OMP_WAIT_POLICY'])"
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    plain = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=120)
    mine = subprocess.run([sys.executable, "-c", code], env={**base, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True, timeout=120)
    assert (plain.stdout.strip(), mine.stdout.strip()) == ("PASSIVE", "ACTIVE"), plain.stderr + mine.stderr
