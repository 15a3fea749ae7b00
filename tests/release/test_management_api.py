"""The management API beside the router: authenticated, audited writes with errors from the one error table."""

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
from release.identity import token_hash
from release.settings import Settings
from release.testing import FakeServing, ScriptedGates, ScriptedPromoter
from release.worker import Consumer, run_until_idle
from tests.release.registrations import register_version

TOKEN = "s3cret-token"
ONCALL_TOKEN = "oncall-token-value"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    """An app on SQLite whose controller drives fakes; versions 1 and 2 released, 2 is PROD."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may write\noncall sha256:{token_hash(ONCALL_TOKEN)}\n")
    application = bootstrap(Settings(home=tmp_path / "home", api_token=TOKEN, api_tokens_file=tokens,
                                     log_format="json", webhook_allow="https://hooks.example.com/"))
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


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic " + TOKEN},
    {"Authorization": "Bearer s3cret-tökén".encode()}, {"Authorization": "Bearer a b"},
])
def test_writes_without_a_valid_token_are_refused(client: TestClient, headers: dict[str, str | bytes]) -> None:
    """No token, a wrong one, a malformed or non-ASCII one: 401 with the unauthorized reason, and nothing moves."""
    response = client.post("/api/v1/models/digits/rollback", headers=headers)
    assert response.status_code == 401 and response.json()["reason"] == "unauthorized"


def test_the_actor_is_the_tokens_name_and_x_actor_is_ignored(client: TestClient, app: App) -> None:
    """A rollback with a named token is audited under that name, whatever X-Actor claims."""
    response = client.post("/api/v1/models/digits/rollback", json={"reason": "bad"},
                           headers={**_auth(ONCALL_TOKEN), "X-Actor": "somebody-else"})
    assert response.status_code == 200
    with session_scope(app.engine) as s:
        assert registry.get_alias(s, "digits", "PROD").version == "1"
        entries = [(e.actor, e.action, e.reason) for e in registry.audit_log(s, model="digits")]
    assert ("oncall", "release.rolled_back", "bad") in entries
    assert all(actor != "somebody-else" for actor, _, _ in entries)


def test_the_single_token_writes_as_api_token(client: TestClient, app: App) -> None:
    """RELEASE_API_TOKEN still works; its writes are audited under the actor `api-token`."""
    assert client.post("/api/v1/models/digits/rollback", headers=_auth()).status_code == 200
    with session_scope(app.engine) as s:
        assert registry.audit_log(s, model="digits")[-1].actor == "api-token"


def test_policy_set_through_the_api_is_validated_versioned_and_audited(client: TestClient, app: App) -> None:
    """PUT policy stores a revision with its diff under the token's name; a bad one or a stray webhook is 400."""
    policy = {"gates": {"metrics": [{"metric": "accuracy", "min": 0.9}]}}
    done = client.put("/api/v1/models/digits/policy", headers=_auth(ONCALL_TOKEN),
                      json={"policy": policy, "reason": "stricter"})
    assert done.status_code == 200 and done.json()["revision"] == 1
    assert done.json()["diff"]["gates.metrics"]["to"] == [{"metric": "accuracy", "min": 0.9, "max": None}]
    shown = client.get("/api/v1/models/digits/policy").json()
    assert shown["source"] == "operator" and shown["policy"]["gates"]["metrics"][0]["min"] == 0.9
    with session_scope(app.engine) as s:
        assert ("oncall", "policy.set", "stricter") in [(e.actor, e.action, e.reason)
                                                        for e in registry.audit_log(s, model="digits")]
    invalid = client.put("/api/v1/models/digits/policy", headers=_auth(), json={"policy": {"gates": {"x": 1}}})
    assert invalid.status_code == 400 and invalid.json()["reason"] == "policy_invalid"
    stray = client.put("/api/v1/models/digits/policy", headers=_auth(),
                       json={"policy": {"drift": {"webhook_url": "http://169.254.169.254/latest"}}})
    assert stray.status_code == 400 and "allow-list" in stray.json()["message"]
    allowed = client.put("/api/v1/models/digits/policy", headers=_auth(),
                         json={"policy": {"drift": {"webhook_url": "https://hooks.example.com/ml"}}})
    assert allowed.status_code == 200 and allowed.json()["revision"] == 2
    refused = client.put("/api/v1/models/digits/policy", json={"policy": policy})
    assert refused.status_code == 401


def test_errors_map_through_the_one_error_table(client: TestClient) -> None:
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
