"""uvicorn's httptools protocol, with each connection's writes of one event-loop turn sent as one write.

uvicorn writes a response's status line and headers, then its body, as two ``transport.write`` calls; with
``TCP_NODELAY`` each becomes its own TCP segment, and the client wakes once for the head and again for the body.
Holding writes until the end of the loop turn (``call_soon``) sends the whole of a small response at once: one
system call, one segment, one wake-up of the client. Order is kept and nothing waits longer than one turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class TurnWriter:
    """A transport whose writes within one turn of the event loop reach the socket as one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold ``data``; the first write of a turn schedules the flush."""
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        """Hold every line."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Send what is held, as one write."""
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """Send what is held, then half-close."""
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        """Drop what is held and the connection."""
        self._held = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent, held ones included."""
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a ``TurnWriter``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Wrap the connection's transport before uvicorn sees it."""
        super().connection_made(TurnWriter(transport, self.loop))  # type: ignore[arg-type]
