"""Joining the Ray cluster named by ``--address`` / ``RAY_ADDRESS``, or starting a local Ray of our
own, and stopping cleanly on SIGTERM as on Ctrl-C."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from nucflow.cluster._config import ClusterConfig
from nucflow.errors import ClusterError

__all__ = ["ClusterInfo", "Interrupted", "cluster_info", "connect", "ray_session"]

log = logging.getLogger("nucflow.cluster")

#: Ray settings nucflow applies before it starts a local Ray (existing values win). Its processes
#: (model actors, finishing tasks) inherit them. MALLOC_ARENA_MAX: glibc's malloc keeps up to 8
#: arenas per core for a process's threads and returns little of them; two per process took the
#: 4x benchmark slide's peak (driver, Ray and workers) from 2.53-2.55 to 2.44-2.49 GB with the
#: same CPU seconds (interleaved runs; the 1x slide's peak unchanged).
_LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "MALLOC_ARENA_MAX": "2"}


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
