"""``GET /api/v1/events/stream``: the event journal as Server-Sent Events, so pages change without polling.

The server polls the journal by sequence number (``release.journal_reads.after``) and sends each new event as
``id: SEQ`` / ``event: TYPE`` / ``data: JSON``. A browser's ``EventSource`` reconnects by itself with
``Last-Event-ID``, so a connection ends after ``RELEASE_CONSOLE_STREAM_MAX_S`` (or the request's ``max_s``)
without losing anything; a comment line every few seconds keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.console.query import int_param, model_param
from app.console.read_access import ReadAccess
from app.http_errors import error_response
from app.output import plain
from release import journal_reads
from release.bootstrap import App
from release.db import session_scope
from schemas.errors import ReleaseError

HEARTBEAT_S = 10.0
#: What the browser waits before reconnecting after the stream ends (milliseconds).
RETRY_MS = 1000


def frame(event: dict[str, object]) -> str:
    """One SSE frame of a journal event: its sequence number as the id, its short type as the event name."""
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(plain(event), sort_keys=True)}\n\n"


class JournalTail:
    """Reads the journal forward from a sequence number, one batch per call (run in a worker thread)."""

    def __init__(self, app: App, *, seq: int | None, model: str | None) -> None:
        self._app = app
        self._model = model
        self.seq = seq

    def start(self) -> int:
        """Where the stream starts: the given sequence number, or the journal's end (only new events)."""
        if self.seq is None:
            with session_scope(self._app.engine) as session:
                self.seq = journal_reads.last_seq(session)
        return self.seq

    def next_batch(self) -> list[str]:
        """Frames of the events after the last one sent, oldest first; advances the position."""
        with session_scope(self._app.engine) as session:
            rows = journal_reads.after(session, seq=self.seq or 0, limit=200, model=self._model)
            events = [journal_reads.event_view(row) for row in rows]
        if events:
            self.seq = int(str(events[-1]["seq"]))
        return [frame(e) for e in events]


def _start_seq(request: Request) -> int | None:
    last = request.headers.get("last-event-id", "")
    if last.isdigit():
        return int(last)
    return int_param(request, "after", default=None, low=0, high=2**62)


def stream_route(app: App) -> Route:
    """The SSE route; reads the journal every ``RELEASE_POLL_INTERVAL_S``."""
    access = ReadAccess(app)
    interval = max(0.05, app.settings.poll_interval_s)

    async def stream(request: Request) -> Response:
        try:
            access.check(request)
            tail = JournalTail(app, seq=_start_seq(request), model=model_param(request))
            limit = int_param(request, "max_s", default=None, low=1, high=86_400)
            max_s = min(float(limit), app.settings.console_stream_max_s) if limit else app.settings.console_stream_max_s
            await asyncio.to_thread(tail.start)
        except ReleaseError as error:
            return error_response(error)

        async def frames() -> AsyncIterator[str]:
            started = last_sent = time.monotonic()
            retry = f"retry: {RETRY_MS}\n"  # sent with the first event: a frame without data is no event
            while time.monotonic() - started < max_s:
                batch = await asyncio.to_thread(tail.next_batch)
                for item in batch:
                    yield retry + item
                    retry = ""
                now = time.monotonic()
                if batch:
                    last_sent = now
                elif now - last_sent >= HEARTBEAT_S:
                    last_sent = now
                    yield ": keep-alive\n\n"
                await asyncio.sleep(interval)

        return StreamingResponse(frames(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return Route("/api/v1/events/stream", stream, methods=["GET"])
