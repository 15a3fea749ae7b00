"""The ArtifactStore contract, one body for the in-memory fake, a local folder and Cloud Storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from release.ports import ArtifactStore
from schemas.errors import NotFound, Reason, TemporaryError


def test_written_objects_are_listed_in_name_order_under_their_prefix(store_under_test: ArtifactStore):
    """list yields every object under a prefix, in name order, with its size."""
    for name in ("models/a/2/model.pt", "models/a/1/manifest.json", "models/b/1/manifest.json"):
        store_under_test.write(name, name.encode())
    listed = list(store_under_test.list("models/a/"))
    assert [o.name for o in listed] == ["models/a/1/manifest.json", "models/a/2/model.pt"]
    assert [o.size for o in listed] == [len(o.name) for o in listed]


def test_stat_and_open_read_back_what_was_written(store_under_test: ArtifactStore):
    """stat describes an object (None when absent); open streams its bytes; a missing one is NotFound."""
    info = store_under_test.write("models/a/1/manifest.json", b'{"name": "a"}')
    assert store_under_test.stat("models/a/1/manifest.json") == info
    assert store_under_test.stat("models/a/1/missing") is None
    with store_under_test.open("models/a/1/manifest.json", generation=info.generation) as handle:
        assert handle.read() == b'{"name": "a"}'
    with pytest.raises(NotFound):
        store_under_test.open("models/a/1/missing").read()


def test_an_overwrite_changes_the_generation_and_stale_reads_are_refused(store_under_test: ArtifactStore,
                                                                         tmp_path: Path):
    """Reading or downloading at a replaced generation is a TemporaryError(OBJECT_CHANGED), never old bytes."""
    first = store_under_test.write("models/a/1/model.pt", b"one")
    second = store_under_test.write("models/a/1/model.pt", b"two!")
    assert second.generation != first.generation and second.size == 4
    with pytest.raises(TemporaryError) as refused:
        store_under_test.open("models/a/1/model.pt", generation=first.generation).read()
    assert refused.value.reason is Reason.OBJECT_CHANGED
    with pytest.raises(TemporaryError):
        store_under_test.download("models/a/1/model.pt", tmp_path / "stale.pt", generation=first.generation)


def test_download_writes_the_object_and_returns_its_metadata(store_under_test: ArtifactStore, tmp_path: Path):
    """download streams an object into a local file (folders made as needed) and describes it."""
    written = store_under_test.write("models/a/1/eval.npz", b"x" * 5000)
    dest = tmp_path / "cache" / "a" / "eval.npz"
    info = store_under_test.download("models/a/1/eval.npz", dest, generation=written.generation)
    assert dest.read_bytes() == b"x" * 5000
    assert (info.size, info.generation) == (5000, written.generation)
