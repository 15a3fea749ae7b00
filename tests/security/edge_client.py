"""A raw HTTP/1.1 client for attacks a well-behaved client library will not send: a huge declared body followed
by almost nothing, or a chunked body that keeps coming after the server has answered.

Each call says how many body bytes it really sent before the answer came, which is what the tests assert on.
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

CHUNK = 64 * 1024


@dataclass(frozen=True)
class RawAnswer:
    """A parsed HTTP answer, and how many body bytes the client had sent when it arrived."""

    status: int
    headers: dict[str, str]
    body: bytes
    sent: int

    def json(self) -> Any:
        """The answer body as JSON."""
        return orjson.loads(self.body)


def post_declaring(url: str, path: str, *, declared: int, send: int, timeout_s: float = 10.0) -> RawAnswer:
    """POST with ``Content-Length: declared`` but only ``send`` body bytes, then wait for the answer."""
    with _connect(url, timeout_s) as sock:
        sock.sendall(_head(url, path, f"Content-Length: {declared}") + b"0" * send)
        return _read_answer(sock, sent=send)


def post_chunked(url: str, path: str, *, total: int, timeout_s: float = 30.0) -> RawAnswer:
    """POST ``total`` bytes chunked (no Content-Length), stopping as soon as an answer arrives."""
    with _connect(url, timeout_s) as sock:
        sock.sendall(_head(url, path, "Transfer-Encoding: chunked"))
        sent = 0
        frame = f"{CHUNK:x}\r\n".encode() + b"0" * CHUNK + b"\r\n"
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(frame)
            sent += CHUNK
        if sent >= total:
            sock.sendall(b"0\r\n\r\n")
        return _read_answer(sock, sent=sent)


def _connect(url: str, timeout_s: float) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout_s)


def _head(url: str, path: str, framing: str) -> bytes:
    host = urlsplit(url).netloc
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
            .encode())


def _read_answer(sock: socket.socket, *, sent: int) -> RawAnswer:
    """Read one answer framed by its Content-Length (the connection may stay open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        body += _recv(sock)
    return RawAnswer(status=int(status_line.split()[1]), headers=headers, body=body, sent=sent)


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection before answering")
    return chunk
