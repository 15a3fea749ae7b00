"""Reading a request body with a size limit: a client's body is untrusted, so it is never read past the limit.

A declared ``Content-Length`` over the limit is refused before a byte of the body is read. Without one (chunked
transfer), the body is read chunk by chunk and refused as soon as the next chunk would pass the limit, so at most
``limit`` bytes are ever held, never the whole body the client meant to send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

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


def check_declared_length(headers: Mapping[str, str], *, limit_bytes: int) -> None:
    """Refuse a body whose declared ``Content-Length`` is over the limit (before any of it is read)."""
    declared = headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():  # the HTTP server rejects most of these first; never trust that it did
        raise BadRequest(f"invalid Content-Length {declared[:32]!r}")
    if int(declared) > limit_bytes:
        raise BodyTooLarge(limit_bytes=limit_bytes)


async def read_limited(chunks: AsyncIterator[bytes], *, limit_bytes: int) -> bytes:
    """The whole body from ``chunks``, or ``BodyTooLarge`` as soon as it would pass ``limit_bytes``."""
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > limit_bytes:
            raise BodyTooLarge(limit_bytes=limit_bytes)
        body += chunk
    return bytes(body)
