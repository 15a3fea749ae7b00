"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document of every ``/api/v1`` route, reads and writes.

Hand-written, route by route, from the same table the routes are built from in spirit: a route added to
``app.console.read_api`` or ``app.management_api`` without a line here fails ``tests/console/test_openapi.py``.
Response bodies are described loosely (objects with their required keys); the error body is exact.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from schemas.manifest import NAME_PATTERN
from schemas.states import VersionState

# A version as it appears in a URL: the manifest's pattern without a leading dot (no `.`/`..` path segments).
URL_VERSION_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
READ_ERRORS = ("400", "401", "404")
WRITE_ERRORS = ("400", "401", "404", "409", "422", "429", "503")

ERROR = {"type": "object", "required": ["reason", "message", "hint"],
         "properties": {"reason": {"type": "string"}, "message": {"type": "string"}, "hint": {"type": "string"},
                        "details": {"type": "object"}}}


#: One journal event as the events page and each event-stream frame's ``data`` carry it.
EVENT = {"type": "object", "required": ["seq", "id", "type", "topic", "time", "data"],
         "properties": {"seq": {"type": "integer"}, "id": {"type": "string"}, "type": {"type": "string"},
                        "topic": {"type": "string"}, "model": {"type": ["string", "null"]},
                        "subject": {"type": ["string", "null"]}, "time": {"type": "string"},
                        "data": {"type": "object"}}}

#: One Server-Sent Events frame of the stream: ``id`` is the journal seq, ``event`` the short type, ``data`` the
#: event as JSON (OpenAPI 3.2's way of describing an event stream, which 3.1 tools read as a plain schema).
SSE_FRAME = {"type": "object", "required": ["id", "event", "data"],
             "properties": {"id": {"type": "string"}, "event": {"type": "string"}, "retry": {"type": "integer"},
                            "data": {"type": "string", "contentMediaType": "application/json",
                                     "contentSchema": EVENT}}}


def _obj(*required: str) -> dict[str, Any]:
    return {"type": "object", "required": list(required)}


def _path(name: str) -> dict[str, Any]:
    pattern = NAME_PATTERN if name == "model" else URL_VERSION_PATTERN
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern}}


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


def _int(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def _op(summary: str, body: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        errors: tuple[str, ...] = READ_ERRORS, media: str = "application/json",
        request: dict[str, Any] | None = None, secured: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {media: {"schema": body}}}}
    for code in errors:
        responses[code] = {"description": "refused: see `reason` and `hint`",
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    op: dict[str, Any] = {"summary": summary, "parameters": params or [], "responses": responses}
    if request is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": request}}}
    if secured:
        op["security"] = [{"bearer": []}]
    return op


def _reads() -> dict[str, Any]:
    model, version = _path("model"), _path("version")
    limit = _query("limit", _int(1, 500), "page size")
    return {
        "/api/v1/models": {"get": _op("every model with PROD, STG, state counts; open alerts",
                                      _obj("models", "alerts"))},
        "/api/v1/models/{model}": {"get": _op("a model: aliases, state counts, versions in flight, canary",
                                              _obj("name", "aliases", "states", "canary", "alerts"),
                                              params=[model])},
        "/api/v1/models/{model}/versions": {"get": _op(
            "a page of versions, newest first", _obj("items", "total", "limit", "offset"),
            params=[model, _query("state", {"type": "string", "enum": [s.value for s in VersionState]},
                                  "only versions in this state"), limit,
                    _query("offset", _int(0, 10**9), "versions to skip")])},
        "/api/v1/models/{model}/versions/{version}": {"get": _op(
            "a version or an alias: manifest, state, gate report beside PROD, deployment, log tail, history",
            _obj("version", "state", "manifest", "gate_report", "comparison", "deployment", "history"),
            params=[model, version])},
        "/api/v1/models/{model}/aliases": {"get": _op("aliases with their audited moves", _obj("aliases", "moves"),
                                                      params=[model])},
        "/api/v1/models/{model}/canary": {"get": _op(
            "the newest canary: version, route weight, budgets, and each step's weight, phase and what the "
            "candidate pods served (requests, errors, error rate, p99, breaches); null when none ran",
            _obj("model", "canary"), params=[model])},
        "/api/v1/models/{model}/timeline": {"get": _op("the audit trail on one time axis", _obj("entries"),
                                                       params=[model, _query("limit", _int(1, 1000), "entries")])},
        "/api/v1/models/{model}/drift": {"get": _op(
            "drift windows, PSI series, reference-vs-live histograms, class mix, alerts, live accuracy",
            _obj("windows", "top_features", "psi_series", "histograms", "classes", "alerts", "accuracy"),
            params=[model, _query("version", {"type": "string", "pattern": URL_VERSION_PATTERN}, "version or alias"),
                    _query("windows", _int(1, 500), "how many windows"), _query("top", _int(1, 50), "top features")])},
        "/api/v1/models/{model}/policy": {"get": _op("the release policy in force", _obj("model", "source", "policy"),
                                                     params=[model])},
        "/api/v1/alerts": {"get": _op("open drift alerts and the newest alert events", _obj("open", "events"),
                                      params=[_query("model", {"type": "string", "pattern": NAME_PATTERN}, "model"),
                                              limit])},
        "/api/v1/events": {"get": _op(
            "journalled events, oldest first: after a sequence number, or the newest before one",
            _obj("events", "last_seq"),
            params=[_query("after", _int(0, 2**62), "events after this seq"),
                    _query("before", _int(0, 2**62), "the newest events before this seq"),
                    _query("model", {"type": "string", "pattern": NAME_PATTERN}, "one model's events"),
                    _query("limit", _int(1, 1000), "page size")])},
        "/api/v1/events/stream": {"get": _op(
            "new events as Server-Sent Events (id = seq; resumes from Last-Event-ID)", SSE_FRAME,
            media="text/event-stream",
            params=[_query("after", _int(0, 2**62), "start after this seq (default: only new events)"),
                    _query("model", {"type": "string", "pattern": NAME_PATTERN}, "one model's events"),
                    _query("max_s", _int(1, 86_400), "end the stream after this many seconds")])},
        "/api/v1/dead-letters": {"get": _op(
            "events that failed every attempt", _obj("dead_letters"),
            params=[_query("subscription", {"type": "string", "minLength": 1, "maxLength": 64}, "one subscription"),
                    _query("limit", _int(1, 1000), "how many")])},
        "/api/v1/openapi.json": {"get": _op("this document", _obj("openapi", "paths"), errors=())},
    }


def _writes() -> dict[str, Any]:
    model, version = _path("model"), _path("version")
    reason = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 500}}}
    feedback = {"type": "object", "properties": {"model": {"type": "string"}, "items": {"type": "array"}}}

    def write(summary: str, body: dict[str, Any], params: list[dict[str, Any]], request: dict[str, Any]) -> Any:
        return _op(summary, body, params=params, errors=WRITE_ERRORS, request=request, secured=True)

    return {
        "/api/v1/models/{model}/versions/{version}/promote": {"post": write(
            "move PROD to a version by hand (gates skipped)", _obj("model", "version", "state"),
            [model, version], reason)},
        "/api/v1/models/{model}/versions/{version}/retry": {"post": write(
            "release a settled version again: deploy, gates, canary", _obj("model", "version", "state"),
            [model, version], reason)},
        "/api/v1/models/{model}/rollback": {"post": write("move PROD back to its previous version", _obj("state"),
                                                          [model], reason)},
        "/api/v1/feedback": {"post": write("ground truth for served requests", _obj("recorded"), [], feedback)},
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    paths = _reads()
    for path, ops in _writes().items():
        paths.setdefault(path, {}).update(ops)
    paths["/api/v1/models/{model}/policy"]["put"] = _op(
        "set the model's release policy (validated, audited, a new revision)", _obj("model", "revision"),
        params=[_path("model")], errors=WRITE_ERRORS, secured=True,
        request={"type": "object", "required": ["policy"],
                 "properties": {"policy": {"type": "object"}, "reason": {"type": "string"}}})
    return {"openapi": "3.1.0",
            "info": {"title": "model-release API", "version": "1",
                     "description": "Reads are open unless RELEASE_READS_NEED_TOKEN; writes need a bearer token."},
            "paths": paths,
            "components": {"schemas": {"Error": ERROR},
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}


def openapi_route() -> Route:
    """``GET /api/v1/openapi.json``."""

    async def serve(_request: Request) -> Response:
        return JSONResponse(document())

    return Route("/api/v1/openapi.json", serve, methods=["GET"])
