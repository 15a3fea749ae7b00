"""The read API under /api/v1 answers from the same rows the CLI reads, and refuses as the error table says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.cli import main as release_main
from release.bootstrap import App
from tests.console.conftest import TOKEN, seeded_app, web_of
from tests.console.seed import HOSTILE


def test_models_lists_prod_stg_state_counts_and_open_alerts(client: TestClient) -> None:
    """GET /api/v1/models gives each model's PROD, state counts and the open drift alert."""
    body = client.get("/api/v1/models").json()
    (digits,) = body["models"]
    assert digits["prod"] == "2" and digits["stg"] is None
    assert digits["states"] == {"LIVE": 2, "REJECTED": 1}
    assert [(a["model"], a["version"], a["severity"]) for a in body["alerts"]] == [("digits", "2", "critical")]


def test_model_detail_has_aliases_and_counts(client: TestClient) -> None:
    """GET /api/v1/models/digits names PROD's version and counts versions by state."""
    body = client.get("/api/v1/models/digits").json()
    assert [(a["name"], a["version"]) for a in body["aliases"]] == [("PROD", "2")]
    assert body["versions"] == 3 and body["latest"] == "3" and body["canary"] is None


def test_versions_filter_by_state_and_page(client: TestClient) -> None:
    """Versions come newest first, filter by state and page with limit/offset and a total."""
    page = client.get("/api/v1/models/digits/versions", params={"limit": 1, "offset": 1}).json()
    assert [v["version"] for v in page["items"]] == ["2"] and page["total"] == 3
    live = client.get("/api/v1/models/digits/versions", params={"state": "LIVE"}).json()
    assert [v["version"] for v in live["items"]] == ["2", "1"] and live["total"] == 2


def test_version_detail_puts_the_gate_report_beside_prod(client: TestClient) -> None:
    """A rejected version's detail compares each gate with the PROD it was measured against."""
    body = client.get("/api/v1/models/digits/versions/3").json()
    assert body["state"] == "REJECTED" and body["reason"] == "regression:accuracy failed"
    regression = next(r for r in body["comparison"] if r["gate"] == "regression:accuracy")
    assert regression["prod"] == 0.95 and regression["prod_version"] == "2" and not regression["passed"]
    assert regression["delta"] == pytest.approx(0.1 - 0.95)
    assert body["description"] == HOSTILE  # the API returns data as it is; pages escape it
    assert next(h["action"] for h in body["history"]) == "version.registered"


def test_alias_resolves_like_the_cli(client: TestClient, seeded: App, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """GET .../versions/PROD answers the version `release show digits PROD` shows."""
    api = client.get("/api/v1/models/digits/versions/PROD").json()
    monkeypatch.setenv("RELEASE_HOME", str(seeded.settings.home))
    capsys.readouterr()
    assert release_main(["show", "digits", "PROD", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert api["version"] == cli["version"]["version"] == "2"
    assert api["gate_report"] == cli["gate_report"]


def test_aliases_come_with_their_audited_moves(client: TestClient) -> None:
    """Each PROD move is listed with where it came from and who moved it."""
    body = client.get("/api/v1/models/digits/aliases").json()
    assert [(m["from_version"], m["to_version"], m["actor"]) for m in body["moves"]] == [
        (None, "1", "controller"), ("1", "2", "controller")]


def test_drift_gives_series_histograms_classes_and_alerts(client: TestClient) -> None:
    """The drift route carries PSI per feature over windows, overlays, the class mix and the open alert."""
    body = client.get("/api/v1/models/digits/drift").json()
    assert len(body["psi_series"]["windows"]) == 3
    assert body["top_features"][0]["name"] == "c"
    assert body["psi_series"]["features"]["c"][-1] == pytest.approx(0.45)
    hist = body["histograms"][0]
    assert len(hist["reference"]) == len(hist["live"]) == len(hist["edges"]) + 1
    assert body["classes"]["names"][:2] == ["0", "1"] and len(body["classes"]["live"]) == 10
    assert body["alerts"][0]["reasons"] == ["psi c=0.55 >= 0.25"]
    assert body["thresholds"]["psi_critical"] == 0.25


def test_events_page_forward_and_back(client: TestClient) -> None:
    """Events page forward from a sequence number and back from the newest; prediction batches are left out."""
    newest = client.get("/api/v1/events", params={"limit": 2}).json()
    assert [e["type"] for e in newest["events"]][-1] == "drift.alert"
    first = client.get("/api/v1/events", params={"after": 0, "limit": 1}).json()["events"]
    assert first[0]["type"] == "model.registered" and first[0]["seq"] >= 1


def test_event_stream_sends_journal_events_from_a_sequence_number(client: TestClient) -> None:
    """The SSE stream replays events after `after` as id/event/data frames, then ends at its time limit."""
    with client.stream("GET", "/api/v1/events/stream", params={"after": 0, "max_s": 1}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    frames = [f for f in text.split("\n\n") if f.startswith("id:")]
    assert frames and "event: model.registered" in frames[0]
    assert any("event: drift.alert" in f for f in frames)


def test_alerts_and_dead_letters(client: TestClient) -> None:
    """Open alerts and alert events are listed; dead letters answer an empty list on a healthy bus."""
    alerts = client.get("/api/v1/alerts").json()
    assert alerts["open"][0]["alert_id"] == "digits-2-a1" and alerts["events"][0]["kind"] == "fired"
    assert client.get("/api/v1/dead-letters").json() == {"dead_letters": []}


def test_refusals_use_the_error_table(client: TestClient) -> None:
    """An unknown model is 404 model_not_found with a hint; a bad page size is 400."""
    missing = client.get("/api/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["reason"] == "model_not_found"
    bad = client.get("/api/v1/models/digits/versions", params={"limit": 0})
    assert bad.status_code == 400 and "between" in bad.json()["message"]


def test_writes_need_a_token(client: TestClient) -> None:
    """Promote, retry and rollback without a credential are 401 and change nothing."""
    for path in ("/api/v1/models/digits/versions/1/promote", "/api/v1/models/digits/versions/3/retry",
                 "/api/v1/models/digits/rollback"):
        response = client.post(path, json={"reason": "test"})
        assert response.status_code == 401 and response.json()["reason"] == "unauthorized"
    assert client.get("/api/v1/models/digits").json()["aliases"][0]["version"] == "2"


def test_reads_can_require_the_write_credential(tmp_path: Path) -> None:
    """With RELEASE_READS_NEED_TOKEN reads are 401 without a credential, open with the header or the cookie."""
    application = seeded_app(tmp_path / "home", reads_need_token=True)
    try:
        with TestClient(web_of(application)) as locked:
            assert locked.get("/api/v1/models").status_code == 401
            assert locked.get("/api/v1/models/digits/policy").status_code == 401
            assert locked.get("/ui/").status_code == 401
            assert locked.get("/api/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            locked.cookies.set("release_token", TOKEN)
            assert locked.get("/ui/models/digits").status_code == 200
    finally:
        application.close()
