"""The operator console: the read API under ``/api/v1``, its live event stream, its OpenAPI document, and the
dashboard under ``/ui/``. The HTTP layer only translates: every answer comes from the read functions in
``release.console_reads``, ``release.journal_reads`` and ``monitoring.drift_views``, which the CLI uses too."""

from __future__ import annotations

from starlette.routing import BaseRoute

from app.console.event_stream import stream_route
from app.console.openapi import openapi_route
from app.console.pages import page_routes
from app.console.read_api import read_routes
from release.bootstrap import App


def console_routes(app: App) -> list[BaseRoute]:
    """Every console route: read API, event stream, OpenAPI document, dashboard and its static files."""
    return [*read_routes(app), stream_route(app), openapi_route(), *page_routes(app)]
