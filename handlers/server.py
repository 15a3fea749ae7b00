"""``python -m handlers.server``: load one artifact and serve it until SIGTERM, then drain and exit 0.

Exit codes: 0 after a clean drain, 2 for a bad command line, 3 when the artifact is refused or fails to load
(the log's last line says why, with its reason code), 1 when an HTTP worker process died unasked.

``--http-workers 1`` (the default) is one process; more puts HTTP front processes before one model process
(``handlers.workers``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import structlog
import uvicorn

from handlers.app import PodApi, create_app
from handlers.dataplane import load_runtime
from handlers.logs import configure_logging
from handlers.settings import PodSettings, parse_settings
from handlers.workers import serve_workers
from schemas.errors import ReleaseError

log = structlog.get_logger("handlers.server")
EXIT_LOAD_FAILED = 3


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
    return uvicorn.Config(create_app(api), host=settings.host, port=settings.port, lifespan="on",
                          log_config=None, access_log=False, server_header=False, date_header=False,
                          timeout_graceful_shutdown=int(settings.drain_timeout_s) or None)


def serve(settings: PodSettings) -> int:
    """Load, serve, drain in this one process. Returns the process exit code."""
    try:
        runtime = load_runtime(settings)
    except ReleaseError as e:
        log.error("pod.load_failed", artifact=str(settings.artifact), **e.to_dict())
        return EXIT_LOAD_FAILED
    # Everything loaded so far (torch, the model) lives until exit: keep the collector from rescanning it,
    # which would otherwise stall requests for tens of milliseconds at every full collection.
    gc.collect()
    gc.freeze()
    api = PodApi(runtime)
    server = DrainingServer(uvicorn_config(api, settings), api=api, drain_timeout_s=settings.drain_timeout_s)
    log.info("pod.starting", model=runtime.name, version=runtime.version, handler=runtime.artifact.handler,
             device=str(runtime.device), dtype=settings.dtype, compile=settings.compile,
             max_batch_size=settings.max_batch_size, max_batch_delay_ms=settings.max_batch_delay_ms,
             queue_size=settings.queue_size, request_timeout_s=settings.request_timeout_s,
             host=settings.host, port=settings.port, pid=os.getpid())
    server.run()
    runtime.batcher.stop()
    log.info("pod.stopped", model=runtime.name, version=runtime.version)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m handlers.server``."""
    settings = parse_settings(argv, environ=os.environ)
    # The event loop and the batch worker pass the GIL back and forth on every batch; Python's default 5 ms
    # switch interval would let either one stall the other for that long under load.
    sys.setswitchinterval(0.0005)
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    if settings.http_workers > 1:
        return serve_workers(settings, exit_load_failed=EXIT_LOAD_FAILED)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
