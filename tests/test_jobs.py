"""The SLURM scripts and KubeRay manifests in jobs/: syntax, required fields, and the CLI they call."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from nucflow.cli import main

JOBS = Path(__file__).resolve().parents[1] / "jobs"
SCRIPTS = sorted([*JOBS.glob("slurm/*.sh"), *JOBS.glob("slurm/*.sbatch")])
MANIFESTS = sorted(JOBS.glob("kubernetes/*rayjob.yaml"))


def test_every_template_is_there() -> None:
    assert [p.name for p in SCRIPTS] == ["ray-cluster.sh", "segment.sbatch", "train.sbatch"]
    assert [p.name for p in MANIFESTS] == ["segment-rayjob.yaml", "train-rayjob.yaml"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_with_bash(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_never_stop_every_ray_on_a_node(script: Path) -> None:
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\bray\s+stop\b", code)


@pytest.mark.parametrize("name", ["segment.sbatch", "train.sbatch"])
def test_sbatch_scripts_start_ray_with_a_trap_and_pass_the_address(name: str) -> None:
    text = (JOBS / "slurm" / name).read_text()
    for option in ("--partition", "--nodes", "--gpus-per-node", "--cpus-per-task", "--time"):
        assert re.search(rf"^#SBATCH {option}=", text, re.M), option
    trap, start = text.index("trap ray_cluster_stop EXIT"), text.index("\nray_cluster_start")
    assert trap < start
    assert 'source "${NUCFLOW_JOBS_DIR}/ray-cluster.sh"' in text
    assert '--address "${RAY_ADDRESS}"' in text
    assert "set -euo pipefail" in text


def test_ray_cluster_binds_internal_addresses_with_token_auth() -> None:
    text = (JOBS / "slurm" / "ray-cluster.sh").read_text()
    assert '--dashboard-host="${RAY_HEAD_IP}"' in text and "0.0.0.0" not in text
    assert "export RAY_AUTH_MODE=token" in text
    assert 'NUCFLOW_RAY_AUTH:-token' in text  # token auth unless turned off
    assert "SLURM_GPUS_ON_NODE" in text and "--num-gpus" in text


def _rayjob(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _pods(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"],
            *(group["template"]["spec"] for group in cluster["workerGroupSpecs"])]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_rayjob_has_required_fields(path: Path) -> None:
    job = _rayjob(path)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"].startswith("nucflow-")
    spec = job["spec"]
    assert spec["entrypoint"].startswith("nucflow ")
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"].startswith("2.60")
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["num-cpus"] == "0"
    workers = cluster["workerGroupSpecs"]
    assert workers and all(g["groupName"] and g["replicas"] >= 1 for g in workers)
    for group in workers:
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_rayjob_mounts_the_shared_volume_on_every_pod(path: Path) -> None:
    job = _rayjob(path)
    for pod in _pods(job):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert claims == {"data": "nucflow-data"}
        assert mounts["data"] == "/data"
    pvc = yaml.safe_load((JOBS / "kubernetes" / "pvc.yaml").read_text())
    assert pvc["metadata"]["name"] == "nucflow-data"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_rayjob_entrypoint_parses_with_the_real_cli(path: Path) -> None:
    """Options in the manifests exist in `nucflow`, and every path is on the shared volume."""
    args = shlex.split(_rayjob(path)["spec"]["entrypoint"])[1:]
    at = next(i for i, arg in enumerate(args) if not arg.startswith("-"))
    name, rest = args[at], args[at + 1:]
    assert name in ("segment", "train")
    ctx = main.make_context("nucflow", [*args[:at], name])
    command = main.get_command(ctx, name)
    assert command is not None
    sub = command.make_context(name, rest, parent=ctx)
    paths = [str(v) for v in sub.params.values() if isinstance(v, (str, os.PathLike))]
    paths += [str(x) for v in sub.params.values() if isinstance(v, tuple) for x in v]
    assert paths and all(p.startswith("/data/") for p in paths if "/" in p), paths


# --------------------------------------------------------------------------- a fake SLURM


_SRUN = """#!/usr/bin/env bash
# Fake srun for one node: drop srun's own options and run the command here.
while [[ $# -gt 0 && "$1" == -* ]]; do
    if [[ "$1" == -w ]]; then shift 2; else shift; fi
done
exec "$@"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _processes_under(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.mark.slow  # about a minute: a Ray head, a segment run and Ray's shutdown
def test_segment_sbatch_runs_under_a_fake_one_node_slurm(small_svs: Path, tmp_path: Path) -> None:
    """segment.sbatch end to end with stand-in srun/scontrol: Ray up, segment done, Ray gone."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(_SRUN)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nhostname\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    config = tmp_path / "segment.yaml"
    config.write_text("method: threshold\ninference:\n  tile_size: 128\n  margin: 32\n")
    node_tmp = tempfile.mkdtemp(prefix="nfc-")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_ID="1", SLURM_JOB_NODELIST="node1",
        SLURM_JOB_NUM_NODES="1", SLURM_CPUS_PER_TASK="1", SLURM_GPUS_ON_NODE="0",
        SLURM_SUBMIT_DIR=str(JOBS.parent), NUCFLOW_VENV=str(Path(sys.executable).parents[1]),
        RAY_PORT=str(_free_port()), RAY_DASHBOARD_PORT=str(_free_port()), RAY_NODE_TMP=node_tmp,
        SLIDES=str(small_svs), OUTPUT=str(tmp_path / "out"), SEGMENT_CONFIG=str(config),
    )
    try:
        done = subprocess.run(["bash", str(JOBS / "slurm" / "segment.sbatch")], env=env,
                              capture_output=True, text=True, timeout=400)
        leftovers = _processes_under(node_tmp)
    finally:
        for proc in _processes_under(node_tmp):
            proc.send_signal(signal.SIGKILL)
        shutil.rmtree(node_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 node(s), 1 CPU(s) and 0 GPU(s) per node" in done.stdout
    assert (tmp_path / "out" / "small" / "nuclei.parquet").is_file()
    assert leftovers == []
