"""The router's HTTP/1.1 client for pods: keep-alive connections per pod, one request at a time on each.

Why not a general client library: on the router's request path aiohttp's per-request work (URL and header
multidicts, auto headers, timers, payload and writer objects) cost more than everything else the router does. A
pod call needs little: a POST whose body is already in memory, an answer framed by ``Content-Length`` or chunked
(parsed by ``httptools``, the parser uvicorn uses), its status, body and two headers.

- An endpoint is ``http://host:port`` or ``https://host:port``, with an optional path prefix.
- ``post`` raises ``PodUnreachable`` when no connection could be made (the pod never saw the request),
  ``TimeoutError`` past the timeout (connect included), and another ``OSError`` when the connection broke after the
  request was sent (the pod may have run it). The caller (``pod_client``) turns each into an answer.
- Idle connections are kept per pod (at most ``max_per_pod`` in use, the same number kept idle) and dropped once
  idle for ``idle_s``, shorter than a pod's own keep-alive timeout (uvicorn's 5 s), so a kept connection is not
  one the pod is about to close.
- Header values come from the router's HTTP server, whose parser refuses line breaks in them; the router checks
  again (``asgi.read_headers``) before any reaches here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools


class PodUnreachable(ConnectionError):
    """No connection to the pod could be made: it never saw the request. Never leaves the router's pod client."""


@dataclass(frozen=True, slots=True)
class PodResponse:
    """What a pod answered: status, body, and the headers the router passes on."""

    status: int
    body: bytes
    content_type: str | None
    retry_after: str | None


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    port: int
    tls: bool
    prefix: str
    host_header: str


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends a request and waits for its whole answer."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[PodResponse] | None = None
        self._chunks: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._framed = False
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (uvloop's TCP transports are not ``asyncio.Transport`` subclasses, but are one)."""
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a malformed answer breaks the connection."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionError(f"malformed answer from the pod: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """An answer in flight ends here: complete when unframed (read to close), broken otherwise."""
        self.closed = True
        if self._answer is not None and not self._answer.done():
            if self._parser.get_status_code() and not self._framed and exc is None:
                self.on_message_complete()
            else:
                self._fail(ConnectionError(f"the pod closed the connection mid-answer ({exc or 'EOF'})"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep the headers the router reads."""
        key = name.decode("latin-1").lower()
        if key in ("content-type", "retry-after", "content-length", "transfer-encoding"):
            self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        """Note whether the answer says where it ends, and whether the connection stays open after it."""
        self._framed = "content-length" in self._headers or "transfer-encoding" in self._headers
        self.reusable = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        """Collect the body."""
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        """Hand the whole answer to the waiting request."""
        if self._answer is None or self._answer.done():
            return
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._answer.set_result(PodResponse(self._parser.get_status_code(), body,
                                            self._headers.get("content-type"), self._headers.get("retry-after")))

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    async def request(self, head: bytes, body: bytes) -> PodResponse:
        """Send one request and wait for its answer."""
        assert self._transport is not None
        self._chunks = []
        self._headers = {}
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.writelines((head, body))
        try:
            return await self._answer
        finally:
            self._answer = None

    def close(self) -> None:
        """Close the connection."""
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class PodConnections:
    """Keep-alive connections to pods, by endpoint."""

    def __init__(self, *, timeout_s: float, max_per_pod: int = 128, idle_s: float = 4.0) -> None:
        self._timeout_s = timeout_s
        self._max_per_pod = max_per_pod
        self._idle_s = idle_s
        self._endpoints: dict[str, _Endpoint] = {}
        self._idle: dict[str, list[_Connection]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def post(self, endpoint: str, path: str, body: bytes, headers: Mapping[str, str]) -> PodResponse:
        """POST ``body`` to ``path`` under ``endpoint`` with ``headers``; see the module docstring for errors."""
        where = self._endpoints.get(endpoint) or self._parse(endpoint)
        slots = self._slots.get(endpoint) or self._slots.setdefault(endpoint, asyncio.Semaphore(self._max_per_pod))
        lines = [f"POST {where.prefix}{path} HTTP/1.1\r\nhost: {where.host_header}\r\ncontent-length: {len(body)}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        async with slots, asyncio.timeout(self._timeout_s):
            connection = self._idle_connection(endpoint) or await self._connect(where)
            try:
                answer = await connection.request(head, body)
            except BaseException:
                connection.close()
                raise
        if connection.reusable and not connection.closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(endpoint, []).append(connection)
        else:
            connection.close()
        return answer

    def _idle_connection(self, endpoint: str) -> _Connection | None:
        idle = self._idle.get(endpoint)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_s:
                return connection
            connection.close()
        return None

    async def _connect(self, where: _Endpoint) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _transport, connection = await loop.create_connection(_Connection, where.host, where.port,
                                                                  ssl=where.tls or None)
        except TimeoutError:
            raise
        except OSError as error:
            raise PodUnreachable(f"cannot connect to {where.host}:{where.port}: {error}") from error
        return connection

    def _parse(self, endpoint: str) -> _Endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PodUnreachable(f"not an http(s) endpoint: {endpoint!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        where = _Endpoint(host=parts.hostname, port=port, tls=tls, prefix=parts.path.rstrip("/"),
                          host_header=parts.netloc)
        self._endpoints[endpoint] = where
        return where

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
