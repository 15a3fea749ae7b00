"""Intake: complete artifacts register exactly once whatever the events do; bad ones are reported, never registered."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch
from sqlalchemy.engine import Engine
from sqlmodel import select

from release import journal, policies, registry
from release.adapters.local_bucket import LocalBucketWatcher, LocalFolderStore
from release.db import session_scope
from release.intake import Intake
from schemas.events import EventType
from schemas.policy import ReleasePolicy, RolloutPolicy
from schemas.tables import ModelVersion
from tests.artifacts import manifest_for, npz_bytes, torchscript_bytes, write_artifact


def _events(engine: Engine, event_type: EventType) -> list[dict]:
    with session_scope(engine) as s:
        return [r.envelope["data"] for r in journal.recent(s, limit=10_000) if r.type == str(event_type)]


def _report(bucket: Path, name: str, version: str) -> dict:
    return json.loads((bucket / "models" / name / version / "REJECTED.json").read_text())


def _files(seed: int) -> dict[str, bytes]:
    torch.manual_seed(seed)
    return {"model.pt": torchscript_bytes(), "eval.npz": npz_bytes(x=torch.rand(8, 64).numpy())}


def test_duplicated_and_reordered_events_register_each_artifact_once(bucket: Path, engine: Engine,
                                                                     intake: Intake) -> None:
    """Files arrive in random order, each event delivered 1-3 times at random later points: one registration each."""
    rng = random.Random(7)
    store = LocalFolderStore(root=bucket)
    watcher = LocalBucketWatcher(store=store, settle_s=0)
    uploads: list[tuple[Path, bytes]] = []
    for n in range(4):
        files = _files(n)
        manifest = manifest_for("digits", str(n), files)
        root = bucket / "models" / "digits" / str(n)
        uploads += [(root / p, b) for p, b in files.items()]
        uploads.append((root / "manifest.json", json.dumps(manifest).encode()))
    rng.shuffle(uploads)
    pending: list = []
    for path, data in uploads:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        for _attrs, obj in watcher.scan():
            pending += [obj] * rng.randint(1, 3)
        rng.shuffle(pending)
        for _ in range(rng.randint(0, len(pending))):
            intake.handle_object(pending.pop())
    for obj in pending:
        intake.handle_object(obj)
    with session_scope(engine) as s:
        assert sorted(v.version for v in registry.list_versions(s, "digits")) == ["0", "1", "2", "3"]
    registered = _events(engine, EventType.MODEL_REGISTERED)
    assert sorted(e["version"] for e in registered) == ["0", "1", "2", "3"]


def test_incomplete_artifact_waits_then_registers_when_the_last_file_lands(bucket: Path, engine: Engine,
                                                                            intake: Intake) -> None:
    """A manifest whose files are not all there yet is pending, and registers when the last one arrives."""
    files = _files(1)
    manifest = write_artifact(bucket, "digits", "1", {"model.pt": files["model.pt"]},
                              manifest_for("digits", "1", files))
    assert intake.reconcile()[0].status == "pending"
    assert intake.reconcile()[0].missing == ["eval.npz"]
    (bucket / "models/digits/1/eval.npz").write_bytes(files["eval.npz"])
    (result,) = intake.reconcile()
    assert result.status == "registered" and result.created
    with session_scope(engine) as s:
        assert registry.get_version(s, "digits", "1").manifest["files"] == manifest["files"]


def test_same_upload_again_is_a_noop(bucket: Path, engine: Engine, intake: Intake) -> None:
    """Re-running intake over a registered artifact changes nothing and publishes nothing."""
    write_artifact(bucket, "digits", "1", _files(1))
    assert intake.reconcile()[0].created
    assert not intake.reconcile()[0].created
    assert len(_events(engine, EventType.MODEL_REGISTERED)) == 1


def _malicious_state_dict() -> bytes:
    class Exploit:
        def __reduce__(self):  # what a hostile checkpoint does: run code at load time
            return (os.system, ("echo pwned",))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"weight": Exploit()}))
        zf.writestr("archive/version", "3\n")
    return buffer.getvalue()


def _state_dict_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(64, 10).state_dict(), buffer)
    return buffer.getvalue()


def _zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


_MAR_MANIFEST = json.dumps({"model": {"modelName": "m", "handler": "handler.py", "serializedFile": "model.pt"}})


def _bad_dir(kind: str, bucket: Path, engine: Engine) -> None:
    files = _files(0)
    if kind == "manifest_invalid_json":
        write_artifact(bucket, "bad", "1", files, with_manifest=False)
        (bucket / "models/bad/1/manifest.json").write_text("{not json")
    elif kind == "manifest_invalid":
        write_artifact(bucket, "bad", "1", files, manifest_for("bad", "1", files, format="onnx"))
    elif kind == "manifest_path_mismatch":
        write_artifact(bucket, "bad", "1", files, manifest_for("other", "1", files))
    elif kind == "unsafe_path":
        manifest = manifest_for("bad", "1", files)
        manifest["files"]["../../escape.pt"] = manifest["files"].pop("model.pt")
        write_artifact(bucket, "bad", "1", files, manifest)
    elif kind == "checksum_mismatch":
        manifest = manifest_for("bad", "1", files)
        write_artifact(bucket, "bad", "1", {**files, "model.pt": files["model.pt"][:-4] + b"XXXX"}, manifest)
    elif kind == "size_mismatch":
        manifest = manifest_for("bad", "1", files)
        write_artifact(bucket, "bad", "1", {**files, "model.pt": files["model.pt"] + b"extra"}, manifest)
    elif kind == "unsafe_symlink":
        write_artifact(bucket, "bad", "1", files)
        (bucket / "models/bad/1/eval.npz").unlink()
        (bucket / "models/bad/1/eval.npz").symlink_to("/etc/passwd")
    elif kind == "unsafe_pickle":
        evil = {"weights.pt": _malicious_state_dict()}
        write_artifact(bucket, "bad", "1", evil, manifest_for("bad", "1", evil, format="state_dict",
                                                              architecture="mlp"))
    elif kind == "manifest_too_large":
        write_artifact(bucket, "bad", "1", files, manifest_for("bad", "1", files, description="x" * 3000,
                                                               extra={"pad": "y" * (1 << 20)}))
    elif kind == "unknown_handler":
        write_artifact(bucket, "bad", "1", files, manifest_for("bad", "1", files, handler="mystery"))
    elif kind == "file_missing":
        write_artifact(bucket, "bad", "1", {"model.pt": files["model.pt"]}, manifest_for("bad", "1", files))
    elif kind == "manifest_missing":
        write_artifact(bucket, "bad", "1", files, with_manifest=False)
    elif kind == "handler_code_forbidden":
        code = {**files, "handler.py": b"def handle(data, context):\n    return data\n"}
        write_artifact(bucket, "bad", "1", code, manifest_for("bad", "1", code, handler="handler.py"))
        with session_scope(engine) as s:
            policies.set_policy(s, model="bad", policy=ReleasePolicy(rollout=RolloutPolicy(allow_model_code=False)),
                                actor="operator", reason="no code")
    else:
        raise AssertionError(kind)


DIR_KINDS = ["manifest_invalid_json", "manifest_invalid", "manifest_path_mismatch", "unsafe_path",
             "checksum_mismatch", "size_mismatch", "unsafe_symlink", "unsafe_pickle", "manifest_too_large",
             "unknown_handler", "file_missing", "manifest_missing", "handler_code_forbidden"]
EXPECTED_REASON = {"unsafe_path": "manifest_invalid",  # the manifest schema refuses escaping paths outright
                   "handler_code_forbidden": "model_code_forbidden"}  # handler files are one kind of model code


@pytest.mark.parametrize("kind", DIR_KINDS)
def test_bad_model_directory_gets_a_report_and_is_never_registered(kind: str, bucket: Path, engine: Engine,
                                                                    intake: Intake) -> None:
    """Each kind of bad model directory gets REJECTED.json with its stable reason code and no registration."""
    _bad_dir(kind, bucket, engine)
    results = intake.reconcile(final=True)
    assert [r.status for r in results] == ["rejected"]
    report = _report(bucket, "bad", "1")
    assert report["reason"] == EXPECTED_REASON.get(kind, kind)
    assert report["message"] and report["hint"]
    with session_scope(engine) as s:
        assert s.exec(select(ModelVersion)).all() == []
    (event,) = _events(engine, EventType.ARTIFACT_REJECTED)
    assert event["reason"] == report["reason"] and event["path"] == "models/bad/1/"


def test_duplicate_events_for_a_bad_artifact_report_it_once(bucket: Path, engine: Engine, intake: Intake) -> None:
    """A rejected artifact seen again publishes no second rejection event."""
    _bad_dir("checksum_mismatch", bucket, engine)
    for _ in range(3):
        intake.reconcile(final=True)
    assert len(_events(engine, EventType.ARTIFACT_REJECTED)) == 1


MAR_KINDS = {
    "unsafe_path": lambda: _zip({"MAR-INF/MANIFEST.json": _MAR_MANIFEST.encode(), "../../evil.py": b"x"}),
    "unsafe_symlink": lambda: _zip({"MAR-INF/MANIFEST.json": _MAR_MANIFEST.encode()}, symlink="model.pt"),
    "archive_too_large": lambda: _zip({"MAR-INF/MANIFEST.json": _MAR_MANIFEST.encode(),
                                       "model.pt": b"\0" * (64 << 20)}),
    "archive_invalid": lambda: b"this is not a zip file",
}


@pytest.mark.parametrize("kind", sorted(MAR_KINDS))
def test_unsafe_mar_archive_is_rejected_without_running_it(kind: str, bucket: Path, engine: Engine,
                                                           intake: Intake) -> None:
    """Zip-slip, links, zip bombs and non-archives are refused from the archive's bytes alone."""
    (bucket / "models/bad").mkdir(parents=True)
    (bucket / "models/bad/1.mar").write_bytes(MAR_KINDS[kind]())
    (result,) = intake.reconcile(final=True)
    assert result.status == "rejected" and result.reason == kind
    report = json.loads((bucket / "models/bad/1.mar.REJECTED.json").read_text())
    assert report["reason"] == kind


def test_valid_state_dict_passes_the_pickle_scan(bucket: Path, engine: Engine, intake: Intake) -> None:
    """A plain torch.save of a state_dict is accepted by the weights-only scan."""
    files = {"weights.pt": _state_dict_bytes()}
    write_artifact(bucket, "plain", "1", files, manifest_for("plain", "1", files, format="state_dict",
                                                             architecture="mlp"))
    assert intake.reconcile()[0].status == "registered"


def test_changed_content_under_a_registered_version_is_quarantined(bucket: Path, engine: Engine,
                                                                   intake: Intake) -> None:
    """Uploading other bytes under an existing version is a conflict: reported, registry unchanged."""
    write_artifact(bucket, "digits", "1", _files(1))
    intake.reconcile()
    write_artifact(bucket, "digits", "1", _files(2))
    (result,) = intake.reconcile()
    assert result.status == "rejected" and result.reason == "version_conflict"
    assert _report(bucket, "digits", "1")["details"]["registered_digest"].startswith("sha256:")
    with session_scope(engine) as s:
        assert registry.get_version(s, "digits", "1").state == "REGISTERED"
