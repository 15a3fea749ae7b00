"""The dashboard under ``/ui/``: server-rendered pages (Jinja2, autoescaped) and the fragments that the page's
script swaps in when the event stream reports a change. ``/`` redirects here.

Everything a page shows comes from ``app.console.page_data``, which reads through the same functions as the
read API. Manifest text (descriptions, labels, metrics) is untrusted and reaches the page only through
autoescaped template expressions; the script adds event text with ``textContent``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from app.console import page_data
from app.console.read_access import ReadAccess
from app.output import plain
from release.bootstrap import App
from release.db import session_scope
from schemas.error_table import http_status
from schemas.errors import NotFound, ReleaseError

HERE = Path(__file__).parent
STATIC = HERE / "static"
#: Sections of the model page that can be re-rendered alone.
MODEL_SECTIONS = ("summary", "versions", "drift", "alerts", "timeline")
HOME_SECTIONS = ("models", "alerts")

Gather = Callable[[Request, Session], dict[str, Any]]


def templates() -> Jinja2Templates:
    """The page templates, autoescaped (Starlette's default for .html), with the helpers they use."""
    env = Jinja2Templates(directory=str(HERE / "templates"))
    env.env.filters["num"] = _num
    env.env.filters["when"] = _when
    env.env.globals["chart_asset"] = (STATIC / "uPlot.iife.min.js").is_file()
    return env


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"{value:.{digits}g}"
    return str(value)


def _when(value: Any) -> str:
    text = str(plain(value) or "")
    return text.replace("T", " ")[:19]


def page_routes(app: App) -> list[BaseRoute]:
    """``/``, the pages, their fragments and the static files."""
    views = templates()
    access = ReadAccess(app)

    def render(template: str, gather: Gather) -> Callable[[Request], Any]:
        def build(request: Request) -> dict[str, Any]:
            with session_scope(app.engine) as session:
                return gather(request, session)

        async def endpoint(request: Request) -> Response:
            section = request.path_params.get("section")
            name = f"fragments/{template}_{section}.html" if section else f"{template}.html"
            try:
                access.check(request)
                if section and section not in (MODEL_SECTIONS if template == "model" else HOME_SECTIONS):
                    raise NotFound(f"no section {section!r}", hint="Sections: " + ", ".join(MODEL_SECTIONS))
                context = await asyncio.to_thread(build, request)
            except ReleaseError as error:
                return views.TemplateResponse(request, "error.html", {"error": error.to_dict()},
                                              status_code=http_status(error))
            return views.TemplateResponse(request, name, {**context, "reads_need_token": access.required})

        return endpoint

    def home(_request: Request, s: Session) -> dict[str, Any]:
        return page_data.home(s)

    def model(request: Request, s: Session) -> dict[str, Any]:
        return page_data.model_page(s, request.path_params["model"])

    def version(request: Request, s: Session) -> dict[str, Any]:
        return page_data.version_page(s, request.path_params["model"], request.path_params["version"])

    async def root(_request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    async def ui(_request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    return [Route("/", root, methods=["GET"]), Route("/ui", ui, methods=["GET"]),
            Route("/ui/", render("home", home), methods=["GET"]),
            Route("/ui/fragments/{section}", render("home", home), methods=["GET"]),
            Route("/ui/models/{model}", render("model", model), methods=["GET"]),
            Route("/ui/models/{model}/fragments/{section}", render("model", model), methods=["GET"]),
            Route("/ui/models/{model}/versions/{version}", render("version", version), methods=["GET"]),
            Mount("/ui/static", app=StaticFiles(directory=str(STATIC), check_dir=False), name="static")]

