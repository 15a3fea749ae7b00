"""The router's HTTP edge in plain ASGI: which proxy endpoint a path names, the request headers it needs, replies.

The proxy endpoints are served straight from the ASGI scope, not through Starlette's request, routing and
response objects: on the request path that machinery cost more than the router's own work. Everything else
(health, ``/metrics``, management routes, lifespan) still goes to a Starlette app.

- ``proxy_call`` matches the four endpoint shapes the way Starlette's ``{name}`` parameters would (a segment is
  one or more characters other than ``/``), on the path below ``root_path``.
- ``read_headers`` reads the request headers once: the ones forwarded to the pod (``FORWARDED_HEADERS``, the first
  of each when repeated, as Starlette's ``headers.get``), the request and group ids, the declared length. A value
  holding a line break is never forwarded: ``Incoming.check`` refuses the request (HTTP servers refuse such
  values first; the pod request is written by hand, so this does not rely on it).
- ``Reply`` is an answer to send: status, content type, extra headers, body (sent as it is, with its length).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import orjson
from starlette.types import Scope, Send

from schemas.errors import BadRequest

#: Request headers passed to the pod. ``content-length`` is not: the client library sets it for the body it sends.
FORWARDED_HEADERS = ("content-type", "accept", "inference-header-content-length", "x-group-request-id")
_FORWARDED = {name.encode(): name for name in FORWARDED_HEADERS}

Style = Literal["v2", "ts"]


@dataclass(frozen=True, slots=True)
class ProxyCall:
    """What a proxy path names: the model, a version or alias, and the pod endpoint it goes to."""

    model: str
    ref: str
    style: Style

    @property
    def pod_path(self) -> str:
        """The path of the pod's endpoint for this call."""
        return f"/v2/models/{self.model}/infer" if self.style == "v2" else f"/predictions/{self.model}"


def proxy_call(scope: Scope, *, default_ref: str) -> ProxyCall | None:
    """The proxy call a request's path names, or None when the path is not a proxy endpoint."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    parts = path.split("/")
    if "" in parts[1:]:  # an empty segment never matches a path parameter
        return None
    size = len(parts)
    if parts[1] == "v2" and size >= 5 and parts[2] == "models" and parts[-1] == "infer":
        if size == 5:
            return ProxyCall(parts[3], default_ref, "v2")
        if size == 7 and parts[4] == "versions":
            return ProxyCall(parts[3], parts[5], "v2")
        return None
    if parts[1] in ("predictions", "predict") and size in (3, 4):
        return ProxyCall(parts[2], parts[3] if size == 4 else default_ref, "ts")
    return None


@dataclass(slots=True)
class Incoming:
    """The request headers the proxy reads; ``forward`` holds those passed to the pod, by lower-case name."""

    forward: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    content_length: str | None = None
    broken: str = ""

    def check(self) -> None:
        """Refuse the request when a header to forward or echo holds a line break."""
        if self.broken:
            raise BadRequest(f"header {self.broken} holds a line break", hint="Send header values on one line.")


def read_headers(scope: Scope) -> Incoming:
    """The headers of a request, read in one pass over the ASGI scope's raw header list."""
    incoming = Incoming()
    forward = incoming.forward
    for raw_name, raw_value in scope["headers"]:
        name = _FORWARDED.get(raw_name)
        if (name is not None or raw_name == b"x-request-id") and (b"\n" in raw_value or b"\r" in raw_value):
            incoming.broken = raw_name.decode("latin-1")
        elif name is not None:
            if name not in forward:
                forward[name] = raw_value.decode("latin-1")
        elif raw_name == b"x-request-id":
            incoming.request_id = incoming.request_id or raw_value.decode("latin-1")
        elif raw_name == b"content-length" and incoming.content_length is None:
            incoming.content_length = raw_value.decode("latin-1")
    return incoming


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to send: ``headers`` are extra (name, value) pairs, lower-case names."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    content_type: str = "application/json"

    async def send(self, send: Send) -> None:
        """Send the answer as one start message and one body message."""
        headers = [(b"content-type", self.content_type.encode("latin-1")),
                   (b"content-length", str(len(self.body)).encode()), *self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def json_reply(status: int, document: object, headers: list[tuple[bytes, bytes]]) -> Reply:
    """A JSON answer."""
    return Reply(status, orjson.dumps(document), headers)


#: What Starlette answers for a known path and another method, kept for the proxy endpoints.
METHOD_NOT_ALLOWED = Reply(405, b"Method Not Allowed", [(b"allow", b"POST")], "text/plain; charset=utf-8")
