"""Ray clusters: join one or start a local one, check shared outputs, submit jobs.

One module per job (this package re-exports them), plus the settings (``_config``:
:class:`ClusterConfig`, read from ``nucflow/configs/cluster.yaml``):

- ``_connect``: :func:`connect` / :func:`ray_session` join the cluster named by ``--address`` or
  ``RAY_ADDRESS`` (or start a local Ray of their own with every local CPU and GPU) and report
  its nodes. Inside :func:`ray_session`, SIGTERM stops the run like Ctrl-C does
  (:class:`Interrupted`), so Ray shuts down cleanly instead of crashing.
- ``_shared``: :func:`check_shared_path` refuses an output location that some node of a multi-node cluster
  cannot see: every node reads a marker the driver wrote and writes one back.
- ``_jobs``: :class:`JobClient` sends ``nucflow`` commands through Ray's Job Submission API (the
  dashboard's HTTP port, 8265 by default), with Ray's token authentication when a token is
  given, and follows, queries or stops them.
"""

from __future__ import annotations

from nucflow.cluster._config import ClusterConfig, load_cluster_config
from nucflow.cluster._connect import ClusterInfo, Interrupted, cluster_info, connect, ray_session
from nucflow.cluster._jobs import AGENT_WAIT_S, DEFAULT_JOBS_ADDRESS, JobClient, JobInfo, read_auth_token
from nucflow.cluster._shared import check_shared_path

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
