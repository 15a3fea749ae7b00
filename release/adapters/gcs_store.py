"""The Cloud Storage ``ArtifactStore``: a ``gs://bucket[/prefix]`` seen through ``google-cloud-storage``.

Object names the core passes in and gets back are relative to the prefix. Reads are streamed in ranged
requests pinned to one object generation and checked against the checksum the bucket reports (crc32c when
present, else md5), so intake never hashes a half-overwritten or corrupted file. Vendor errors are translated
into ``schemas.errors`` here and nowhere else, always ``raise ... from``.

Two decisions worth knowing:

* A checksum mismatch between the bytes received and the bucket's own checksum of the same generation is a
  ``TemporaryError(CHECKSUM_MISMATCH)``: the bucket computed that checksum from the bytes it stored, so a
  mismatch means the bytes were damaged on the way to us, and reading again can succeed. (An artifact whose
  file does not match the sha256 in its *manifest* is a different thing: intake rejects it permanently.) If
  the damage persists, redelivery runs out of attempts and the event is dead-lettered, so nothing is lost.
* Every chunk of a read asks for the same ``generation``. In a bucket without object versioning (what the
  artifact bucket is), an overwrite or delete makes that generation vanish and the next chunk fails with 404,
  reported as ``TemporaryError(OBJECT_CHANGED)``: intake drops what it read and the event for the new
  generation drives the next attempt. With versioning on, the old generation stays readable and the read is
  simply consistent.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from release.adapters.vendor_errors import ErrorTable, raise_translated, translated
from release.ports import ObjectInfo
from schemas.errors import NotFound, PermanentError, Reason, ReleaseError, TemporaryError

_SCHEME = "gs://"

# Vendor error -> (our class, reason). The first match wins, so subclasses come before their bases.
# NotFound is absent on purpose: what a missing object means depends on the call (see the methods).
_ERRORS: ErrorTable = (
    (api_exceptions.TooManyRequests, TemporaryError, Reason.UNAVAILABLE),
    (api_exceptions.ServerError, TemporaryError, Reason.UNAVAILABLE),
    (api_exceptions.Unauthorized, PermanentError, Reason.UNAUTHORIZED),
    (api_exceptions.Forbidden, PermanentError, Reason.UNAUTHORIZED),
    # The client's retries of a transient failure ran out of time.
    (api_exceptions.RetryError, TemporaryError, Reason.UNAVAILABLE),
    (auth_exceptions.DefaultCredentialsError, PermanentError, Reason.UNAUTHORIZED),
    (auth_exceptions.TransportError, TemporaryError, Reason.UNAVAILABLE),
    # requests' connection and timeout errors are OSErrors; the library has retried them already.
    (OSError, TemporaryError, Reason.UNAVAILABLE),
    (http.client.HTTPException, TemporaryError, Reason.UNAVAILABLE),
    (api_exceptions.GoogleAPICallError, PermanentError, Reason.INTERNAL),
)


def _raise_translated(error: BaseException, action: str) -> NoReturn:
    raise_translated(error, table=_ERRORS, what=f"Cloud Storage {action}")


def _translated(action: str) -> AbstractContextManager[None]:
    return translated(table=_ERRORS, what=f"Cloud Storage {action}")


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket[/prefix]`` -> (bucket, prefix without slashes at either end)."""
    if not uri.startswith(_SCHEME):
        raise PermanentError(f"not a gs:// URI: {uri!r}", reason=Reason.INTERNAL,
                             hint="Set RELEASE_BUCKET to gs://BUCKET[/PREFIX] or a local folder.")
    bucket, _, prefix = uri[len(_SCHEME):].partition("/")
    if not bucket:
        raise PermanentError(f"no bucket in {uri!r}", reason=Reason.INTERNAL,
                             hint="Set RELEASE_BUCKET to gs://BUCKET[/PREFIX] or a local folder.")
    return bucket, prefix.strip("/")


class ChecksumVerifier:
    """Hashes a byte stream and compares it with the bucket's checksum (crc32c preferred, else md5)."""

    def __init__(self, *, crc32c: str | None, md5_hash: str | None) -> None:
        self._expected: str | None
        self._hash: Any
        if crc32c:
            self._expected, self._hash, self.algorithm = crc32c, google_crc32c.Checksum(), "crc32c"  # type: ignore[no-untyped-call]
        elif md5_hash:
            self._expected, self._hash, self.algorithm = md5_hash, hashlib.md5(usedforsecurity=False), "md5"
        else:
            # Every object has a crc32c in Cloud Storage; only odd emulators report none. Nothing to compare.
            self._expected, self._hash, self.algorithm = None, None, "none"

    def update(self, chunk: bytes) -> None:
        """Feed the next bytes of the stream."""
        if self._hash is not None:
            self._hash.update(chunk)

    def verify(self, name: str) -> None:
        """Raise ``TemporaryError(CHECKSUM_MISMATCH)`` unless the bytes fed so far match the checksum."""
        if self._hash is None:
            return
        actual = base64.b64encode(self._hash.digest()).decode()
        if actual != self._expected:
            raise TemporaryError(
                f"{name}: {self.algorithm} of the bytes received is {actual}, the bucket reports "
                f"{self._expected}", reason=Reason.CHECKSUM_MISMATCH,
                details={"object": name, "algorithm": self.algorithm, "expected": self._expected,
                         "actual": actual})


class _GenerationReader(io.RawIOBase):
    """Reads one generation of one object in ranged requests and verifies its checksum at the end.

    A response from another generation (a server that ignores the pin) is ``OBJECT_CHANGED`` at once. When a
    read fails or the checksum does not match, the object's current generation is looked up: if it moved on,
    the failure is reported as ``OBJECT_CHANGED`` whatever form it took (a 404 for the vanished generation, a
    416 because the new object is shorter).
    """

    def __init__(self, blob: storage.Blob, *, name: str, chunk_size: int,
                 fetch: Callable[[int, int], bytes], current_generation: Callable[[], int | None]) -> None:
        super().__init__()
        self._blob = blob
        # The library rewrites blob.generation from each response's headers, so keep what we asked for.
        self._generation = blob.generation
        self._name = name
        self._size = int(blob.size or 0)
        self._chunk_size = chunk_size
        self._fetch = fetch
        self._current_generation = current_generation
        self._offset = 0
        self._pending = b""
        self._verifier = ChecksumVerifier(crc32c=blob.crc32c, md5_hash=blob.md5_hash)
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._pending:
            self._refill()
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _refill(self) -> None:
        try:
            self._read_next()
        except ReleaseError as e:
            if e.reason != Reason.OBJECT_CHANGED:
                current = self._current_generation()
                if current != self._generation:
                    raise _changed(self._name, self._generation, current) from e
            raise

    def _read_next(self) -> None:
        if self._offset >= self._size:
            if not self._verified:
                self._verifier.verify(self._name)
                self._verified = True
            return
        end = min(self._offset + self._chunk_size, self._size) - 1
        chunk = self._fetch(self._offset, end)
        if self._blob.generation != self._generation:
            raise _changed(self._name, self._generation, self._blob.generation)
        if not chunk:
            raise TemporaryError(f"{self._name}: the bucket sent no bytes at offset {self._offset}",
                                 reason=Reason.UNAVAILABLE)
        self._verifier.update(chunk)
        self._offset += len(chunk)
        self._pending = chunk


class GcsArtifactStore:
    """An ``ArtifactStore`` over one Cloud Storage bucket, optionally below a prefix."""

    def __init__(self, *, uri: str, project: str | None = None, emulator_host: str | None = None,
                 chunk_size: int = 16 * 1024 * 1024, retry_timeout_s: float = 60.0) -> None:
        """``emulator_host`` (``STORAGE_EMULATOR_HOST``, passed in by the bootstrap) selects an emulator with
        anonymous credentials; without it the client uses Application Default Credentials."""
        self._bucket_name, self._prefix = parse_gs_uri(uri)
        self._chunk_size = chunk_size
        # Reads and the overwrite of a report are idempotent, so every call may retry transient failures.
        self._retry = DEFAULT_RETRY.with_timeout(retry_timeout_s)
        with _translated("client setup"):
            if emulator_host:
                endpoint = emulator_host if "://" in emulator_host else f"http://{emulator_host}"
                anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
                client = storage.Client(project=project or "local-project", credentials=anonymous,
                                        client_options={"api_endpoint": endpoint})
            else:
                client = storage.Client(project=project)
        self._client = client
        self._gcs_bucket = client.bucket(self._bucket_name)

    @property
    def bucket(self) -> str:
        """The bucket's name as it appears in storage events."""
        return self._bucket_name

    @property
    def uri(self) -> str:
        """``gs://bucket[/prefix]``."""
        return f"{_SCHEME}{self._bucket_name}" + (f"/{self._prefix}" if self._prefix else "")

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``, in name order (the order Cloud Storage lists)."""
        with _translated(f"list of {prefix!r}"):
            blobs = self._client.list_blobs(self._bucket_name, prefix=self._full(prefix), retry=self._retry)
            for blob in blobs:
                yield self._info(blob)

    def stat(self, name: str) -> ObjectInfo | None:
        """The object's metadata, or None when it does not exist."""
        blob = self._get(name)
        return None if blob is None else self._info(blob)

    def open(self, name: str, *, generation: int | None = None) -> BinaryIO:
        """A streamed, checksum-verified read of one generation (the current one when not given)."""
        raw = self._reader(name, self._get_generation(name, generation))
        return io.BufferedReader(raw, buffer_size=min(self._chunk_size, io.DEFAULT_BUFFER_SIZE * 128))

    def write(self, name: str, data: bytes, *, content_type: str = "application/json") -> ObjectInfo:
        """Create or overwrite an object; the upload carries a crc32c the bucket checks before keeping it."""
        blob = self._gcs_bucket.blob(self._full(name))
        with _translated(f"write of {name!r}"):
            blob.upload_from_string(data, content_type=content_type, checksum="crc32c", retry=self._retry)
        return self._info(blob)

    def download(self, name: str, dest: Path, *, generation: int | None = None) -> ObjectInfo:
        """Stream one object to ``dest``, verifying its checksum; ``dest`` appears only when complete."""
        blob = self._get_generation(name, generation)
        raw = self._reader(name, blob)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := raw.read(self._chunk_size):
                    out.write(chunk)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return self._info(blob)

    # ----------------------------------------------------------------------------------------- helpers
    def _full(self, name: str) -> str:
        return f"{self._prefix}/{name}" if self._prefix else name

    def _relative(self, full_name: str) -> str:
        return full_name[len(self._prefix) + 1:] if self._prefix else full_name

    def _get(self, name: str) -> storage.Blob | None:
        with _translated(f"stat of {name!r}"):
            blob: storage.Blob | None = self._gcs_bucket.get_blob(self._full(name), retry=self._retry)
        return blob

    def _get_generation(self, name: str, generation: int | None) -> storage.Blob:
        blob = self._get(name)
        if blob is None:
            if generation is not None:
                raise _changed(name, generation, None)
            raise NotFound(f"object {name!r} not found in {self.uri}", reason=Reason.FILE_MISSING,
                           hint="The object was deleted, or the name is wrong.")
        if generation is not None and blob.generation != generation:
            raise _changed(name, generation, blob.generation)
        # The blob carries the generation just seen, and the library sends it with every ranged read, so
        # chunks never mix two versions.
        return blob

    def _reader(self, name: str, blob: storage.Blob) -> _GenerationReader:
        def fetch(start: int, end: int) -> bytes:
            with _translated(f"read of {name!r}"):
                data: bytes = blob.download_as_bytes(start=start, end=end, raw_download=True, checksum=None,
                                                     retry=self._retry)
            return data

        def current_generation() -> int | None:
            current = self._get(name)
            return None if current is None else current.generation

        return _GenerationReader(blob, name=name, chunk_size=self._chunk_size, fetch=fetch,
                                 current_generation=current_generation)

    def _info(self, blob: storage.Blob) -> ObjectInfo:
        return ObjectInfo(
            name=self._relative(blob.name or ""),
            size=int(blob.size or 0),
            generation=int(blob.generation or 0),
            md5_hash=blob.md5_hash,
            crc32c=blob.crc32c,
            updated=blob.updated.isoformat() if blob.updated is not None else None,
            content_type=blob.content_type,
        )


def _changed(name: str, expected: int | None, current: int | None) -> TemporaryError:
    now = "is gone" if current is None else f"is now generation {current}"
    return TemporaryError(f"{name}: generation {expected} was asked for, the object {now}",
                          reason=Reason.OBJECT_CHANGED, delay=1.0,
                          details={"object": name, "expected_generation": expected,
                                   "current_generation": current})
