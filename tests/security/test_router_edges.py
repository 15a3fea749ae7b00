"""Limits at the router's edge: every request is untrusted, so none can make the router buffer, count or log
without bound.

Each test replays an attack over real HTTP (uvicorn on loopback, as in production) and asserts the exact refusal
and that nothing past the bound was read, counted or recorded.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

from release.router.metrics import UNKNOWN_MODEL
from release.router.request_body import DEFAULT_MAX_BODY_BYTES, BodyTooLarge, receive_body
from release.settings import Settings
from schemas.errors import Reason
from tests.release.router_testkit import MODEL, ROW
from tests.security.edge_client import CHUNK, post_chunked, post_declaring
from tests.security.edge_router import EdgeRouter

INFER = f"/v2/models/{MODEL}/infer"
MiB = 2**20


def _refused_as_too_large(status: int, body: object) -> None:
    assert status == 413
    assert isinstance(body, dict) and set(body) == {"error", "reason", "hint"}
    assert body["reason"] == str(Reason.BODY_TOO_LARGE) and body["hint"]


# ---------------------------------------------------------------------------------------------- body size
def test_declared_300mb_body_is_refused_before_it_is_read(serve_edge_router: Callable[..., EdgeRouter]) -> None:
    """A Content-Length of 300 MB is answered 413 while the client has sent 1 KiB of it; no pod sees it."""
    edge = serve_edge_router()  # the default limit, the same as RELEASE_MAX_BODY_MB's default
    hits = edge.upstream.hits
    answer = post_declaring(edge.url, INFER, declared=300 * MiB, send=1024)
    _refused_as_too_large(answer.status, answer.json())
    assert str(DEFAULT_MAX_BODY_BYTES) in answer.json()["error"]
    assert answer.sent == 1024  # the router answered without waiting for the other 299.99 MB
    assert edge.upstream.hits == hits
    assert edge.metrics.registry.get_sample_value(
        "router_requests_total", {"model": MODEL, "version": "-", "code": "413"}) == 1


def test_chunked_body_over_the_limit_is_refused_as_it_passes(serve_edge_router: Callable[..., EdgeRouter]) -> None:
    """A chunked 300 MB body without Content-Length is answered 413 long before the client is done sending."""
    edge = serve_edge_router(max_body_bytes=1 * MiB)
    hits = edge.upstream.hits
    answer = post_chunked(edge.url, INFER, total=300 * MiB)
    _refused_as_too_large(answer.status, answer.json())
    # The answer came while the client was still sending: what it had pushed by then is the 1 MiB the router
    # read plus what the loopback socket buffers hold, nowhere near the 300 MB.
    assert 1 * MiB < answer.sent < 64 * MiB
    assert edge.upstream.hits == hits


def test_streamed_body_is_read_no_further_than_the_limit() -> None:
    """The bounded reader stops pulling chunks at the one that would pass the limit, holding at most the limit."""
    pulled = 0

    async def endless() -> Message:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": True}

    with pytest.raises(BodyTooLarge) as refused:
        asyncio.run(receive_body(endless, limit_bytes=16 * CHUNK))
    assert pulled == 17 and refused.value.reason is Reason.BODY_TOO_LARGE


def test_body_of_exactly_the_limit_is_served(serve_edge_router: Callable[..., EdgeRouter]) -> None:
    """The limit is inclusive: a body of exactly max_body_bytes is proxied, one byte more is refused."""
    body = orjson.dumps(ROW)
    at_limit = serve_edge_router(max_body_bytes=len(body))
    below_limit = serve_edge_router(max_body_bytes=len(body) - 1)
    headers = {"content-type": "application/json"}
    assert httpx.post(at_limit.url + INFER, content=body, headers=headers).status_code == 200
    refused = httpx.post(below_limit.url + INFER, content=body, headers=headers)
    _refused_as_too_large(refused.status_code, refused.json())


def test_router_default_limit_is_the_settings_default() -> None:
    """A Router built without max_body_bytes enforces RELEASE_MAX_BODY_MB's default, so unwired stacks are bounded."""
    assert Settings.model_fields["max_body_mb"].default * MiB == DEFAULT_MAX_BODY_BYTES


# ---------------------------------------------------------------------------------------------- metric labels
def _request_label_sets(url: str) -> set[tuple[tuple[str, str], ...]]:
    text = httpx.get(url + "/metrics").text
    return {tuple(sorted(sample.labels.items()))
            for family in text_string_to_metric_families(text) if family.name == "router_requests"
            for sample in family.samples if sample.name == "router_requests_total"}


def test_random_model_names_add_at_most_one_label_set(serve_edge_router: Callable[..., EdgeRouter]) -> None:
    """1,000 requests for made-up models add one label set (model="(unknown)") to /metrics; a known model keeps
    its own."""
    edge = serve_edge_router()
    names = [f"m-{uuid.uuid4().hex[:12]}" for _ in range(1000)]
    with httpx.Client(base_url=edge.url) as client:
        assert client.post(INFER, json=ROW).status_code == 200
        before = _request_label_sets(edge.url)
        for name in names:
            assert client.post(f"/v2/models/{name}/infer", json=ROW).json()["reason"] == "model_not_found"
    after = _request_label_sets(edge.url)
    assert after - before == {(("code", "404"), ("model", UNKNOWN_MODEL), ("version", "-"))}
    assert (("code", "200"), ("model", MODEL), ("version", "1")) in after
    exposition = httpx.get(edge.url + "/metrics").text
    assert not any(name in exposition for name in names)
    assert edge.metrics.registry.get_sample_value(
        "router_requests_total", {"model": UNKNOWN_MODEL, "version": "-", "code": "404"}) == 1000


# ---------------------------------------------------------------------------------------------- prediction log
def test_tiny_body_claiming_a_million_rows_logs_only_rows_sent(serve_edge_router: Callable[..., EdgeRouter]) -> None:
    """An 85-byte body declaring shape [1000000, 1] over 3 values logs at most those 3 rows, never a million."""
    edge = serve_edge_router()
    claim = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1000000,1],"data":[0.5,0.25,1.0]}]}'
    assert len(claim) == 85
    answer = httpx.post(edge.url + INFER, content=claim, headers={"content-type": "application/json"})
    assert answer.status_code == 200  # the stand-in pod accepts anything; the router must not believe the claim
    from_claim = len(edge.logged())
    assert from_claim <= 3
    truthful = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [0.5, 0.25, 1.0, 0.0]}]}
    assert httpx.post(edge.url + INFER, json=truthful).status_code == 200
    logged = edge.logged()  # the same router logs a body whose shape matches its data, row by row
    assert len(logged) == from_claim + 2
    assert [r["inputs"] for r in logged[-2:]] == [[0.5, 0.25], [1.0, 0.0]]
