"""The `release` command: exit codes, --json output, and errors that say what to do next."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from tests.artifacts import manifest_for, torchscript_bytes, write_artifact


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """RELEASE_HOME in a temporary folder, with its bucket; JSON logs so stdout stays clean."""
    monkeypatch.setenv("RELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RELEASE_LOG_FORMAT", "json")
    monkeypatch.setenv("RELEASE_LOG_LEVEL", "WARNING")
    return tmp_path / "home"


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def test_run_until_idle_reports_rejected_artifacts_and_exits_zero(home: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A bucket holding only a bad artifact is processed: exit 0, the rejection in the JSON summary."""
    files = {"model.pt": torchscript_bytes()}
    write_artifact(home / "bucket", "digits", "1", {"model.pt": b"tampered"}, manifest_for("digits", "1", files))
    assert main(["run", "--until-idle", "--json"]) == 0
    summary = _json(capsys)
    assert [(a["status"], a["reason"]) for a in summary["artifacts"]] == [("rejected", "size_mismatch")]
    assert summary["versions"] == []
    assert main(["events", "--json"]) == 0
    assert [e["type"] for e in _json(capsys)] == ["dev.modelrelease.artifact.rejected.v1"]


def test_refused_operations_exit_3_with_a_next_step(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Asking for what does not exist exits 3 and prints the reason and what to do next."""
    assert main(["show", "nope", "1"]) == 3
    err = capsys.readouterr().err
    assert "[model_not_found]" in err and "next: List what exists" in err
    assert main(["rollback", "nope", "--json"]) == 3
    assert json.loads(capsys.readouterr().err)["error"]["reason"] == "model_not_found"


def test_run_without_until_idle_is_a_usage_error(home: Path) -> None:
    """`release run` alone says to add --until-idle or use `release up`, exit 2."""
    assert main(["run"]) == 2


def test_listing_commands_print_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """models / dead-letters answer JSON on an empty store."""
    for command in (["models", "--json"], ["dead-letters", "--json"]):
        assert main(command) == 0
        assert _json(capsys) == []


def test_show_json_prints_the_stored_gate_report_in_its_golden_shape(home: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`release show --json` prints a stored gate report key for key as the golden report."""
    from release import registry
    from release.db import make_engine, migrate, session_scope
    from release.settings import Settings
    from schemas.reports import GateReport

    golden = json.loads((Path(__file__).parents[1] / "data" / "reports" / "gate_report.json").read_text())
    home.mkdir(parents=True)
    engine = make_engine(Settings().database_url)
    migrate(engine)
    with session_scope(engine) as s:
        outcome = registry.register_version(s, model="digits", version="2", digest="sha256:bb",
                                            artifact_uri="file:///b/models/digits/2/", format="torchscript",
                                            manifest={"name": "digits"})
        registry.add_gate_report(s, version_id=outcome.version.id, report=GateReport.model_validate(golden))
    engine.dispose()
    assert main(["show", "digits", "2", "--json"]) == 0
    shown = _json(capsys)
    assert isinstance(shown, dict) and shown["gate_report"] == golden
