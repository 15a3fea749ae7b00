"""A local bucket folder is a trust boundary: links cannot carry reads or writes outside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from release import journal
from release.adapters.local_bucket import LocalFolderStore
from release.adapters.local_bus import LocalEventBus
from release.db import session_factory, session_scope
from release.intake import Intake
from schemas.errors import ArtifactRejected, Reason
from schemas.events import EventType
from schemas.storage import StorageObjectData
from tests.artifacts import manifest_for, torchscript_bytes, write_artifact


def test_a_symlinked_version_folder_is_rejected_and_nothing_is_written_outside(tmp_path: Path, engine: Engine):
    """models/x/1 -> a folder outside: an event for a file in it is rejected unsafe_symlink, and no REJECTED.json
    (or anything else) lands outside the bucket."""
    outside = tmp_path / "outside"
    files = {"model.pt": torchscript_bytes()}
    write_artifact(outside, "x", "1", files, manifest_for("x", "1", files))
    bucket = tmp_path / "bucket"
    (bucket / "models" / "x").mkdir(parents=True)
    (bucket / "models" / "x" / "1").symlink_to(outside / "models" / "x" / "1", target_is_directory=True)
    before = sorted(p.name for p in (outside / "models" / "x" / "1").iterdir())

    intake = Intake(store=LocalFolderStore(root=bucket),
                    bus=LocalEventBus(session_factory=session_factory(engine)), engine=engine)
    assert intake.reconcile(final=True) == []  # listing never descends through the link
    result = intake.handle_object(StorageObjectData(bucket="bucket", name="models/x/1/manifest.json"))

    assert (result.status, result.reason) == ("rejected", "unsafe_symlink")
    assert sorted(p.name for p in (outside / "models" / "x" / "1").iterdir()) == before
    with session_scope(engine) as s:
        (event,) = [r.envelope["data"] for r in journal.recent(s) if r.type == str(EventType.ARTIFACT_REJECTED)]
    assert event["reason"] == "unsafe_symlink"


@pytest.mark.parametrize("name", ["../escape.json", "models/../../escape.json"])
def test_names_that_climb_out_are_refused(tmp_path: Path, name: str):
    """An object name that resolves outside the folder is unsafe_path, for reads and writes alike."""
    store = LocalFolderStore(root=tmp_path / "bucket")
    with pytest.raises(ArtifactRejected) as refused:
        store.write(name, b"{}")
    assert refused.value.reason is Reason.UNSAFE_PATH
    assert not (tmp_path / "escape.json").exists()


def test_a_sibling_folder_sharing_the_buckets_name_prefix_is_outside(tmp_path: Path):
    """Containment is by resolved path, not string prefix: bucket-evil is not inside bucket."""
    store = LocalFolderStore(root=tmp_path / "bucket")
    (tmp_path / "bucket-evil").mkdir()
    (tmp_path / "bucket" / "models").mkdir()
    (tmp_path / "bucket" / "models" / "link").symlink_to(tmp_path / "bucket-evil", target_is_directory=True)
    with pytest.raises(ArtifactRejected):
        store.write("models/link/REJECTED.json", json.dumps({}).encode())
    assert list((tmp_path / "bucket-evil").iterdir()) == []
