"""Reading a request body with a size limit: a client's body is untrusted, so it is never read past the limit.

A declared ``Content-Length`` over the limit is refused before a byte of the body is read. Without one (chunked
transfer), the body is read message by message from the ASGI ``receive`` and refused as soon as the next chunk
would pass the limit, so at most ``limit`` bytes are ever held, never the whole body the client meant to send. A
body that came in one message (the usual small request) is returned as it came, without a copy.
"""

from __future__ import annotations

from starlette.types import Receive

from schemas.errors import BadRequest, Reason

#: The default limit, equal to the default of ``Settings.max_body_mb``.
DEFAULT_MAX_BODY_BYTES = 64 * 2**20


class BodyTooLarge(BadRequest):
    """A request body over the router's limit (answered 413 by the error table)."""

    reason = Reason.BODY_TOO_LARGE

    def __init__(self, *, limit_bytes: int) -> None:
        super().__init__(f"request body is larger than {limit_bytes} bytes",
                         hint="Send fewer rows per request, or raise RELEASE_MAX_BODY_MB on the router.",
                         details={"limit_bytes": limit_bytes})


def check_declared_length(declared: str | None, *, limit_bytes: int) -> None:
    """Refuse a body whose declared ``Content-Length`` is over the limit (before any of it is read)."""
    if declared is None:
        return
    if not declared.isdigit():  # the HTTP server rejects most of these first; never trust that it did
        raise BadRequest(f"invalid Content-Length {declared[:32]!r}")
    if int(declared) > limit_bytes:
        raise BodyTooLarge(limit_bytes=limit_bytes)


async def receive_body(receive: Receive, *, limit_bytes: int) -> bytes | None:
    """The whole body from ASGI ``receive``, ``BodyTooLarge`` as soon as it would pass ``limit_bytes``, or None
    when the client disconnected before sending all of it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge(limit_bytes=limit_bytes)
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk
        chunks.append(chunk)
