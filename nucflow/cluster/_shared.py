"""The shared-output check: refuse an output location that some node of a multi-node cluster
cannot see (every node reads a marker the driver wrote and writes one back)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nucflow.errors import ClusterError

__all__ = ["check_shared_path"]


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
