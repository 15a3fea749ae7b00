"""The uvicorn server of a pod process: its first SIGTERM drains (readiness off, in-flight requests finish).

Used by the one-process pod (``server.serve``) and by each HTTP front (``front.run_front``).
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

import structlog
import uvicorn

from handlers.app import PodApi, create_app
from handlers.http_protocol import OneWriteHttpToolsProtocol
from handlers.prediction_capture import with_prediction_records
from handlers.settings import PodSettings

log = structlog.get_logger("handlers.draining_server")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM drains: readiness goes false, in-flight requests finish, then exit."""

    def __init__(self, config: uvicorn.Config, *, api: PodApi, drain_timeout_s: float):
        super().__init__(config)
        self.api = api
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        """Remember the loop the signal handler hands the drain to."""
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First SIGTERM: drain. Anything else (SIGINT, a second signal): uvicorn's own shutdown."""
        if sig != signal.SIGTERM or self.api.runtime.draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        idle = self.api.begin_drain()
        log.info("pod.draining", in_flight=self.api.runtime.in_flight, queued=self.api.runtime.batcher.depth)
        self._drain_task = asyncio.ensure_future(self._drain(idle))

    async def _drain(self, idle: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(idle.wait(), timeout=self.drain_timeout_s)
        except TimeoutError:
            log.warning("pod.drain_timeout", in_flight=self.api.runtime.in_flight)
        self.should_exit = True


def uvicorn_config(api: PodApi, settings: PodSettings) -> uvicorn.Config:
    """The uvicorn configuration of a process serving ``api``."""
    runtime = api.runtime
    app = with_prediction_records(create_app(api), settings=settings, model=runtime.name, version=runtime.version,
                                  declared=runtime.input_specs)
    return uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on",
                          http=OneWriteHttpToolsProtocol,
                          log_config=None, access_log=False, server_header=False, date_header=False,
                          timeout_graceful_shutdown=int(settings.drain_timeout_s) or None)
