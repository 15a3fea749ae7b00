"""The management API beside the router: promote, rollback, retry, ground-truth feedback and operator policies,
each an authenticated, audited write whose actor is the credential's identity (``release.identity``), never a
header the caller writes. Errors answer with the status and ``Retry-After`` of the one error table."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.console.query import model_name
from app.console.read_access import ReadAccess
from app.http_errors import error_response
from monitoring.feedback import post_feedback
from release import policies
from release.bootstrap import App, authenticator, default_policy
from release.db import session_scope
from schemas.errors import BadRequest, ReleaseError

Action = Callable[[Request, str, dict[str, Any]], dict[str, Any]]


def _writer(app: App) -> Callable[[Action], Callable[..., Any]]:
    """Wraps an action as an endpoint: authenticate (the actor), parse the JSON object body, answer errors."""
    identities = authenticator(app.settings)

    def write(action: Action) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            try:
                actor = await asyncio.to_thread(identities.actor, request.headers.get("authorization"))
                body = await request.json() if await request.body() else {}
                if not isinstance(body, dict):
                    raise BadRequest("the request body must be a JSON object")
                result = await asyncio.to_thread(action, request, actor, body)
            except ValueError as error:  # malformed JSON
                return error_response(BadRequest(f"invalid JSON: {error}", hint="Send a JSON object body."))
            except ReleaseError as error:
                return error_response(error)
            return JSONResponse(result)

        return endpoint

    return write


def management_routes(app: App) -> list[Route]:
    """Authenticated writes beside the router: promote, rollback, retry, feedback, operator policies. Every
    write is audited (in the registry's audit log, feedback with its actor)."""
    write = _writer(app)
    reads = ReadAccess(app)

    def promote(request: Request, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        step = app.controller.promote(request.path_params["model"], request.path_params["version"], actor=actor,
                                      reason=str(body.get("reason", "api")))
        return {"model": step.model, "version": step.version, "state": str(step.after)}

    def rollback(request: Request, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        step = app.controller.rollback(request.path_params["model"], actor=actor,
                                       reason=str(body.get("reason", "api")))
        return {"state": str(step.after) if step else None}

    def retry(request: Request, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        step = app.controller.retry(request.path_params["model"], request.path_params["version"], actor=actor,
                                    reason=str(body.get("reason", "api")))
        return {"model": step.model, "version": step.version, "state": str(step.after)}

    def feedback(_request: Request, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        return post_feedback(app.engine, app.bus, {"actor": actor, **body})

    def put_policy(request: Request, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        document = body.get("policy")
        if not isinstance(document, dict):
            raise BadRequest("the body needs `policy` (the release policy as a JSON object) and may give `reason`")
        policy = policies.parse_policy(document, webhook_prefixes=app.settings.webhook_prefixes)
        with session_scope(app.engine) as s:
            view = policies.set_policy(s, model=request.path_params["model"], policy=policy, actor=actor,
                                       reason=str(body.get("reason", "api")))
        return {"model": view.model, "revision": view.revision, "actor": view.actor, "diff": view.diff}

    async def get_policy(request: Request) -> Response:
        try:
            reads.check(request)
            model = model_name(request.path_params["model"])
        except ReleaseError as error:
            return error_response(error)
        with session_scope(app.engine) as s:
            view = policies.current(s, model)
        policy = view.policy if view else default_policy(app.settings)
        return JSONResponse({"model": model, "source": "operator" if view else "default",
                             "revision": view.revision if view else None, "policy": policy.model_dump(mode="json")})

    write_policy = write(put_policy)

    async def policy(request: Request) -> Response:
        # One route for both methods, so a 405 names both in `Allow` (two routes would each name only their own).
        return await (write_policy(request) if request.method == "PUT" else get_policy(request))

    return [Route("/api/v1/models/{model}/policy", policy, methods=["GET", "PUT"]),
            Route("/api/v1/models/{model}/versions/{version}/promote", write(promote), methods=["POST"]),
            Route("/api/v1/models/{model}/versions/{version}/retry", write(retry), methods=["POST"]),
            Route("/api/v1/models/{model}/rollback", write(rollback), methods=["POST"]),
            Route("/api/v1/feedback", write(feedback), methods=["POST"])]
