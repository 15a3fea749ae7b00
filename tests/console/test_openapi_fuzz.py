"""Schemathesis against /api/v1/openapi.json: every read route answers as documented for generated inputs, every
write is refused without a credential, and the document covers every /api/v1 route the app serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from starlette.routing import Mount, Route

from app.console.openapi import document
from release.bootstrap import App
from tests.console.conftest import seeded_app, web_of

#: Bounded so the whole module runs in well under a minute on two shared cores.
EXAMPLES = 8


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """A seeded app of its own: the fuzzer may try anything, so it gets a registry no other test reads."""
    application = seeded_app(tmp_path_factory.mktemp("fuzz") / "home")
    try:
        yield application
    finally:
        application.close()


@pytest.fixture(scope="module")
def served(fuzzed_app: App) -> Any:
    """The app the generated requests go to, over ASGI (no socket)."""
    return web_of(fuzzed_app)


# The document is static (``document()``); generating cases needs no app, so the schema is built at collection and
# each case is sent to the module's app by ``call``. (Schemathesis' lazy ``from_fixture`` loader fails on pytest 9.)
schema = schemathesis.openapi.from_dict(document())


@schema.include(method="GET").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_read_answers_as_documented(case: schemathesis.Case, served: Any) -> None:
    """Generated reads get a documented status, content type and body shape, never a server error."""
    case.call_and_validate(app=served)


@schema.exclude(method="GET").parametrize()
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_write_is_refused_without_a_token(case: schemathesis.Case, served: Any) -> None:
    """Each write, whatever its generated body, is 401 unauthorized without a credential."""
    if case.method.upper() != case.operation.method.upper():
        return  # schemathesis also probes undocumented methods: those are 405, checked by the read test's checks
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    response = case.call(app=served)
    assert response.status_code == 401, response.text
    assert response.json()["reason"] == "unauthorized"


def test_the_document_covers_every_api_route(fuzzed_app: App) -> None:
    """Every /api/v1 route and method the app serves is in the document, and nothing else is."""
    served: set[tuple[str, str]] = set()
    for route in web_of(fuzzed_app).routes:
        if isinstance(route, Route) and route.path.startswith("/api/v1") and not isinstance(route, Mount):
            served |= {(route.path, m.lower()) for m in (route.methods or set()) if m != "HEAD"}
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert served == documented


def test_schema_file_is_valid_openapi(tmp_path: Path) -> None:
    """The document loads as OpenAPI 3.1 and names a security scheme for writes."""
    doc = document()
    assert doc["openapi"].startswith("3.1") and "bearer" in doc["components"]["securitySchemes"]
    loaded = schemathesis.openapi.from_dict(doc)
    assert len(list(loaded.get_all_operations())) == sum(len(ops) for ops in doc["paths"].values())
