"""A local folder as the bucket: the embedded default's Cloud Storage.

Object names are paths relative to the folder with ``/`` separators. The generation of an object combines its
inode and ``st_mtime_ns``, so an overwrite is seen as a new generation as in Cloud Storage: a replacement by
rename changes the inode even when both writes fall in the same coarse kernel timestamp tick. Symlinks are never
followed: reading one is refused as unsafe, since an artifact could point outside the bucket.

``LocalBucketWatcher`` polls the folder and emits Cloud Storage ``object.finalized`` CloudEvents for files that
are fully written: a file must keep the same size and mtime across two scans a settle interval apart, and
temporary names (dot-files, ``*.tmp``, ``*.partial``, ``*~``) are ignored until renamed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat as stat_mode
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from release.ports import ObjectInfo
from schemas.errors import ArtifactRejected, NotFound, Reason, TemporaryError
from schemas.storage import FINALIZED, StorageObjectData, storage_event_attributes

_CHUNK = 1 << 20
_TEMP_SUFFIXES = (".tmp", ".partial", "~", ".swp")


def _is_temporary(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") or base.endswith(_TEMP_SUFFIXES)


def file_hashes(path: Path) -> tuple[str, str, str]:
    """(md5 base64, crc32c base64, sha256 hex) of a file, in one streamed pass."""
    md5 = hashlib.md5()  # noqa: S324  (Cloud Storage's md5Hash field, not a security check)
    sha = hashlib.sha256()
    # google_crc32c ships no annotations, hence the ignores on its calls.
    crc = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            crc.update(chunk)  # type: ignore[no-untyped-call]
    crc_digest: bytes = crc.digest()  # type: ignore[no-untyped-call]
    return base64.b64encode(md5.digest()).decode(), base64.b64encode(crc_digest).decode(), sha.hexdigest()


def generation_of(st: os.stat_result) -> int:
    """The object generation of a file: its inode in the high bits, its mtime in nanoseconds below."""
    return (st.st_ino << 64) | st.st_mtime_ns


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat().replace("+00:00", "Z")


class LocalFolderStore:
    """``ArtifactStore`` over a local folder."""

    def __init__(self, *, root: Path) -> None:
        self._root = root.resolve()
        self._root.mkdir(parents=True, exist_ok=True)

    @property
    def bucket(self) -> str:
        """The folder's name stands in for the bucket name in events."""
        return self._root.name or "bucket"

    @property
    def uri(self) -> str:
        """``file://`` URI of the folder."""
        return self._root.as_uri()

    @property
    def root(self) -> Path:
        """The folder itself."""
        return self._root

    def _path(self, name: str) -> Path:
        """The file of object ``name``, checked on resolved paths: every folder between the bucket and the object
        must be a real folder inside the bucket. A symlinked folder would carry reads, and writes such as
        REJECTED.json, outside it. The object itself being a link is refused where it is opened."""
        path = self._root / name
        folder = self._root
        for part in Path(name).parent.parts:
            folder = folder / part
            if folder.is_symlink():
                raise ArtifactRejected(f"{folder.relative_to(self._root)} is a symbolic link; artifacts must contain "
                                       "plain files and folders", reason=Reason.UNSAFE_SYMLINK, file=name)
        if not path.parent.resolve(strict=False).is_relative_to(self._root):
            raise ArtifactRejected(f"object name {name!r} escapes the bucket", reason=Reason.UNSAFE_PATH,
                                   file=name)
        return path

    def _info(self, name: str, st: os.stat_result, *, hashes: bool = False) -> ObjectInfo:
        md5 = crc = None
        if hashes:
            md5, crc, _ = file_hashes(self._root / name)
        return ObjectInfo(name=name, size=st.st_size, generation=generation_of(st), md5_hash=md5, crc32c=crc,
                          updated=_iso(st.st_mtime_ns))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Regular files and symlinks under ``prefix``, name order, without following links."""
        names: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(self._root, followlinks=False):
            rel_dir = os.path.relpath(dirpath, self._root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            if prefix and not (rel_dir.startswith(prefix) or prefix.startswith(rel_dir)):
                dirnames[:] = []
                continue
            # Symlinked directories are listed as objects so that intake sees (and refuses) them.
            entries = filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
            for filename in entries:
                name = rel_dir + filename
                if name.startswith(prefix):
                    names.append((name, os.lstat(Path(dirpath) / filename)))
        for name, st in sorted(names):
            yield self._info(name, st)

    def stat(self, name: str) -> ObjectInfo | None:
        """Metadata with checksums, or None."""
        path = self._path(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat_mode.S_ISLNK(st.st_mode):
            raise ArtifactRejected(f"{name} is a symbolic link; artifacts must contain plain files",
                                   reason=Reason.UNSAFE_SYMLINK, file=name)
        if not stat_mode.S_ISREG(st.st_mode):
            return None
        return self._info(name, st, hashes=True)

    def open(self, name: str, *, generation: int | None = None) -> BinaryIO:
        """Open for reading, refusing symlinks and changed generations."""
        path = self._path(name)
        try:
            # O_NOFOLLOW: a file swapped for a link after stat still cannot be followed.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFound(f"object {name} does not exist in {self.uri}") from None
        except OSError as exc:
            if path.is_symlink():
                raise ArtifactRejected(f"{name} is a symbolic link; artifacts must contain plain files",
                                       reason=Reason.UNSAFE_SYMLINK, file=name) from exc
            raise TemporaryError(f"cannot read {name}: {exc}") from exc
        handle = os.fdopen(fd, "rb")
        if generation is not None and generation_of(os.fstat(fd)) != generation:
            handle.close()
            raise TemporaryError(f"{name} was overwritten while it was being read", reason=Reason.OBJECT_CHANGED,
                                 delay=1.0)
        return handle

    def write(self, name: str, data: bytes, *, content_type: str = "application/json") -> ObjectInfo:
        """Atomically create or replace an object (temp file + rename, so watchers never see half of it)."""
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).replace(path)
        info = self.stat(name)
        assert info is not None
        return info

    def download(self, name: str, dest: Path, *, generation: int | None = None) -> ObjectInfo:
        """Copy one object to ``dest``; the generation is checked before and after the copy."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.open(name, generation=generation) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
            st = os.fstat(src.fileno())
        if generation is not None and generation_of(os.lstat(self._path(name))) != generation:
            raise TemporaryError(f"{name} was overwritten while it was being read", reason=Reason.OBJECT_CHANGED,
                                 delay=1.0)
        return self._info(name, st)


class LocalBucketWatcher:
    """Polls a ``LocalFolderStore`` and yields storage CloudEvents for fully written files."""

    def __init__(self, *, store: LocalFolderStore, settle_s: float = 0.2) -> None:
        self._store = store
        self._settle_s = settle_s
        self._candidates: dict[str, tuple[int, int, float]] = {}
        self._announced: dict[str, tuple[int, int]] = {}

    def scan(self, *, now: float | None = None) -> list[tuple[dict[str, str], StorageObjectData]]:
        """One pass: events for files that appeared or changed and have settled since the last pass."""
        now = time.monotonic() if now is None else now
        events = []
        seen = set()
        for info in self._store.list(""):
            if _is_temporary(info.name):
                continue
            seen.add(info.name)
            key = (info.size, info.generation)
            if self._announced.get(info.name) == key:
                continue
            first = self._candidates.get(info.name)
            if first is None or first[:2] != key:
                self._candidates[info.name] = (*key, now)
                if self._settle_s > 0:
                    continue
            elif now - first[2] < self._settle_s:
                continue
            self._candidates.pop(info.name, None)
            self._announced[info.name] = key
            events.append(self.event_for(info))
        for gone in set(self._announced) - seen:
            del self._announced[gone]
        return events

    def event_for(self, info: ObjectInfo) -> tuple[dict[str, str], StorageObjectData]:
        """The CloudEvent attributes and data Cloud Storage would send for this object."""
        md5 = crc = None
        try:
            full = self._store.stat(info.name)
            if full is not None:
                md5, crc = full.md5_hash, full.crc32c
        except ArtifactRejected:
            pass  # a symlink: announce it anyway so intake rejects the artifact with a report
        data = StorageObjectData(
            bucket=self._store.bucket, name=info.name, generation=str(info.generation), size=str(info.size),
            md5Hash=md5, crc32c=crc, timeCreated=info.updated, updated=info.updated,
            id=f"{self._store.bucket}/{info.name}/{info.generation}",
            contentType="application/json" if info.name.endswith(".json") else "application/octet-stream")
        attributes = storage_event_attributes(data, event_id=f"{info.name}#{info.generation}",
                                              time=info.updated or "", event_type=FINALIZED)
        return attributes, data
