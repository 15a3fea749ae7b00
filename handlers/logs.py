"""structlog set-up for the pod: JSON lines (with Cloud Logging's ``severity``) or readable console output."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog


def _severity(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["severity"] = method.upper()
    return event


def configure_logging(*, log_format: str, level: str) -> None:
    """Configure structlog once, at pod start; uvicorn's own loggers only speak up for warnings."""
    renderer: Any = (structlog.processors.JSONRenderer() if log_format == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if log_format == "json" else structlog.dev.set_exc_info,
    ]
    if log_format == "json":
        processors.append(_severity)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
