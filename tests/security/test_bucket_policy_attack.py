"""End to end on the embedded default: a policy file dropped in the uploads bucket decides nothing, while the
operator's `release policy set` does decide, and is audited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main as release_main
from release import registry
from release.bootstrap import App
from release.db import session_scope
from schemas.states import VersionState
from tests.e2e.test_embedded_flow import MODEL, drain, drop, embedded_app, held_out_accuracy, prod, trained, version

#: The attack as reported: gates that pass anything, dropped beside the model.
PERMISSIVE = {"gates": {"metrics": [{"metric": "accuracy", "min": 0.0}], "regression": [], "latency": None}}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The embedded default app under a fresh RELEASE_HOME, with the installation's default policy."""
    with embedded_app(tmp_path / "home", monkeypatch) as application:
        yield application


@pytest.mark.slow
def test_a_bucket_policy_cannot_wave_a_bad_model_through_but_the_operators_policy_decides(
        app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With a permissive policies/digits.json beside it, a model at chance accuracy is still REJECTED; once the
    operator sets that same policy with `release policy set`, a model like it goes LIVE, audited to the operator."""
    assert held_out_accuracy("regressed") < 0.3
    bucket = Path(app.settings.bucket_location)
    (bucket / "policies").mkdir(parents=True)
    (bucket / "policies" / f"{MODEL}.json").write_text(json.dumps(PERMISSIVE))
    drop(bucket, "1", trained("regressed"))
    drain(app)

    v1 = version(app, "1")
    assert v1.state is VersionState.REJECTED and "metric:accuracy" in (v1.state_reason or "")
    assert prod(app) is None

    policy_file = tmp_path / "permissive.json"
    policy_file.write_text(json.dumps(PERMISSIVE))
    assert release_main(["policy", "set", MODEL, str(policy_file), "--reason", "accept anything for the drill",
                         "--actor", "oncall-ana"]) == 0
    capsys.readouterr()
    drop(bucket, "2", trained("regressed"))
    drain(app)

    assert version(app, "2").state is VersionState.LIVE and prod(app) == "2"
    with session_scope(app.engine) as s:
        audited = [(e.actor, e.action, e.reason) for e in registry.audit_log(s, model=MODEL)]
    assert ("oncall-ana", "policy.set", "accept anything for the drill") in audited
