"""The Cloud Storage ArtifactStore with the real google-cloud-storage client against fake-gcs-server."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import google_crc32c
import pytest
from google.cloud import storage

from release.adapters.gcs_store import ChecksumVerifier, GcsArtifactStore, parse_gs_uri
from schemas.errors import NotFound, PermanentError, Reason, TemporaryError
from tests.cloud.conftest import BUCKET
from tests.servers.gcs_server import GcsServer, free_port

BIG = bytes(range(256)) * 40  # 10 KiB: ten 1 KiB chunks with the store fixture


def _upload(client: storage.Client, name: str, data: bytes) -> storage.Blob:
    blob = client.bucket(BUCKET).blob(name)
    blob.upload_from_string(data)
    return blob


def test_list_and_stat_use_names_relative_to_the_prefix(store, gcs_client):
    """list yields objects under the prefix in name order, named relative to it; stat of a gap is None."""
    for name in ("release/models/b/1/model.pt", "release/models/a/1/manifest.json", "release/models/a/1/x.bin",
                 "release-other/models/a/1/manifest.json", "elsewhere/models/a"):
        _upload(gcs_client, name, b"{}")
    assert store.uri == f"gs://{BUCKET}/release"
    assert store.bucket == BUCKET
    listed = list(store.list("models/"))
    assert [o.name for o in listed] == ["models/a/1/manifest.json", "models/a/1/x.bin", "models/b/1/model.pt"]
    info = store.stat("models/a/1/x.bin")
    assert info is not None
    assert (info.name, info.size) == ("models/a/1/x.bin", 2)
    assert info.generation > 0 and info.crc32c and info.md5_hash
    assert store.stat("models/a/1/missing") is None


def test_download_streams_verifies_and_returns_metadata(store, gcs_client, tmp_path):
    """download writes the bytes in chunks, checks the bucket's checksum, and reports the generation read."""
    blob = _upload(gcs_client, "release/models/a/1/model.pt", BIG)
    dest = tmp_path / "cache" / "model.pt"
    info = store.download("models/a/1/model.pt", dest, generation=blob.generation)
    assert dest.read_bytes() == BIG
    assert info.generation == blob.generation
    assert info.size == len(BIG)
    assert [p.name for p in dest.parent.iterdir()] == ["model.pt"]  # no partial file left behind


def test_open_reads_the_whole_object_in_chunks(store, gcs_client):
    """open gives a readable stream of the object, whatever read sizes the caller uses."""
    _upload(gcs_client, "release/models/a/1/model.pt", BIG)
    with store.open("models/a/1/model.pt") as stream:
        head = stream.read(10)
        rest = stream.read()
    assert head + rest == BIG


def test_overwrite_during_a_read_is_reported_as_object_changed(store, gcs_client):
    """A generation overwritten mid-read fails the next chunk with TemporaryError(OBJECT_CHANGED)."""
    blob = _upload(gcs_client, "release/models/a/1/model.pt", BIG)
    stream = store.open("models/a/1/model.pt", generation=blob.generation)
    assert stream.read(1024) == BIG[:1024]
    _upload(gcs_client, "release/models/a/1/model.pt", b"new bytes" * 2000)
    with pytest.raises(TemporaryError) as caught:
        stream.read()
    assert caught.value.reason == Reason.OBJECT_CHANGED


def test_stale_generation_is_refused_before_reading(store, gcs_client, tmp_path):
    """Asking for a generation that is no longer current (or an object now gone) is OBJECT_CHANGED."""
    old = _upload(gcs_client, "release/models/a/1/model.pt", b"one")
    new = _upload(gcs_client, "release/models/a/1/model.pt", b"two")
    with pytest.raises(TemporaryError) as caught:
        store.open("models/a/1/model.pt", generation=old.generation)
    assert caught.value.reason == Reason.OBJECT_CHANGED
    assert caught.value.details["current_generation"] == new.generation
    gcs_client.bucket(BUCKET).blob("release/models/a/1/model.pt").delete()
    with pytest.raises(TemporaryError) as caught:
        store.download("models/a/1/model.pt", tmp_path / "x", generation=new.generation)
    assert caught.value.reason == Reason.OBJECT_CHANGED
    assert not (tmp_path / "x").exists()


def test_missing_object_without_generation_is_not_found(store, tmp_path):
    """open/download of an object that does not exist raise our NotFound(FILE_MISSING)."""
    with pytest.raises(NotFound) as caught:
        store.open("models/none")
    assert caught.value.reason == Reason.FILE_MISSING
    with pytest.raises(NotFound):
        store.download("models/none", tmp_path / "none")


def test_write_stores_a_report_beside_the_artifact(store, gcs_client):
    """write creates (and overwrites) an object with its content type, readable by any client."""
    report = json.dumps({"reason": "checksum_mismatch"}).encode()
    first = store.write("models/a/1/REJECTED.json", b"{}")
    info = store.write("models/a/1/REJECTED.json", report)
    assert info.name == "models/a/1/REJECTED.json"
    assert info.content_type == "application/json"
    assert info.generation != first.generation
    blob = gcs_client.bucket(BUCKET).get_blob("release/models/a/1/REJECTED.json")
    assert blob.download_as_bytes() == report
    assert info.crc32c == blob.crc32c


def test_bytes_damaged_behind_the_bucket_fail_the_checksum(store, gcs_client, gcs_server, tmp_path):
    """Bytes that no longer match the bucket's crc32c raise TemporaryError(CHECKSUM_MISMATCH), no file kept."""
    _upload(gcs_client, "release/models/a/1/model.pt", BIG)
    stored = gcs_server.root / BUCKET / "release" / "models" / "a" / "1" / "model.pt"
    damaged = bytearray(stored.read_bytes())
    damaged[5000] ^= 0xFF
    with stored.open("r+b") as f:  # same inode: the server's metadata (with the old crc32c) stays attached
        f.write(damaged)
    dest = tmp_path / "model.pt"
    with pytest.raises(TemporaryError) as caught:
        store.download("models/a/1/model.pt", dest)
    assert caught.value.reason == Reason.CHECKSUM_MISMATCH
    assert caught.value.details["algorithm"] == "crc32c"
    assert not dest.exists()
    assert os.listdir(tmp_path) == ["gcs", "gcs.log"]


def test_checksum_verifier_prefers_crc32c_and_falls_back_to_md5():
    """The verifier checks crc32c when given, md5 otherwise, and accepts anything when the bucket gave none."""
    data = b"artifact bytes"
    crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    for verifier in (ChecksumVerifier(crc32c=crc, md5_hash="wrong"), ChecksumVerifier(crc32c=None, md5_hash=md5),
                     ChecksumVerifier(crc32c=None, md5_hash=None)):
        verifier.update(data)
        verifier.verify("x")
    bad = ChecksumVerifier(crc32c=None, md5_hash=md5)
    bad.update(data + b"!")
    with pytest.raises(TemporaryError) as caught:
        bad.verify("x")
    assert caught.value.details["algorithm"] == "md5"


def test_unreachable_bucket_is_a_temporary_error():
    """A connection refused (after the client's retries) is TemporaryError(UNAVAILABLE), not a crash."""
    store = GcsArtifactStore(uri="gs://b", emulator_host=f"127.0.0.1:{free_port()}", retry_timeout_s=0.5)
    with pytest.raises(TemporaryError) as caught:
        store.stat("x")
    assert caught.value.reason == Reason.UNAVAILABLE


def test_gs_uri_parsing():
    """gs://bucket[/prefix] splits into bucket and a prefix without slashes; other schemes are refused."""
    assert parse_gs_uri("gs://b") == ("b", "")
    assert parse_gs_uri("gs://b/p/q/") == ("b", "p/q")
    for bad in ("s3://b", "gs://", "/data/bucket"):
        with pytest.raises(PermanentError):
            parse_gs_uri(bad)


def test_store_without_prefix_uses_full_names(gcs_server: GcsServer, gcs_client, tmp_path: Path):
    """With no prefix in the URI, names are the bucket's own object names."""
    store = GcsArtifactStore(uri=f"gs://{BUCKET}", emulator_host=gcs_server.url)
    store.write("policies/digits.json", b"{}")
    assert [o.name for o in store.list("")] == ["policies/digits.json"]
    assert store.uri == f"gs://{BUCKET}"
