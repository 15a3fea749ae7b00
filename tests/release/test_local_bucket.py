"""The local bucket folder: storage events shaped like Cloud Storage's, only for fully written files."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import google_crc32c
import pytest

from release.adapters.local_bucket import LocalBucketWatcher, LocalFolderStore
from schemas.errors import ArtifactRejected, Reason, TemporaryError
from schemas.storage import FINALIZED


@pytest.fixture
def store(tmp_path: Path) -> LocalFolderStore:
    """An empty bucket folder."""
    return LocalFolderStore(root=tmp_path / "bucket")


def test_a_file_is_announced_only_once_it_stops_changing(store: LocalFolderStore) -> None:
    """A growing file produces no event until its size and mtime hold for the settle interval."""
    watcher = LocalBucketWatcher(store=store, settle_s=0.5)
    path = store.root / "models/m/1/model.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half")
    assert watcher.scan(now=0.0) == []
    path.write_bytes(b"half and the rest")
    assert watcher.scan(now=0.6) == []  # changed since the last scan: the clock starts again
    assert watcher.scan(now=0.8) == []
    (event,) = watcher.scan(now=1.2)
    assert event[1].name == "models/m/1/model.pt" and event[1].size_bytes == 17
    assert watcher.scan(now=5.0) == []  # announced once


def test_temporary_names_wait_for_their_rename(store: LocalFolderStore) -> None:
    """Dot-files and *.tmp / *.partial are ignored; the renamed file is announced."""
    watcher = LocalBucketWatcher(store=store, settle_s=0)
    (store.root / "models").mkdir(parents=True)
    for name in (".manifest.json.swp", "upload.tmp", "model.pt.partial"):
        (store.root / "models" / name).write_bytes(b"x")
    assert watcher.scan() == []
    (store.root / "models/upload.tmp").rename(store.root / "models/model.pt")
    assert [e[1].name for e in watcher.scan()] == ["models/model.pt"]


def test_event_matches_cloud_storage_shape(store: LocalFolderStore) -> None:
    """Attributes and data are those of google.cloud.storage.object.v1.finalized, with real md5 and crc32c."""
    data = b"weights" * 100
    (store.root / "models").mkdir(parents=True)
    (store.root / "models/model.pt").write_bytes(data)
    ((attrs, obj),) = LocalBucketWatcher(store=store, settle_s=0).scan()
    assert attrs["type"] == FINALIZED and attrs["subject"] == "objects/models/model.pt"
    assert attrs["source"] == f"//storage.googleapis.com/projects/_/buckets/{store.bucket}"
    wire = obj.to_wire()
    assert wire["md5Hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324
    assert wire["crc32c"] == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    assert wire["size"] == str(len(data)) and wire["generation"].isdigit() and wire["kind"] == "storage#object"


def test_reads_refuse_links_and_overwrites(store: LocalFolderStore, tmp_path: Path) -> None:
    """A symlink is never followed, and a read pinned to a generation fails once the object was overwritten."""
    (tmp_path / "secret").write_text("outside the bucket")
    (store.root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactRejected) as err:
        store.open("link")
    assert err.value.reason is Reason.UNSAFE_SYMLINK
    info = store.write("a.json", b"{}")
    store.write("a.json", b"{\"changed\": true}")
    with pytest.raises(TemporaryError) as changed:
        store.open("a.json", generation=info.generation)
    assert changed.value.reason is Reason.OBJECT_CHANGED
