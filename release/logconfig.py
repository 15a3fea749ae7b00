"""structlog, configured once per process: JSON with Cloud Logging's ``severity`` in production, console locally."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at each call. Loggers are cached on first use, so binding the stream
    object of configuration time would keep writing to it after it was replaced and closed (a test runner's
    capture, a redirect), turning a log line into an exception in the code that logs."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _severity(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    # Cloud Logging reads `severity`; keep `level` too for local tools.
    event["severity"] = event.get("level", method).upper()
    return event


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
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("uvicorn.access", "httpx", "alembic.runtime.migration", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
