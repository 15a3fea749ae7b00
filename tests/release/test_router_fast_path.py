"""The router's fast path: cached routes without a registry read, one lookup per miss, its own HTTP edge and pod
client.

Routes are served by the same upstream stand-ins as ``test_router``; the pod client is driven against raw asyncio
servers on loopback that answer with exact bytes (chunked, read-to-close, cut short).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from release.db import session_scope
from release.router import Router, RouterMetrics, RouteTable, build_router_app
from release.router.asgi import read_headers
from release.router.pod_http import PodConnections, PodResponse, PodUnreachable
from release.router.route_table import Target
from schemas.errors import BadRequest
from tests.handlers.pod_testkit import free_port
from tests.release.router_testkit import MODEL, ROW, FakeClock, Harness, Upstream, add_version, move_alias

INFER = f"/v2/models/{MODEL}/infer"


class CountingTable(RouteTable):
    """A route table that counts its registry lookups (the calls a cache miss makes)."""

    def __init__(self, *, engine: Engine) -> None:
        super().__init__(engine=engine, ttl_s=0.5, clock=FakeClock())  # the clock never moves: no expiry
        self.lookups = 0
        self._count_lock = threading.Lock()

    def lookup(self, model: str, ref: str) -> Target:
        """Count, then look up."""
        with self._count_lock:
            self.lookups += 1
        return super().lookup(model, ref)


def _seed(engine: Engine, upstream: Upstream) -> None:
    with session_scope(engine) as s:
        add_version(s, "1", [upstream.url])
    move_alias(engine, "PROD", "1")


async def _with_router(table: RouteTable, run: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    router = Router(table=table, logger=None, metrics=RouterMetrics(CollectorRegistry()), timeout_s=10,
                    rng=random.Random(3))
    await router.startup()
    try:
        transport = httpx.ASGITransport(app=build_router_app(router))
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            await run(client)
    finally:
        await router.shutdown()


def test_fresh_cached_route_is_served_without_a_lookup(sqlite_engine: Engine, upstreams: dict[str, Upstream]) -> None:
    """After the first request, requests within the TTL never call the registry lookup (the worker-thread path)."""
    _seed(sqlite_engine, upstreams["a"])
    table = CountingTable(engine=sqlite_engine)

    async def run(client: httpx.AsyncClient) -> None:
        for _ in range(5):
            assert (await client.post(INFER, json=ROW)).status_code == 200

    asyncio.run(_with_router(table, run))
    assert table.lookups == 1


def test_requests_missing_together_share_one_lookup(sqlite_engine: Engine, upstreams: dict[str, Upstream]) -> None:
    """Eight requests arriving with no cached route wait on one registry lookup, and all are served."""
    _seed(sqlite_engine, upstreams["a"])
    table = CountingTable(engine=sqlite_engine)

    async def run(client: httpx.AsyncClient) -> None:
        answers = await asyncio.gather(*(client.post(INFER, json=ROW) for _ in range(8)))
        assert [a.status_code for a in answers] == [200] * 8

    asyncio.run(_with_router(table, run))
    assert table.lookups == 1


def test_other_methods_on_proxy_paths_are_405(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                              serve_router: Callable[..., Harness]) -> None:
    """GET on a proxy endpoint answers 405 with Allow: POST; health and metrics still answer."""
    _seed(sqlite_engine, upstreams["a"])
    h = serve_router()
    for path in (INFER, f"/predictions/{MODEL}", f"/predict/{MODEL}/PROD", f"/v2/models/{MODEL}/versions/1/infer"):
        answer = h.client.get(path)
        assert (answer.status_code, answer.headers["allow"]) == (405, "POST"), path
    assert h.client.get("/v2/health/ready").status_code == 200
    assert h.client.get("/v2/models/a/b/c/infer").status_code == 404
    assert "router_requests_total" in h.client.get("/metrics").text


def test_header_with_a_line_break_is_refused() -> None:
    """A forwarded or echoed header holding a line break is refused, never written into the pod request."""
    incoming = read_headers({"headers": [(b"x-group-request-id", b"g\r\nx-evil: 1"), (b"accept", b"*/*")]})
    assert "x-group-request-id" not in incoming.forward
    with pytest.raises(BadRequest, match="x-group-request-id"):
        incoming.check()
    read_headers({"headers": [(b"x-request-id", b"fine"), (b"accept", b"*/*")]}).check()


# ---------------------------------------------------------------------------------------------- pod client
async def _pod_answering(answers: list[bytes], accepted: list[int]) -> asyncio.Server:
    """A server that answers the n-th request it reads with ``answers[n]`` then closes when it ends with EOF."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        while answers:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:  # the client closed its kept connection
                break
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            answer = answers.pop(0)
            writer.write(answer.removesuffix(b"<EOF>"))
            await writer.drain()
            if answer.endswith(b"<EOF>"):
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _post_all(answers: list[bytes], requests: int) -> tuple[list[PodResponse | OSError], int]:
    accepted: list[int] = []

    async def run() -> list[PodResponse | OSError]:
        server = await _pod_answering(answers, accepted)
        port = server.sockets[0].getsockname()[1]
        pods = PodConnections(timeout_s=5)
        results: list[PodResponse | OSError] = []
        for _ in range(requests):
            try:
                results.append(await pods.post(f"http://127.0.0.1:{port}", "/x", b"{}", {"x-request-id": "r"}))
            except OSError as error:
                results.append(error)
        pods.close()
        server.close()
        return results

    return asyncio.run(run()), len(accepted)


def test_chunked_answers_are_read_whole_on_one_kept_connection() -> None:
    """Chunked and Content-Length answers come back whole, and the connection is reused between them."""
    chunked = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n" \
              b"3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n"
    sized = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 2\r\n\r\n{}"
    results, connections = _post_all([chunked, sized], 2)
    first, second = results
    assert isinstance(first, PodResponse) and isinstance(second, PodResponse)
    assert (first.status, first.body, first.content_type) == (200, b'{"a":1}', "application/json")
    assert (second.status, second.retry_after) == (429, "3")
    assert connections == 1


def test_answer_read_to_close_and_answer_cut_short() -> None:
    """An unframed answer ends at close; one cut short before its length is a broken connection, not unreachable."""
    results, _ = _post_all([b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it<EOF>"], 1)
    assert isinstance(results[0], PodResponse) and results[0].body == b"all of it"
    results, _ = _post_all([b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc<EOF>"], 1)
    assert isinstance(results[0], ConnectionError) and not isinstance(results[0], PodUnreachable)


def test_refused_connection_is_unreachable() -> None:
    """A port nobody listens on raises PodUnreachable: the pod never saw the request."""

    async def run() -> None:
        with pytest.raises(PodUnreachable):
            await PodConnections(timeout_s=5).post(f"http://127.0.0.1:{free_port()}", "/x", b"", {})

    asyncio.run(run())
