"""Ray clusters: join one or start a local one, check shared outputs, submit jobs.

Three parts, used by the commands:

- :func:`connect` / :func:`ray_session` join the cluster named by ``--address`` or
  ``RAY_ADDRESS`` (or start a local Ray of their own with every local CPU and GPU) and report
  its nodes. Inside :func:`ray_session`, SIGTERM stops the run like Ctrl-C does
  (:class:`Interrupted`), so Ray shuts down cleanly instead of crashing.
- :func:`check_shared_path` refuses an output location that some node of a multi-node cluster
  cannot see: every node reads a marker the driver wrote and writes one back.
- :class:`JobClient` sends ``nucflow`` commands through Ray's Job Submission API (the
  dashboard's HTTP port, 8265 by default), with Ray's token authentication when a token is
  given, and follows, queries or stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nucflow.config import CONFIG_DIR, check_fields, load_config, positive, setting
from nucflow.errors import ClusterError

__all__ = [
    "AGENT_WAIT_S",
    "DEFAULT_JOBS_ADDRESS",
    "ClusterConfig",
    "ClusterInfo",
    "Interrupted",
    "JobClient",
    "JobInfo",
    "check_shared_path",
    "cluster_info",
    "connect",
    "load_cluster_config",
    "ray_session",
    "read_auth_token",
]

log = logging.getLogger(__name__)

#: The Jobs API of a Ray head on this machine (the dashboard port).
DEFAULT_JOBS_ADDRESS = "http://127.0.0.1:8265"
#: How long a submission waits for a starting cluster's job agent (seconds).
AGENT_WAIT_S = 120.0

#: Ray settings nucflow applies before it starts a local Ray (existing values win).
_LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster-side defaults (``nucflow/configs/cluster.yaml``); see that file for each key's meaning."""

    actors_per_gpu: int = setting(1, positive())
    cpus_per_actor: int = setting(1, positive())
    max_actors: int | None = setting(None, positive())
    inflight_per_actor: int = setting(2, positive())
    batch_size_per_gpu: int = setting(16, positive())
    batch_size_per_cpu: int = setting(2, positive())
    object_store_gb: float | None = setting(None, positive())
    include_dashboard: bool = False
    check_shared_output: bool = True
    shared_check_timeout_s: float = setting(60.0, positive())

    def __post_init__(self) -> None:
        check_fields(self)


def load_cluster_config(path: str | Path | None = None, **overrides: Any) -> ClusterConfig:
    """Load a :class:`ClusterConfig` from ``path``, else from the shipped ``nucflow/configs/cluster.yaml``.

    Overrides whose value is None are ignored.
    """
    return load_config(ClusterConfig, path if path is not None else CONFIG_DIR / "cluster.yaml", **overrides)


# --------------------------------------------------------------------------- connecting


@dataclass(frozen=True)
class ClusterInfo:
    """What a Ray cluster holds: alive nodes and their summed resources.

    ``started_here`` is True when :func:`connect` started a local Ray (so it may stop it).
    """

    address: str
    node_ids: tuple[str, ...]
    cpus: float
    gpus: float
    started_here: bool

    @property
    def nodes(self) -> int:
        return len(self.node_ids)

    def describe(self) -> str:
        where = f"a local Ray at {self.address}" if self.started_here else f"Ray cluster at {self.address}"
        return f"{where}: {self.nodes} node(s), {self.cpus:g} CPU(s), {self.gpus:g} GPU(s)"


def connect(address: str | None = None, *, config: ClusterConfig) -> ClusterInfo:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    Parameters
    ----------
    address
        A Ray (GCS) address ``host:port``, ``auto`` or ``ray://host:10001``; None reads
        ``RAY_ADDRESS``; when neither is set, a local Ray of this process's own starts
        (``ray.init(address="local")``: never a cluster that ``ray start`` left in Ray's temp
        folder) with every local CPU and GPU, its dashboard (if any) on 127.0.0.1, and without
        token authentication unless ``RAY_AUTH_MODE=token`` is set (then Ray creates or reuses
        ``~/.ray/auth_token``). Inside a job sent with ``nucflow submit``, Ray sets
        ``RAY_ADDRESS`` itself. The log (INFO) says which it did.
    config
        ``object_store_gb`` and ``include_dashboard`` apply to a local Ray only.

    Returns
    -------
    ClusterInfo
        The cluster's alive nodes, CPUs and GPUs. If Ray is already initialised in this
        process, that Ray is reported and left as it is.

    Raises
    ------
    ClusterError
        ``address`` is a dashboard URL, or nothing answers there.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _check_ray_address(address)
    if ray.is_initialized():
        info = cluster_info(started_here=False)
        log.info("using the Ray already initialised in this process: %s", info.describe())
        return info
    if address is None:
        return _start_local(config)
    try:
        ray.init(address=address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {exc}") from exc
    info = cluster_info(started_here=False, address=address)
    log.info("joined %s", info.describe())
    return info


def _start_local(config: ClusterConfig) -> ClusterInfo:
    import ray

    for key, value in _LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    store = None if config.object_store_gb is None else int(config.object_store_gb * 2**30)
    # address=None would join the cluster recorded in Ray's temp folder by a `ray start` (Ray
    # 2.60: services.get_ray_address_from_environment); "local" always starts a new one.
    ray.init(
        address="local",
        object_store_memory=store,
        include_dashboard=config.include_dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
    )
    info = cluster_info(started_here=True)
    log.info("started %s", info.describe())
    return info


def _check_ray_address(address: str) -> None:
    """Refuse a dashboard URL and fail fast (seconds, not minutes) when nothing listens."""
    if address.startswith(("http://", "https://")):
        raise ClusterError(
            f"{address!r} is a dashboard/Jobs URL; --address for segment and train takes the "
            "Ray address HEAD:6379 (or ray://HEAD:10001); use `nucflow submit --address "
            f"{address}` to send a job there instead"
        )
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ClusterError(f"Ray address {address!r} is not HOST:PORT (e.g. head-node:6379)")
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as exc:
        raise ClusterError(
            f"nothing answers at Ray address {address!r} ({exc}); is the head node running "
            "`ray start --head` and reachable from here?"
        ) from None


def cluster_info(*, started_here: bool, address: str | None = None) -> ClusterInfo:
    """Describe the Ray cluster this process is connected to (alive nodes only)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in alive)
    gpus = sum(n.get("Resources", {}).get("GPU", 0.0) for n in alive)
    gcs = address or ray.get_runtime_context().gcs_address
    return ClusterInfo(gcs, tuple(n["NodeID"] for n in alive), cpus, gpus, started_here)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal: SIGTERM (what SLURM and Kubernetes send) or SIGINT.

    A :class:`KeyboardInterrupt`, so every ``finally`` that Ctrl-C runs (finished tiles
    recorded, actors and Ray shut down) runs for SIGTERM too. ``exit_status`` is the shell's
    convention for a process stopped by that signal: 128 + its number (143, 130).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        super().__init__(self.signal_name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


#: Signals :func:`_raise_interrupted` received in the current :func:`ray_session`.
_received: list[int] = []


def _raise_interrupted(signum: int, frame: object) -> None:
    # A second SIGTERM while shutting down kills at once (the default action), as a second
    # Ctrl-C would be expected to; the first one lets Ray shut down and results be kept.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _received.append(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def ray_session(address: str | None = None, *, config: ClusterConfig) -> Iterator[ClusterInfo]:
    """:func:`connect` for the duration of a ``with`` block; disconnects only what it opened.

    Within the block (when entered on the main thread) SIGTERM raises :class:`Interrupted`
    on the main thread, like Ctrl-C raises KeyboardInterrupt: without this, Ray's own handlers
    (its driver's ``sys.exit`` and its C++ failure-signal handler, installed by ``ray.init``)
    end the process in SIGABRT with a crash dump. The previous handler is restored on exit.
    """
    import ray

    on_main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if on_main else None
    opened = not ray.is_initialized()
    _received.clear()
    try:
        if on_main:
            signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            info = connect(address, config=config)
        except SystemExit as exc:  # Ray's handler during ray.init: sys.exit(SIGTERM)
            if exc.code == signal.SIGTERM:
                raise Interrupted(signal.SIGTERM) from None
            raise
        if on_main:  # again: ray.init replaced it with Ray's own handlers
            signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            yield info
        finally:
            if opened:
                ray.shutdown()
    except KeyboardInterrupt as exc:
        # Raised inside ray.get/ray.wait, the handler's exception reaches here as a new, plain
        # KeyboardInterrupt (Ray's C++ signal check re-raises one): say which signal it was.
        if _received and not isinstance(exc, Interrupted):
            raise Interrupted(_received[-1]) from None
        raise
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


# --------------------------------------------------------------------------- shared outputs


def check_shared_path(path: str | os.PathLike[str], *, timeout_s: float = 60.0) -> None:
    """Refuse an output location that not every node of the connected Ray cluster sees.

    On a cluster of one node this returns at once. Otherwise the driver writes a marker under
    ``path`` (a local path, created if missing, or an fsspec URI such as ``s3://bucket/out``),
    a zero-CPU task pinned to each alive node reads it and writes a reply beside it, and the
    driver reads the replies back. Every marker is removed afterwards.

    Raises
    ------
    ClusterError
        Naming the path and the nodes that cannot read it or write to it, and what to use
        instead (a shared filesystem mounted at the same path everywhere, or an object-store
        URI).
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) < 2:
        return
    target = _as_target(path)
    token = uuid.uuid4().hex
    marker = _join(target, f".nucflow-shared-check-{token}")
    _write_text(marker, token)
    try:
        failures = _probe_nodes(alive, marker, token, timeout_s)
    finally:
        _remove_markers(target, token)
    if failures:
        listing = "; ".join(f"{name} ({why})" for name, why in failures)
        raise ClusterError(
            f"output path {str(path)!r} is not shared by every Ray node: {listing}. Write "
            "outputs to a shared filesystem mounted at the same path on every node (NFS, "
            "Lustre, a Kubernetes ReadWriteMany volume); training checkpoints may also go to an "
            "object-store URI (--storage s3://...)"
        )


def _probe_nodes(
    alive: Sequence[Mapping[str, Any]], marker: str, token: str, timeout_s: float
) -> list[tuple[str, str]]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_marker)
    refs = {}
    for node in alive:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        refs[_node_name(node)] = probe.options(scheduling_strategy=strategy).remote(marker, token)
    failures = []
    for name, ref in refs.items():
        try:
            problem = ray.get(ref, timeout=timeout_s)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as exc:
            problem = f"probe did not finish: {type(exc).__name__}"
        if problem is None and not _exists(f"{marker}.{token}-{_node_tag(name)}"):
            problem = "its write is not visible to the driver"
        if problem is not None:
            failures.append((name, problem))
    return failures


def _probe_marker(marker: str, token: str) -> str | None:
    """Runs on one node: None when it reads the driver's marker and writes its reply."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    name = f"{ray.util.get_node_ip_address()}/{node[:8]}"
    try:
        if _read_text(marker) != token:
            return "marker has other contents"
    except OSError:
        return "cannot read it"
    try:
        _write_text(f"{marker}.{token}-{_node_tag(name)}", "ok")
    except OSError:
        return "cannot write to it"
    return None


def _node_name(node: Mapping[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')}/{node['NodeID'][:8]}"


def _node_tag(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _is_uri(target: str) -> bool:
    return "://" in target


def _as_target(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    if _is_uri(text):
        return text.rstrip("/")
    local = Path(text).expanduser().absolute()
    try:
        local.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClusterError(f"cannot create output folder {local} on the driver: {exc}") from None
    return str(local)


def _join(target: str, name: str) -> str:
    return f"{target}/{name}" if _is_uri(target) else str(Path(target) / name)


def _write_text(where: str, text: str) -> None:
    if _is_uri(where):
        import fsspec

        with fsspec.open(where, "w") as handle:
            handle.write(text)
    else:
        Path(where).write_text(text)


def _read_text(where: str) -> str:
    if _is_uri(where):
        import fsspec

        try:
            with fsspec.open(where, "r") as handle:
                return str(handle.read())
        except FileNotFoundError as exc:
            raise OSError(str(exc)) from None
    return Path(where).read_text()


def _exists(where: str) -> bool:
    if _is_uri(where):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(where)
        return bool(fs.exists(inner))
    return Path(where).exists()


def _remove_markers(target: str, token: str) -> None:
    pattern = f".nucflow-shared-check-{token}*"
    if _is_uri(target):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(target)
        for found in fs.glob(f"{inner}/{pattern}"):
            fs.rm(found)
        return
    for found in Path(target).glob(pattern):
        found.unlink(missing_ok=True)


# --------------------------------------------------------------------------- job submission


def read_auth_token(token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The Ray auth token to send to the Jobs API, or None to send none.

    Looked up in Ray's own order: ``token_file`` when given, else ``RAY_AUTH_TOKEN``, else the
    file ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token`` when
    ``RAY_AUTH_MODE=token`` (if it exists). A named file that cannot be read, or is empty, is
    an error.
    """
    if token_file is None and os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    source = token_file or os.environ.get("RAY_AUTH_TOKEN_PATH") or None
    if source is None:
        default = Path.home() / ".ray" / "auth_token"
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" or not default.is_file():
            return None  # no token: a cluster that wants one refuses, as a ClusterError
        source = default
    try:
        token = Path(source).expanduser().read_text().strip()
    except OSError as exc:
        raise ClusterError(f"cannot read the Ray auth token file {source}: {exc}") from None
    if not token:
        raise ClusterError(f"the Ray auth token file {source} is empty")
    return token


@dataclass(frozen=True)
class JobInfo:
    """A submitted job: its submission id, status, Ray's message, and the nodes it used."""

    submission_id: str
    status: str
    message: str
    node_ids: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    @property
    def finished(self) -> bool:
        return self.status in _TERMINAL


class JobClient:
    """The Ray Jobs API of one cluster, with nucflow's errors and token handling.

    Parameters
    ----------
    address
        The head's dashboard URL, ``http://HEAD:8265``. None reads ``RAY_API_SERVER_ADDRESS``,
        then ``RAY_ADDRESS`` when that is an http(s) URL, else :data:`DEFAULT_JOBS_ADDRESS`.
    token
        Ray auth token sent as ``Authorization: Bearer``; see :func:`read_auth_token`.
    """

    def __init__(self, address: str | None = None, *, token: str | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address = address or _jobs_address_from_env()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._headers = headers
        self._client = _call(lambda: JobSubmissionClient(self.address, headers=headers), self.address)

    def submit(
        self, args: Sequence[str], *, python: str = "python", env: Mapping[str, str] | None = None
    ) -> str:
        """Start ``nucflow <args>`` on the cluster; returns the submission id.

        The job's runtime environment carries this nucflow (package and its configs) as its
        working directory, so it runs the submitting checkout's code on every node; ``python``
        is the cluster's interpreter, which must have nucflow's dependencies.
        """
        return self.submit_entrypoint(_entrypoint(args, python=python), env=env,
                                      metadata={"nucflow_command": " ".join(args[:1])})

    def submit_entrypoint(
        self, entrypoint: str, *, env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None, agent_wait_s: float = AGENT_WAIT_S,
    ) -> str:
        """Start a shell ``entrypoint`` with nucflow's runtime environment; returns its id.

        Right after a cluster starts, its job agent may not be up yet (Ray answers "No available
        agent to submit job"): the submission is retried, with a log line saying so, for at most
        ``agent_wait_s`` seconds, then refused with a :class:`ClusterError`.
        """
        stage = Path(tempfile.mkdtemp(prefix="nucflow-job-"))
        try:
            runtime_env = _stage_runtime_env(stage, env or {})
            return str(_call(lambda: _when_agent_ready(lambda: self._client.submit_job(
                entrypoint=entrypoint, runtime_env=runtime_env, metadata=dict(metadata or {}),
            ), self.address, agent_wait_s), self.address))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def info(self, submission_id: str, *, with_nodes: bool = False) -> JobInfo:
        """The job's status and message; with ``with_nodes``, the nodes its tasks and actors used."""
        details = _call(lambda: self._client.get_job_info(submission_id), self.address)
        status = str(getattr(details.status, "value", details.status))
        nodes = self._job_nodes(details.job_id) if with_nodes and details.job_id else ()
        return JobInfo(submission_id, status, details.message or "", nodes)

    def logs(self, submission_id: str) -> str:
        """Everything the job's driver has written so far."""
        return str(_call(lambda: self._client.get_job_logs(submission_id), self.address))

    def stop(self, submission_id: str) -> bool:
        """Ask the job to stop; False when it had already finished."""
        return bool(_call(lambda: self._client.stop_job(submission_id), self.address))

    def follow(self, submission_id: str, on_output: Callable[[str], None]) -> JobInfo:
        """Pass the job's output to ``on_output`` until it finishes; returns its final info."""

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(submission_id):
                on_output(chunk)

        _call(lambda: asyncio.run(tail()), self.address)
        return self.wait(submission_id)

    def wait(self, submission_id: str, *, timeout_s: float = 60.0, poll_s: float = 0.5) -> JobInfo:
        """Poll until the job reaches a final status (or ``timeout_s`` passes)."""
        import time

        deadline = time.monotonic() + timeout_s
        info = self.info(submission_id)
        while not info.finished and time.monotonic() < deadline:
            time.sleep(poll_s)
            info = self.info(submission_id)
        return info

    def _job_nodes(self, job_id: str) -> tuple[str, ...]:
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        client = StateApiClient(self.address, headers=self._headers)
        nodes: set[str] = set()
        for resource in (StateResource.TASKS, StateResource.ACTORS):
            options = ListApiOptions(filters=[("job_id", "=", job_id)], limit=10_000, detail=True)
            rows = client.list(resource, options=options, raise_on_missing_output=False)
            nodes.update(str(node) for r in rows if (node := getattr(r, "node_id", None)))
        return tuple(sorted(nodes))


_NO_AGENT = "No available agent to submit job"


def _when_agent_ready(action: Callable[[], Any], address: str, wait_s: float) -> Any:
    """``action()``, retried while the cluster says it has no job agent yet (bounded by ``wait_s``)."""
    import time

    deadline = time.monotonic() + wait_s
    pause = 0.5
    while True:
        try:
            return action()
        except RuntimeError as exc:
            if _NO_AGENT not in str(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterError(
                    f"the Ray cluster at {address} has no job agent after {wait_s:g} s of waiting "
                    "(Ray: 'No available agent to submit job'); is the head node fully started? "
                    "Check `ray status` on it and submit again"
                ) from None
            log.warning("the Ray cluster at %s has no job agent yet (it is starting); retrying for up to %.0f s",
                        address, left)
            time.sleep(min(pause, left))
            pause = min(pause * 2, 5.0)


def _jobs_address_from_env() -> str:
    for key in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(key, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_JOBS_ADDRESS


def _call(action: Callable[[], Any], address: str) -> Any:
    """Run a Jobs API call, turning Ray's connection and HTTP errors into ClusterError."""
    from ray.exceptions import AuthenticationError

    try:
        return action()
    except AuthenticationError as exc:
        raise ClusterError(
            f"the Ray cluster at {address} refused the request: {str(exc).splitlines()[0]} "
            "Pass its token with --token-file or RAY_AUTH_TOKEN"
        ) from None
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot reach the Ray Jobs API at {address} ({exc}); check --address (the head's "
            "dashboard port, 8265 by default) and that the cluster is running"
        ) from None
    except (RuntimeError, ValueError) as exc:
        raise ClusterError(f"Ray Jobs API at {address}: {exc}") from None


def _entrypoint(args: Sequence[str], *, python: str) -> str:
    if not args:
        raise ClusterError("nothing to submit: give a nucflow command after --, e.g. -- segment ...")
    launcher = "import sys; from nucflow.cli import main; sys.exit(main(prog_name='nucflow'))"
    return shlex.join([python, "-c", launcher, *args])


def _stage_runtime_env(stage: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Copy the nucflow package (its configs included) into ``stage``: the job's working directory.

    Ray uploads it once and puts it first on the import path of the driver and every worker,
    so the cluster runs the submitting checkout's code with its configs.
    """
    import nucflow

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(nucflow.__file__).parent, stage / "nucflow", ignore=ignore)
    env_vars = {"PYTHONUNBUFFERED": "1", **env}
    return {"working_dir": str(stage), "env_vars": env_vars}

