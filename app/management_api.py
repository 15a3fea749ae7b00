"""The management API beside the router: promote, rollback and ground-truth feedback, each a token-protected,
audited write. Errors answer with the status and ``Retry-After`` of the one error table."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from monitoring.feedback import post_feedback
from release.bootstrap import App
from schemas.error_table import http_status, retry_after
from schemas.errors import BadRequest, ReleaseError, Unauthorized


def management_routes(app: App) -> list[Route]:
    """Token-protected writes beside the router: promote, rollback, ground-truth feedback. Every write is audited
    (promote and rollback in the registry's audit log, feedback with its actor); errors map to HTTP status through
    the one error table."""

    def write(action: Callable[[Request, str, dict[str, Any]], dict[str, Any]]) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            try:
                token = app.settings.api_token
                given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                if not token or not hmac.compare_digest(given, token):
                    raise Unauthorized("management API writes need a valid token")
                body = await request.json() if await request.body() else {}
                if not isinstance(body, dict):
                    raise BadRequest("the request body must be a JSON object")
                result = await asyncio.to_thread(action, request, request.headers.get("x-actor", "api"), body)
            except ValueError as error:  # malformed JSON
                return JSONResponse({"reason": "bad_request", "message": f"invalid JSON: {error}"}, status_code=400)
            except ReleaseError as error:
                wait = retry_after(error)
                return JSONResponse(error.to_dict(), status_code=http_status(error),
                                    headers={"Retry-After": wait} if wait else None)
            return JSONResponse(result)

        return endpoint

    def promote(request: Request, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        step = app.controller.promote(request.path_params["model"], request.path_params["version"], actor=actor,
                                      reason=str(body.get("reason", "api")))
        return {"model": step.model, "version": step.version, "state": str(step.after)}

    def rollback(request: Request, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        step = app.controller.rollback(request.path_params["model"], actor=actor,
                                       reason=str(body.get("reason", "api")))
        return {"state": str(step.after) if step else None}

    def feedback(_request: Request, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        return post_feedback(app.engine, app.bus, {"actor": actor, **body})

    return [Route("/api/v1/models/{model}/versions/{version}/promote", write(promote), methods=["POST"]),
            Route("/api/v1/models/{model}/rollback", write(rollback), methods=["POST"]),
            Route("/api/v1/feedback", write(feedback), methods=["POST"])]
