"""`nucflow submit` right after a cluster starts waits (bounded, with a message) for the cluster's
job agent instead of failing with Ray's "No available agent to submit job".

The cluster here is a small HTTP server on loopback that speaks the part of Ray's Jobs API that
submission uses (version, package upload, job submission) and answers as a starting head does:
HTTP 500 "No available agent ..." for its first submissions. Ray's own JobSubmissionClient talks
to it, so the retry is exercised against Ray's real client and error."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nucflow.cluster import JobClient
from nucflow.errors import ClusterError

AGENT_MISSING = "No available agent to submit job, please try again later."


class _StartingHead(BaseHTTPRequestHandler):
    refusals = 0  # submissions still to refuse
    submissions = 0

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: str, kind: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        import ray

        if self.path.startswith("/api/version"):
            self._send(200, json.dumps({"version": "4", "ray_version": ray.__version__, "ray_commit": "x",
                                        "session_name": "test"}))
        else:  # /api/packages/...: not uploaded yet
            self._send(404, "not found", "text/plain")

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, "")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).submissions += 1
        if type(self).refusals > 0:
            type(self).refusals -= 1
            self._send(500, AGENT_MISSING, "text/plain")
        else:
            self._send(200, json.dumps({"submission_id": "raysubmit_ready", "job_id": None}))


@pytest.fixture()
def head() -> Iterator[tuple[str, type[_StartingHead]]]:
    handler = type("Head", (_StartingHead,), {"refusals": 0, "submissions": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_submit_waits_for_the_job_agent(head, caplog) -> None:
    address, handler = head
    handler.refusals = 2
    with caplog.at_level(logging.WARNING, logger="nucflow.cluster"):
        job = JobClient(address).submit(["segment", "--help"])
    assert job == "raysubmit_ready" and handler.submissions == 3
    assert "has no job agent yet (it is starting); retrying" in caplog.text


def test_submit_gives_up_after_the_bound(head) -> None:
    address, handler = head
    handler.refusals = 1000
    with pytest.raises(ClusterError, match=r"no job agent after 1 s of waiting .*No available agent"):
        JobClient(address).submit_entrypoint("true", agent_wait_s=1.0)
    assert 1 < handler.submissions < 10
