"""``nucflow submit``: send ``segment``/``train`` to a running Ray cluster through its Jobs API."""

from __future__ import annotations

import os
from collections.abc import Sequence

import click

from nucflow.cluster import JobClient, JobInfo, read_auth_token
from nucflow.errors import ClusterError, ConfigError

__all__ = ["submit"]

#: Exit codes of a followed job.
EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 2}

_OUTPUT_FLAGS = {"-o", "--output", "--out", "--output-dir"}


@click.command(
    "submit",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--address", metavar="URL",
              help="The head's Jobs API, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, "
                   "else RAY_ADDRESS if it is an http URL, else http://127.0.0.1:8265).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="File holding the cluster's Ray auth token (default: RAY_AUTH_TOKEN, "
                   "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token when RAY_AUTH_MODE=token).")
@click.option("--no-wait", is_flag=True, help="Print the job id and return; do not follow logs.")
@click.option("--status", "status_id", metavar="ID", help="Print a job's status and exit.")
@click.option("--logs", "logs_id", metavar="ID", help="Print a job's logs so far and exit.")
@click.option("--stop", "stop_id", metavar="ID", help="Stop a running job and exit.")
@click.option("--python", default="python", show_default=True,
              help="The cluster's Python interpreter (one with nucflow's dependencies).")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE",
              help="Environment variable for the job (repeatable).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(
    address: str | None,
    token_file: str | None,
    no_wait: bool,
    status_id: str | None,
    logs_id: str | None,
    stop_id: str | None,
    python: str,
    env_pairs: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run a nucflow COMMAND on a Ray cluster: nucflow submit [OPTIONS] -- segment ...|train ...

    Follows the job's logs and exits 0 when it succeeds, 1 when it fails, 2 when stopped.
    Paths in COMMAND are opened on the cluster: give absolute paths (or object-store URIs)
    that every node sees. Never expose the Jobs port (8265) publicly without authentication.
    """
    queries = [q for q in (status_id, logs_id, stop_id) if q]
    if len(queries) > 1 or (queries and command):
        raise click.UsageError("give one of --status, --logs, --stop, or a command after --")
    if not queries and not command:
        raise click.UsageError("give a nucflow command after --, e.g. nucflow submit -- segment ...")
    try:
        env = _parse_env(env_pairs)
        _warn_relative_paths(command)
        client = JobClient(address, token=read_auth_token(token_file))
        if queries:
            _query(client, status_id=status_id, logs_id=logs_id, stop_id=stop_id)
            return
        job_id = client.submit(command, python=python, env=env)
        click.echo(f"submitted job {job_id} to {client.address}", err=True)
        click.echo(job_id)
        if no_wait:
            return
        info = _follow(client, job_id)
    except (ClusterError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"job {job_id} {info.status}" + (f": {info.message}" if info.message else ""), err=True)
    raise SystemExit(EXIT.get(info.status, 1))


def _query(client: JobClient, *, status_id: str | None, logs_id: str | None, stop_id: str | None) -> None:
    if status_id:
        info = client.info(status_id)
        click.echo(f"{info.submission_id} {info.status}" + (f": {info.message}" if info.message else ""))
    elif logs_id:
        click.echo(client.logs(logs_id), nl=False)
    elif stop_id:
        stopped = client.stop(stop_id)
        click.echo(f"{stop_id} {'stop requested' if stopped else 'had already finished'}")


def _follow(client: JobClient, job_id: str) -> JobInfo:
    try:
        return client.follow(job_id, lambda chunk: click.echo(chunk, nl=False))
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the job keeps running (nucflow submit --stop {job_id})",
                   err=True)
        raise SystemExit(130) from None


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env takes KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _warn_relative_paths(command: Sequence[str]) -> None:
    """Relative paths resolve in the job's working directory on the cluster, not here."""
    for before, arg in zip(("", *command), command, strict=False):
        local = before in _OUTPUT_FLAGS or (not arg.startswith("-") and os.path.exists(arg))
        if local and "://" not in arg and not os.path.isabs(arg):
            click.echo(f"warning: {arg!r} is a relative path; the job resolves it on the cluster, "
                       "in a temporary working directory: give an absolute shared path", err=True)
