"""The read API under ``/api/v1``: models, versions, aliases, timeline, events, drift, alerts, dead letters.

Each route translates a request into one read function (``release.console_reads``, ``release.journal_reads``,
``monitoring.drift_views``) run in a worker thread on its own session, and answers JSON; a refusal is the error
table's status and body. ``app.console.openapi`` describes every route listed here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.console.query import int_param, model_param, state_param, text_param
from app.console.read_access import ReadAccess
from app.http_errors import error_response
from app.output import plain
from monitoring import drift_views
from release import console_reads, journal_reads, registry
from release.bootstrap import App
from release.db import session_scope
from schemas.errors import ReleaseError

Reader = Callable[[Request, Session], Any]


def reader(app: App, access: ReadAccess) -> Callable[[Reader], Callable[[Request], Any]]:
    """Wraps a read as an endpoint: check read access, run it on a session in a thread, answer JSON or the error."""

    def wrap(read: Reader) -> Callable[[Request], Any]:
        def run(request: Request) -> Any:
            with session_scope(app.engine) as session:
                return plain(read(request, session))

        async def endpoint(request: Request) -> Response:
            try:
                access.check(request)
                return JSONResponse(await asyncio.to_thread(run, request))
            except ReleaseError as error:
                return error_response(error)

        return endpoint

    return wrap


def _models(_request: Request, s: Session) -> Any:
    return {"models": console_reads.models_overview(s), "alerts": drift_views.open_alerts(s)}


def _model(request: Request, s: Session) -> Any:
    name = request.path_params["model"]
    return {**console_reads.model_detail(s, name), "alerts": drift_views.open_alerts(s, model=name)}


def _versions(request: Request, s: Session) -> Any:
    return console_reads.versions_page(s, request.path_params["model"], state=state_param(request),
                                       limit=int_param(request, "limit", default=50, low=1, high=500) or 50,
                                       offset=int_param(request, "offset", default=0, low=0, high=10**9) or 0)


def _version(request: Request, s: Session) -> Any:
    return console_reads.version_detail(s, request.path_params["model"], request.path_params["version"])


def _canary(request: Request, s: Session) -> Any:
    model = request.path_params["model"]
    return {"model": model, "canary": console_reads.canary_progress(s, model)}


def _aliases(request: Request, s: Session) -> Any:
    return console_reads.aliases_with_audit(s, request.path_params["model"])


def _timeline(request: Request, s: Session) -> Any:
    limit = int_param(request, "limit", default=200, low=1, high=1000) or 200
    return {"model": request.path_params["model"],
            "entries": console_reads.timeline(s, request.path_params["model"], limit=limit)}


def _drift(request: Request, s: Session) -> Any:
    model = request.path_params["model"]
    ref = text_param(request, "version", max_length=64)
    version = registry.resolve(s, model, ref).version if ref else None
    return drift_views.drift_detail(s, model, version=version,
                                    windows=int_param(request, "windows", default=30, low=1, high=500) or 30,
                                    top=int_param(request, "top", default=5, low=1, high=50) or 5)


def _alerts(request: Request, s: Session) -> Any:
    model = model_param(request)
    limit = int_param(request, "limit", default=50, low=1, high=500) or 50
    return {"open": drift_views.open_alerts(s, model=model),
            "events": drift_views.alert_events(s, model=model, limit=limit)}


def _events(request: Request, s: Session) -> Any:
    model = model_param(request)
    limit = int_param(request, "limit", default=100, low=1, high=1000) or 100
    after = int_param(request, "after", default=None, low=0, high=2**62)
    before = int_param(request, "before", default=None, low=0, high=2**62)
    if after is not None:
        rows = list(journal_reads.after(s, seq=after, limit=limit, model=model))
    else:
        rows = journal_reads.before(s, seq=before, limit=limit, model=model)
    return {"events": [journal_reads.event_view(r) for r in rows], "last_seq": journal_reads.last_seq(s)}


def read_routes(app: App) -> list[Route]:
    """The JSON read routes (the policy read lives with its write in ``app.management_api``)."""
    read = reader(app, ReadAccess(app))

    def dead_letters(request: Request, _s: Session) -> Any:
        limit = int_param(request, "limit", default=100, low=1, high=1000) or 100
        rows = app.bus.dead_letters(text_param(request, "subscription", max_length=64), limit=limit)
        return {"dead_letters": [{"subscription": d.subscription, "type": d.event_type, "event_id": d.event_id,
                                  "attempts": d.attempts, "error": d.error, "at": d.at} for d in rows]}

    table: list[tuple[str, Reader]] = [
        ("/api/v1/models", _models), ("/api/v1/models/{model}", _model),
        ("/api/v1/models/{model}/versions", _versions), ("/api/v1/models/{model}/versions/{version}", _version),
        ("/api/v1/models/{model}/aliases", _aliases), ("/api/v1/models/{model}/canary", _canary),
        ("/api/v1/models/{model}/timeline", _timeline),
        ("/api/v1/models/{model}/drift", _drift), ("/api/v1/alerts", _alerts), ("/api/v1/events", _events),
        ("/api/v1/dead-letters", dead_letters)]
    return [Route(path, read(func), methods=["GET"]) for path, func in table]
