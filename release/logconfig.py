"""structlog, configured once per process: JSON with Cloud Logging's ``severity`` in production, console locally."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def _severity(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    # Cloud Logging reads `severity`; keep `level` too for local tools.
    event["severity"] = event.get("level", method).upper()
    return event


class CurrentStderrLogger:
    """A structlog logger that writes each line to whatever ``sys.stderr`` is when it writes.

    structlog's ``PrintLogger`` keeps the stream it was made with; a module-level logger cached on first use would
    then keep writing to a stream that was replaced and closed since (a test's captured output, a redirected
    stream), and the log call itself would fail.
    """

    def msg(self, message: str) -> None:
        """Write one rendered line."""
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _current_stderr_logger(*_args: Any) -> CurrentStderrLogger:
    return CurrentStderrLogger()


def configure_logging(*, fmt: str = "auto", level: str = "INFO") -> None:
    """Set up structlog and stdlib logging; ``fmt`` is auto, json or console."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if as_json:
        shared += [_severity, structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_current_stderr_logger,
        # Not cached: a module-level logger then follows a later configure (a test's capture_logs, a role that
        # reconfigures), at the cost of building the bound logger per call; the control plane logs per event,
        # not per request.
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("uvicorn.access", "httpx", "alembic.runtime.migration", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
