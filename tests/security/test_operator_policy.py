"""Policy belongs to the operator: a policy file dropped in the uploads bucket decides nothing unless the
installation opts in, while `release policy set` does decide, validated, versioned and audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.cli import main as release_main
from release import policies, registry
from release.adapters.local_bucket import LocalFolderStore
from release.adapters.local_bus import LocalEventBus
from release.db import session_factory, session_scope
from release.intake import Intake
from schemas.errors import BadRequest
from schemas.policy import ReleasePolicy
from tests.artifacts import manifest_for, torchscript_bytes, write_artifact

#: What an attacker dropped beside their model: gates that pass anything, handler code allowed, a webhook to them.
PERMISSIVE = {"gates": {"metrics": [{"metric": "accuracy", "min": 0.0}], "regression": [], "latency": None},
              "rollout": {"replicas": 64, "allow_handler_code": True},
              "drift": {"webhook_url": "http://attacker.example.net/collect"}}


def _drop(bucket: Path, version: str = "1", *, policy: object = PERMISSIVE) -> None:
    files = {"model.pt": torchscript_bytes()}
    write_artifact(bucket, "digits", version, files, manifest_for("digits", version, files))
    (bucket / "policies").mkdir(exist_ok=True)
    (bucket / "policies" / "digits.json").write_text(json.dumps(policy))


def _intake(bucket: Path, engine: Engine, **options: object) -> Intake:
    return Intake(store=LocalFolderStore(root=bucket), bus=LocalEventBus(session_factory=session_factory(engine)),
                  engine=engine, **options)  # type: ignore[arg-type]


def _registered_policy(engine: Engine, version: str = "1") -> ReleasePolicy:
    with session_scope(engine) as s:
        return ReleasePolicy.model_validate(registry.get_version(s, "digits", version).policy)


def test_a_policy_file_in_the_uploads_bucket_changes_nothing(tmp_path: Path, engine: Engine):
    """A permissive policies/digits.json beside the upload is ignored: the version carries the default policy."""
    bucket = tmp_path / "bucket"
    _drop(bucket)
    (result,) = _intake(bucket, engine).reconcile(final=True)
    assert result.status == "registered"
    assert _registered_policy(engine) == ReleasePolicy()


def test_bucket_policies_apply_only_when_the_installation_opts_in(tmp_path: Path, engine: Engine):
    """With RELEASE_BUCKET_POLICIES the bucket's file is read, and an invalid one holds the artifact back."""
    bucket = tmp_path / "bucket"
    _drop(bucket, policy={"gates": {"metrics": [{"metric": "accuracy", "min": 0.75}]}})
    _intake(bucket, engine, bucket_policies=True).reconcile(final=True)
    assert _registered_policy(engine).gates.metrics[0].min == 0.75
    _drop(bucket, "2", policy={"gates": {"metrics": [{"metric": "accuracy"}]}})
    results = _intake(bucket, engine, bucket_policies=True).reconcile(final=True)
    assert [r.reason for r in results if r.artifact.endswith("/2/")] == ["policy_invalid"]


def test_the_operators_policy_wins_over_any_bucket_file(tmp_path: Path, engine: Engine):
    """A policy set in the registry is what versions carry, even where bucket policies are enabled."""
    bucket = tmp_path / "bucket"
    _drop(bucket)
    strict = ReleasePolicy.model_validate({"gates": {"metrics": [{"metric": "accuracy", "min": 0.95}]}})
    with session_scope(engine) as s:
        policies.set_policy(s, model="digits", policy=strict, actor="ops", reason="strict")
    _intake(bucket, engine, bucket_policies=True).reconcile(final=True)
    assert _registered_policy(engine) == strict


def test_policy_changes_are_versioned_with_their_diff_and_audited(engine: Engine):
    """Each change is a new revision with actor, reason and diff; setting the same policy again records nothing."""
    first = ReleasePolicy.model_validate({"rollout": {"replicas": 2}})
    second = ReleasePolicy.model_validate({"rollout": {"replicas": 3}})
    with session_scope(engine) as s:
        assert policies.set_policy(s, model="digits", policy=first, actor="ana", reason="more").revision == 1
        assert policies.set_policy(s, model="digits", policy=first, actor="ana", reason="again").revision == 1
        view = policies.set_policy(s, model="digits", policy=second, actor="bo", reason="even more")
        assert (view.revision, view.diff) == (2, {"rollout.replicas": {"from": 2, "to": 3}})
        assert [r.revision for r in policies.history(s, "digits")] == [2, 1]
        audited = [(e.actor, e.action, e.details["revision"]) for e in registry.audit_log(s, model="digits")]
    assert audited == [("ana", "policy.set", 1), ("bo", "policy.set", 2)]


def test_a_webhook_outside_the_allow_list_is_refused():
    """Drift webhooks may only target the operator's allow-listed prefixes (none by default)."""
    document = {"drift": {"webhook_url": "http://10.0.0.1/internal"}}
    with pytest.raises(BadRequest, match="allow-list"):
        policies.parse_policy(document, webhook_prefixes=())
    with pytest.raises(BadRequest):
        policies.parse_policy(document, webhook_prefixes=("https://hooks.example.com/",))
    assert policies.parse_policy({"drift": {"webhook_url": "https://hooks.example.com/x"}},
                                 webhook_prefixes=("https://hooks.example.com/",)).drift.webhook_url


def test_release_policy_set_and_show_on_the_command_line(tmp_path: Path, monkeypatch, capsys):
    """`release policy set NAME FILE` stores a revision; `show --json` prints it with its history."""
    monkeypatch.setenv("RELEASE_HOME", str(tmp_path / "home"))
    policy_file = tmp_path / "digits.json"
    policy_file.write_text(json.dumps({"gates": {"metrics": [{"metric": "accuracy", "min": 0.9}]}}))
    assert release_main(["policy", "set", "digits", str(policy_file), "--reason", "stricter", "--actor", "ana",
                         "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["revision"] == 1
    assert release_main(["policy", "show", "digits", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"] == "operator" and shown["policy"]["gates"]["metrics"][0]["min"] == 0.9
    assert [(h["revision"], h["actor"], h["reason"]) for h in shown["history"]] == [(1, "ana", "stricter")]
    policy_file.write_text('{"gates": {"metrics": [{"metric": "accuracy"}]}}')
    assert release_main(["policy", "set", "digits", str(policy_file)]) == 3
    assert "policy_invalid" in capsys.readouterr().err
