"""The management API beside the router: token-protected, audited writes with errors from the outcomes table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from app.management_api import management_routes
from release import registry
from release.bootstrap import CONTROLLER_SUBSCRIPTION, App, bootstrap
from release.controller import Controller
from release.db import session_scope
from release.settings import Settings
from release.testing import FakeServing, ScriptedGates, ScriptedPromoter
from release.worker import Consumer, run_until_idle
from tests.release.registrations import register_version

TOKEN = "s3cret-token"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    """An app on SQLite whose controller drives fakes; versions 1 and 2 released, 2 is PROD."""
    application = bootstrap(Settings(home=tmp_path / "home", api_token=TOKEN, log_format="json"))
    application._controller = Controller(engine=application.engine, bus=application.bus, serving=FakeServing(),
                                         gates=ScriptedGates(), promoter=ScriptedPromoter(),
                                         materialize=lambda _v: None)
    application.ensure_subscriptions()
    consumer = Consumer(bus=application.bus, subscription=CONTROLLER_SUBSCRIPTION,
                        handler=application.controller.handle)
    for version in ("1", "2"):
        register_version(application.engine, application.bus, version)
        run_until_idle([consumer], bus=application.bus)
    yield application
    application.close()


@pytest.fixture
def client(app: App) -> TestClient:
    """A client of the management routes."""
    return TestClient(Starlette(routes=management_routes(app)))


def _auth(actor: str = "ana") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "X-Actor": actor}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_writes_without_the_token_are_refused(client: TestClient, headers: dict[str, str]) -> None:
    """No token or a wrong one gets 401 with the unauthorized reason, and nothing moves."""
    response = client.post("/api/v1/models/digits/rollback", headers=headers)
    assert response.status_code == 401 and response.json()["reason"] == "unauthorized"


def test_rollback_by_api_is_audited_with_the_actor(client: TestClient, app: App) -> None:
    """A rollback through the API moves PROD back and records who asked and why."""
    response = client.post("/api/v1/models/digits/rollback", headers=_auth("oncall"), json={"reason": "bad"})
    assert response.status_code == 200
    with session_scope(app.engine) as s:
        assert registry.get_alias(s, "digits", "PROD").version == "1"
        entries = [(e.actor, e.action, e.reason) for e in registry.audit_log(s, model="digits")]
    assert ("oncall", "release.rolled_back", "bad") in entries


def test_errors_map_through_the_outcomes_table(client: TestClient) -> None:
    """Unknown model 404, malformed JSON 400, each with a machine-readable body."""
    missing = client.post("/api/v1/models/nope/rollback", headers=_auth())
    assert missing.status_code == 404 and missing.json()["reason"] == "model_not_found"
    broken = client.post("/api/v1/models/digits/rollback", headers={**_auth(), "Content-Type": "application/json"},
                         content=b"{not json")
    assert broken.status_code == 400


def test_feedback_is_recorded_and_bad_feedback_refused(client: TestClient) -> None:
    """Ground truth by request id is stored; a post without items is a 400 that says why."""
    ok = client.post("/api/v1/feedback", headers=_auth(), json={"model": "digits", "request_id": "r1", "label": "3"})
    assert ok.status_code == 200 and ok.json()["recorded"] == 1
    bad = client.post("/api/v1/feedback", headers=_auth(), json={"model": "digits"})
    assert bad.status_code == 400 and bad.json()["reason"] == "bad_request"
    assert "request_id" in bad.json()["hint"]
