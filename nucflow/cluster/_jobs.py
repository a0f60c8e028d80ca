"""Job submission through Ray's Jobs API (``nucflow submit``): send, follow, query and stop
``nucflow`` commands on a running cluster, with Ray's token authentication."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nucflow.errors import ClusterError

__all__ = ["AGENT_WAIT_S", "DEFAULT_JOBS_ADDRESS", "JobClient", "JobInfo", "read_auth_token"]

log = logging.getLogger("nucflow.cluster")

#: The Jobs API of a Ray head on this machine (the dashboard port).
DEFAULT_JOBS_ADDRESS = "http://127.0.0.1:8265"
#: How long a submission waits for a starting cluster's job agent (seconds).
AGENT_WAIT_S = 120.0

_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


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
