"""Every log line the pod writes while handling a request carries that request's ``X-Request-ID``.

In-process: the routes over a fake runtime whose inference fails, with structlog's log capture. Over real HTTP:
a ``--http-workers 2`` pod's log names the request id of a request its handler failed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import structlog
from pod_testkit import Artifacts, Digits, eventually, infer_body

from handlers.app import PodApi, create_app
from handlers.base import InferenceRequest, InferenceResult
from handlers.settings import PodSettings
from schemas.errors import PermanentError, Reason


class FailingBatcher:
    """A batcher whose every inference raises what it was given."""

    def __init__(self, error: Exception):
        self.error = error
        self.arriving = 0
        self.depth = 0

    async def infer(self, request: InferenceRequest, *, timeout_s: float) -> InferenceResult:
        raise self.error


class FakeRuntime:
    """Just enough of a ``ServingRuntime`` for the routes: ready, named ``m``, inference through ``batcher``."""

    def __init__(self, error: Exception):
        self.settings = PodSettings(artifact=Path("unused"))
        self.ready = True
        self.draining = False
        self.in_flight = 0
        self.name, self.version, self.input_specs, self.worker = "m", "1", None, None
        self.batcher = FailingBatcher(error)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name}

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        pass

    async def scrape(self) -> bytes:
        return b""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass


def failing_request(error: Exception, request_id: str) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """The status of one predictions request that fails with ``error``, the log lines, and the context after."""
    app = create_app(PodApi(FakeRuntime(error)))  # type: ignore[arg-type]

    async def send() -> tuple[int, dict[str, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            response = await client.post("/predictions/m", json=[1.0], headers={"X-Request-ID": request_id})
        return response.status_code, structlog.contextvars.get_contextvars()

    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        status, context_after = asyncio.run(send())
    return status, logs, context_after


def test_unexpected_exception_is_logged_with_its_request_id():
    """An exception the routes did not expect is logged as request.failed carrying the request's id."""
    status, logs, _ = failing_request(RuntimeError("boom"), "req-crash")
    assert status == 500
    failed = [line for line in logs if line["event"] == "request.failed"]
    assert failed and all(line["request_id"] == "req-crash" for line in failed)


def test_server_error_is_logged_with_its_request_id_and_context_is_cleared():
    """A 5xx answer is logged with the request's id, and the id is unbound once the request is answered."""
    status, logs, context_after = failing_request(PermanentError("no", reason=Reason.HANDLER_ERROR), "req-500")
    assert status == 500
    assert [(line["event"], line["request_id"], line["reason"]) for line in logs] == [
        ("request.failed", "req-500", "handler_error")]
    assert "request_id" not in context_after


def test_pod_log_line_of_a_failing_request_carries_its_request_id(start_pod, artifacts: Artifacts,
                                                                    digits: Digits):
    """A front of a real pod logs the failed request (handler exception) with its X-Request-ID."""
    pod = start_pod(artifacts.slow, "--http-workers", "2", "--log-format", "json").wait_ready()
    body = infer_body(digits.x[:1], parameters={"fail": True})
    response = httpx.post(f"{pod.url}/v2/models/slow/infer", json=body, headers={"X-Request-ID": "doomed-7"},
                          timeout=30)
    assert response.status_code == 500

    def front_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in pod.log.splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == "request.failed"]

    failed = eventually(front_lines, bool)
    assert [line["request_id"] for line in failed] == ["doomed-7"]
