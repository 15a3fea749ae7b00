"""The router's proxy: request ids and headers, error answers, log context, and when it tries another pod.

Tiny Starlette upstreams (real HTTP on loopback) stand in for pods where the behaviour is the router's own; one
real pod process (``python -m handlers.server`` with a TorchScript digits MLP) serves where a real answer matters.
Routing and its cache are in ``test_route_table``, prediction logging in ``test_prediction_log``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import structlog
from sqlalchemy.engine import Engine

from release import registry
from release.db import session_scope
from release.router.metrics import UNKNOWN_MODEL
from tests.handlers.pod_testkit import Pod, free_port
from tests.release.router_testkit import MODEL, FakeClock, Harness, Upstream, add_version, move_alias


# ---------------------------------------------------------------------------------------------- headers
def test_request_id_generated_or_taken_and_group_id_echoed(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                            serve_router: Callable[..., Harness]) -> None:
    """X-Request-ID is generated when absent, kept when given, forwarded to the pod; the group id is echoed."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["a"].url])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router()
    generated = h.infer()
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert "x-group-request-id" not in generated.headers
    given = h.infer(**{"X-Request-ID": "req-42", "X-Group-Request-ID": "grp-7"})
    assert given.headers["x-request-id"] == "req-42"
    assert given.headers["x-group-request-id"] == "grp-7"
    assert upstreams["a"].request_ids[-2:] == [generated.headers["x-request-id"], "req-42"]


def test_model_version_and_server_timing_headers_from_a_real_pod(sqlite_engine: Engine, real_pod: Pod,
                                                                 serve_router: Callable[..., Harness]) -> None:
    """A real pod's answer comes back with X-Model-Version and a Server-Timing of upstream within total time."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [real_pod.url])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router(timing_clock=FakeClock(tick=0.001))  # every reading is a millisecond after the last
    rows = np.random.default_rng(0).random((3, 64)).astype(np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64], "data": rows.ravel().tolist()}]}
    response = h.client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200
    assert response.headers["x-model-version"] == "1" and response.headers["x-model-name"] == MODEL
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
    assert set(timing) == {"upstream", "total"}
    assert 0 < float(timing["upstream"]) < float(timing["total"])
    output = response.json()["outputs"][0]
    assert output["shape"] == [3, 10]
    assert np.allclose(np.asarray(output["data"]).reshape(3, 10).sum(axis=1), 1.0, atol=1e-4)


def test_pod_retry_after_is_passed_to_the_client(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                 serve_router: Callable[..., Harness]) -> None:
    """A pod's 429 queue_full reaches the client with the pod's Retry-After, and is not tried on another pod."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["full"].url, upstreams["a"].url])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router()
    before = upstreams["a"].hits
    full = h.infer()
    assert full.status_code == 429 and full.json()["reason"] == "queue_full"
    assert full.headers["retry-after"] == "3"
    assert upstreams["a"].hits == before
    served = h.infer()  # round robin: the next request goes to the pod with room
    assert served.status_code == 200 and "retry-after" not in served.headers


def test_log_lines_of_a_request_carry_its_request_id(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                     serve_router: Callable[..., Harness]) -> None:
    """What the router logs while handling a request carries that request's id and model, and nothing leaks."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [f"http://127.0.0.1:{free_port()}", upstreams["a"].url])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router()
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        assert h.infer(**{"X-Request-ID": "r-logged"}).status_code == 200
        assert h.infer(**{"X-Request-ID": "r-quiet"}).status_code == 200  # a live pod first: nothing to say
    unreachable = [line for line in logs if line["event"] == "router.pod_unreachable"]
    assert len(unreachable) == 1
    assert unreachable[0]["request_id"] == "r-logged" and unreachable[0]["model"] == MODEL
    assert all(line.get("request_id") == "r-logged" for line in logs)
    assert structlog.contextvars.get_contextvars() == {}


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_model_or_version_is_404_with_reason(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                     serve_router: Callable[..., Harness]) -> None:
    """An unknown model or version answers 404 with the reason code, a hint and the request id."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["a"].url])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router()
    model = h.infer("/v2/models/nope/infer", **{"X-Request-ID": "r-404"})
    assert model.status_code == 404 and model.json()["reason"] == "model_not_found"
    assert "nope" in model.json()["error"]
    assert model.headers["x-request-id"] == "r-404"
    version = h.infer(f"/v2/models/{MODEL}/versions/9/infer")
    assert version.status_code == 404 and version.json()["reason"] == "version_not_found"
    assert "9" in version.json()["error"]
    # The unknown model is counted under the one fixed label; the known model's refusal keeps its own.
    assert h.sample("router_requests_total", model="nope", version="-", code="404") == 0
    assert h.sample("router_requests_total", model=UNKNOWN_MODEL, version="-", code="404") == 1
    assert h.sample("router_requests_total", model=MODEL, version="-", code="404") == 1


def test_version_without_ready_pods_is_503(sqlite_engine: Engine, serve_router: Callable[..., Harness]) -> None:
    """A version that exists but has no ready deployment answers 503 not_ready, not 404."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", None)
        add_version(s, "2", ["http://127.0.0.1:9"])
        view = registry.get_version(s, MODEL, "2")
        registry.record_deployment(s, version_id=view.id, backend="local", status="failed", endpoints=[])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router()
    for path in (f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/versions/2/infer"):
        response = h.infer(path)
        assert response.status_code == 503, path
        assert response.json()["reason"] == "not_ready"


# ---------------------------------------------------------------------------------------------- retries
def test_connect_error_is_retried_on_another_pod(sqlite_engine: Engine, real_pod: Pod,
                                                 serve_router: Callable[..., Harness]) -> None:
    """With one dead endpoint and one live pod every request succeeds; each dead hit counts one retry."""
    dead = f"http://127.0.0.1:{free_port()}"
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [dead, real_pod.url])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router()
    responses = [h.infer() for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.headers["x-model-version"] == "1" for r in responses)
    # Round robin starts on the dead endpoint and alternates: requests 1 and 3 were retried.
    assert h.sample("router_upstream_retries_total") == 2


def test_upstream_500_is_not_retried(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                     serve_router: Callable[..., Harness]) -> None:
    """A pod that answered 500 may have run the request: the router passes the 500 on and tries nobody else."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["broken"].url, upstreams["a"].url])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router()
    before_a, before_broken = upstreams["a"].hits, upstreams["broken"].hits
    response = h.infer()
    assert response.status_code == 500 and response.json()["served_by"] == "broken"
    assert (upstreams["a"].hits, upstreams["broken"].hits) == (before_a, before_broken + 1)
    assert h.sample("router_upstream_retries_total") == 0
    assert h.sample("router_requests_total", model=MODEL, version="1", code="500") == 1


def test_draining_pod_refusal_is_retried_on_another_pod(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                        serve_router: Callable[..., Harness]) -> None:
    """A 503 not_ready refusal (a draining pod ran nothing) is retried on the version's next pod."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["draining"].url, upstreams["a"].url])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router()
    response = h.infer()
    assert response.status_code == 200 and response.json()["served_by"] == "a"
    assert h.sample("router_upstream_retries_total") == 1


def test_stale_route_to_retired_pods_resolves_afresh(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                     serve_router: Callable[..., Harness]) -> None:
    """When every pod of a cached route refuses (retired after a rollback) the router re-resolves at once."""
    dead = f"http://127.0.0.1:{free_port()}"
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["a"].url])
        add_version(s, "2", [dead])
    move_alias(sqlite_engine, "PROD", "2")
    h = serve_router(clock=FakeClock())  # the clock never moves: only the refusal can refresh the route
    assert h.router.table.lookup(MODEL, "PROD").version == "2"  # cached: pods already gone
    move_alias(sqlite_engine, "PROD", "1")
    response = h.infer()
    assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    assert h.infer().headers["x-model-version"] == "1"


def test_every_pod_unreachable_is_503(sqlite_engine: Engine, serve_router: Callable[..., Harness]) -> None:
    """When no pod of the version accepts a connection the answer is 503 unavailable, with the request id."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router()
    response = h.infer(**{"X-Request-ID": "r-dead"})
    assert response.status_code == 503 and response.json()["reason"] == "unavailable"
    assert response.headers["x-request-id"] == "r-dead"
