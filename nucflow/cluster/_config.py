"""Cluster-side settings (``nucflow/configs/cluster.yaml``): actors and batch sizes, the local
Ray, the shared-output check. How they size the model actors is
:func:`nucflow.inference.actors.actor_options_for_cluster`, beside the actors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nucflow.config import CONFIG_DIR, check_fields, load_config, positive, setting

__all__ = ["ClusterConfig", "load_cluster_config"]


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster-side defaults (``nucflow/configs/cluster.yaml``); see that file for each key's meaning."""

    actors_per_gpu: int = setting(1, positive())
    cpus_per_actor: int = setting(1, positive())
    max_actors: int | None = setting(None, positive())
    inflight_per_actor: int | None = setting(None, positive())
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
