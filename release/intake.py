"""Intake: turns storage events into registered versions, or into rejection reports.

For every object event under ``models/`` it finds the artifact the object belongs to, decides whether that
artifact is complete (every listed file present with its size and sha256), validates it, and registers it
idempotently. Incomplete artifacts wait; bad ones get ``REJECTED.json`` beside them and an
``artifact.rejected`` event, and are never registered. Events may come duplicated and in any order: the
decision depends only on what is in the bucket and the registry, never on the event that triggered it.
No artifact code runs here; archives, pickles and samples are inspected as bytes (``release.inspection``).
The bucket is untrusted: whatever an artifact holds, evaluating it ends in its registration or its rejection
with a stable reason, never in an exception that would stop the other artifacts (only an unavailable store or
database escapes, as ``TemporaryError``, to be retried).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

import structlog
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from release import registry
from release.artifact_refs import ArtifactRef, IntakeResult, Status, artifact_for
from release.db import session_scope
from release.inspection import check_listed_file, check_sample_file, inspect_mar
from release.intake_policy import check_policy, policy_for
from release.mar_manifest import mar_manifest
from release.ports import ArtifactStore, EventBus, ObjectInfo
from schemas.digest import manifest_digest
from schemas.errors import ArtifactRejected, NotFound, PermanentError, Reason, TemporaryError
from schemas.events import (
    ArtifactRejectedData,
    EventType,
    ModelRegisteredData,
    Topic,
    make_event,
)
from schemas.manifest import (
    BUILTIN_HANDLERS,
    MANIFEST_FILENAME,
    MAX_MANIFEST_BYTES,
    NAME_PATTERN,
    VERSION_PATTERN,
    Manifest,
    ModelFormat,
)
from schemas.policy import ReleasePolicy
from schemas.storage import StorageObjectData
from schemas.tables import ArtifactRecord, utcnow

log = structlog.get_logger(__name__)

_CHUNK = 1 << 20
_SPOOL_IN_MEMORY = 8 << 20


class Intake:
    """Registers complete, valid artifacts; reports bad ones. Safe to run in several processes at once."""

    def __init__(self, *, store: ArtifactStore, bus: EventBus, engine: Engine,
                 default_policy: ReleasePolicy | None = None, bucket_policies: bool = False,
                 on_registered: Callable[[Session, registry.VersionView, Manifest], None] | None = None) -> None:
        """``bucket_policies`` lets ``policies/<name>.json`` in the uploads bucket stand in for a missing operator
        policy (RELEASE_BUCKET_POLICIES, single-team setups); otherwise uploaders cannot influence policy."""
        self._store = store
        self._bus = bus
        self._engine = engine
        self._default_policy = default_policy or ReleasePolicy()
        self._bucket_policies = bucket_policies
        self._on_registered = on_registered

    # ------------------------------------------------------------------------------------------ entry points
    def handle_object(self, data: StorageObjectData) -> IntakeResult:
        """React to one object-finalized event (Eventarc CloudEvent or bucket notification, same data)."""
        ref = artifact_for(data.name)
        if ref is None:
            return IntakeResult(status="ignored", artifact=data.name)
        return self.evaluate(ref)

    def reconcile(self, *, final: bool = False) -> list[IntakeResult]:
        """List the bucket and evaluate every artifact in it: catches events that were lost.

        With ``final`` the bucket is taken as complete: an artifact still waiting for files is rejected, since
        nothing more will arrive (``release run --until-idle`` works this way).
        """
        refs: dict[str, ArtifactRef] = {}
        for info in self._store.list("models/"):
            ref = artifact_for(info.name)
            if ref is not None:
                refs.setdefault(ref.prefix, ref)
        return [self._evaluate_alone(ref, final=final) for ref in refs.values()]

    def _evaluate_alone(self, ref: ArtifactRef, *, final: bool) -> IntakeResult:
        """One artifact of a sweep: a storage or database outage leaves it pending for the next sweep."""
        try:
            return self.evaluate(ref, final=final)
        except TemporaryError as error:
            log.warning("artifact.retry_later", artifact=ref.prefix, error=str(error))
            return IntakeResult(status="pending", artifact=ref.prefix, model=ref.model, version=ref.version,
                                reason=str(error.reason), message=f"retried later: {error.message}")

    def evaluate(self, ref: ArtifactRef, *, final: bool = False) -> IntakeResult:
        """Decide about one artifact from what is in the bucket now.

        Never raises because of what the artifact holds: every failure to evaluate it becomes its rejection.
        Only ``TemporaryError`` (storage or database unavailable) escapes, for the event to be redelivered.
        """
        bound = log.bind(model=ref.model, version=ref.version, artifact=ref.prefix)
        try:
            return self._judge(ref, final=final, bound=bound)
        except SQLAlchemyError as error:
            raise TemporaryError(f"metadata store unavailable while evaluating {ref.prefix}: {error}") from error

    def _judge(self, ref: ArtifactRef, *, final: bool, bound: Any) -> IntakeResult:
        try:
            return self._decide(ref, final=final, bound=bound)
        except ArtifactRejected as rejection:
            return self._reject(ref, rejection, bound)
        except (TemporaryError, SQLAlchemyError):
            raise
        except NotFound as gone:
            bound.info("artifact.vanished", error=gone.message)
            return IntakeResult(status="ignored", artifact=ref.prefix, model=ref.model, version=ref.version,
                                message=gone.message)
        except PermanentError as error:
            return self._reject(ref, ArtifactRejected(error.message, reason=error.reason, hint=error.hint,
                                                      details=error.details), bound)
        except Exception as error:  # a bug must cost one artifact, never the whole intake
            bound.exception("artifact.inspection_failed")
            return self._reject(ref, ArtifactRejected(
                f"intake could not evaluate {ref.prefix}: {type(error).__name__}: {error}"[:1000],
                reason=Reason.INSPECTION_FAILED,
                hint="Check the artifact against the contract in README.md; if it is valid, report this to the "
                     "operators (the intake log has the traceback)."), bound)

    def _decide(self, ref: ArtifactRef, *, final: bool, bound: Any) -> IntakeResult:
        if not re.match(NAME_PATTERN, ref.model) or not re.match(VERSION_PATTERN, ref.version):
            raise ArtifactRejected(
                f"path {ref.prefix!r} does not name a valid model and version "
                f"(name {NAME_PATTERN}, version {VERSION_PATTERN})", reason=Reason.MANIFEST_PATH_MISMATCH)
        inspected = self._inspect_dir(ref, final=final) if ref.kind == "dir" else self._inspect_mar(ref)
        if isinstance(inspected, IntakeResult):
            self._remember(ref, status="pending", message=inspected.message)
            bound.info("artifact.pending", missing=inspected.missing)
            return inspected
        manifest, digest = inspected
        policy = self._policy_for(ref.model)
        check_policy(manifest, policy)
        return self._register(ref, manifest, digest, policy, bound)

    # ------------------------------------------------------------------------------------------ inspection
    def _inspect_dir(self, ref: ArtifactRef, *, final: bool) -> IntakeResult | tuple[Manifest, str]:
        objects = {info.name: info for info in self._store.list(ref.prefix)}
        manifest_info = objects.get(ref.prefix + MANIFEST_FILENAME)
        if manifest_info is None:
            # Listing does not descend through links; asking for the manifest directly refuses a linked version
            # folder (unsafe_symlink) instead of waiting for files that will never be listed.
            self._store.stat(ref.prefix + MANIFEST_FILENAME)
            if final:
                raise ArtifactRejected(f"{ref.prefix} has files but no {MANIFEST_FILENAME}",
                                       reason=Reason.MANIFEST_MISSING, file=MANIFEST_FILENAME)
            return IntakeResult(status="pending", artifact=ref.prefix, model=ref.model, version=ref.version,
                                message=f"waiting for {MANIFEST_FILENAME}", missing=[MANIFEST_FILENAME])
        manifest = self._read_manifest(ref, manifest_info)
        for name in objects:
            # Every object of the artifact is checked for links, listed or not: a link is never harmless here.
            self._store.stat(name)
        missing, short = [], []
        for path, entry in manifest.files.items():
            info = objects.get(ref.prefix + path)
            if info is None:
                missing.append(path)
            elif info.size < entry.size and not final:
                short.append(path)  # still being written (local folders) or about to be replaced
            elif info.size != entry.size:
                raise ArtifactRejected(f"{path} is {info.size} bytes; the manifest says {entry.size}",
                                       reason=Reason.SIZE_MISMATCH, file=path,
                                       details={"expected": entry.size, "actual": info.size})
        if missing or short:
            if final and missing:
                raise ArtifactRejected(f"{ref.prefix} is missing {', '.join(sorted(missing))}",
                                       reason=Reason.FILE_MISSING, file=sorted(missing)[0],
                                       details={"missing": sorted(missing)})
            return IntakeResult(status="pending", artifact=ref.prefix, model=ref.model, version=ref.version,
                                message=f"waiting for {len(missing) + len(short)} file(s)",
                                missing=sorted(missing + short))
        digest = manifest_digest(manifest)
        if self._already_registered(ref, digest):
            return manifest, digest
        for path, entry in manifest.files.items():
            info = objects[ref.prefix + path]
            actual = self._sha256(ref.prefix + path, info)
            if actual != entry.sha256:
                raise ArtifactRejected(f"{path} has sha256 {actual}; the manifest says {entry.sha256}",
                                       reason=Reason.CHECKSUM_MISMATCH, file=path,
                                       details={"expected": entry.sha256, "actual": actual})
        self._check_contents(ref, manifest, objects)
        if not manifest.has_handler_code and manifest.handler not in BUILTIN_HANDLERS:
            raise ArtifactRejected(f"handler {manifest.handler!r} is neither built in "
                                   f"({', '.join(sorted(BUILTIN_HANDLERS))}) nor a .py file in the artifact",
                                   reason=Reason.UNKNOWN_HANDLER, file=MANIFEST_FILENAME)
        return manifest, digest

    def _check_contents(self, ref: ArtifactRef, manifest: Manifest, objects: dict[str, ObjectInfo]) -> None:
        """Every listed file as the pod and the gates will read it: samples capped, zips vetted, pickles scanned."""
        archives = [path for path in manifest.files if path.endswith(".mar")]
        if manifest.format is ModelFormat.MAR and len(archives) != 1:
            raise ArtifactRejected(f"a 'mar' model directory must list exactly one .mar file, it lists {archives}",
                                   reason=Reason.MANIFEST_INVALID, file=MANIFEST_FILENAME)
        samples = {manifest.eval: True, manifest.reference: False}
        for path in manifest.files:
            info = objects[ref.prefix + path]
            with self._open_seekable(ref.prefix + path, info) as handle:
                if path in samples:
                    check_sample_file(handle, label=path, size=info.size, eval_set=samples[path])
                else:
                    check_listed_file(handle, path=path, size=info.size)
        unlisted = [name for name in (manifest.eval, manifest.reference) if name and name not in manifest.files]
        if unlisted:
            raise ArtifactRejected(f"sample {unlisted[0]!r} is not listed in files", reason=Reason.MANIFEST_INVALID,
                                   file=MANIFEST_FILENAME)

    def _read_manifest(self, ref: ArtifactRef, info: ObjectInfo) -> Manifest:
        if info.size > MAX_MANIFEST_BYTES:
            raise ArtifactRejected(f"{MANIFEST_FILENAME} is {info.size} bytes, over {MAX_MANIFEST_BYTES}",
                                   reason=Reason.MANIFEST_TOO_LARGE, file=MANIFEST_FILENAME)
        with self._store.open(info.name, generation=info.generation) as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ArtifactRejected(f"{MANIFEST_FILENAME} is not valid JSON: {exc}",
                                   reason=Reason.MANIFEST_INVALID_JSON, file=MANIFEST_FILENAME) from exc
        try:
            manifest = Manifest.model_validate(document)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}"
                                 for e in exc.errors()[:10])
            raise ArtifactRejected(f"{MANIFEST_FILENAME} is invalid: {problems}", reason=Reason.MANIFEST_INVALID,
                                   file=MANIFEST_FILENAME,
                                   details={"errors": [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]}
                                                       for e in exc.errors()[:50]]}) from exc
        if (manifest.name, manifest.version) != (ref.model, ref.version):
            raise ArtifactRejected(
                f"manifest says {manifest.name}/{manifest.version} but the path says {ref.model}/{ref.version}",
                reason=Reason.MANIFEST_PATH_MISMATCH, file=MANIFEST_FILENAME)
        return manifest

    @contextlib.contextmanager
    def _open_seekable(self, name: str, info: ObjectInfo, *,
                       digest: hashlib._Hash | None = None) -> Iterator[IO[bytes]]:
        """The object as a seekable file: zips are read from their end. A bucket's stream (Cloud Storage) that
        cannot seek is spooled to a temporary file first (in memory up to a few MiB, on disk past that). With
        ``digest``, the object's bytes are hashed on the way, so hashing costs no second read of the bucket."""
        with self._store.open(name, generation=info.generation) as handle:
            if handle.seekable():
                if digest is not None:
                    while chunk := handle.read(_CHUNK):
                        digest.update(chunk)
                    handle.seek(0)
                yield handle
                return
            with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spooled:
                while chunk := handle.read(_CHUNK):
                    if digest is not None:
                        digest.update(chunk)
                    spooled.write(chunk)
                spooled.seek(0)
                yield spooled

    def _sha256(self, name: str, info: ObjectInfo) -> str:
        digest = hashlib.sha256()
        with self._store.open(name, generation=info.generation) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def _inspect_mar(self, ref: ArtifactRef) -> tuple[Manifest, str]:
        info = self._store.stat(ref.prefix)
        if info is None:
            raise NotFound(f"{ref.prefix} vanished before intake read it", reason=Reason.FILE_MISSING)
        digest = hashlib.sha256()
        with self._open_seekable(ref.prefix, info, digest=digest) as handle:
            contents = inspect_mar(handle, label=ref.prefix.rsplit("/", 1)[-1], size=info.size)
        sha = digest.hexdigest()
        manifest = mar_manifest(model=ref.model, version=ref.version, contents=contents, sha256=sha, size=info.size)
        return manifest, "sha256:" + sha

    # ------------------------------------------------------------------------------------------ decisions
    def _policy_for(self, model: str) -> ReleasePolicy:
        return policy_for(model, engine=self._engine, store=self._store, default=self._default_policy,
                          bucket_policies=self._bucket_policies)

    def _already_registered(self, ref: ArtifactRef, digest: str) -> bool:
        with session_scope(self._engine) as session:
            row = session.exec(select(ArtifactRecord).where(ArtifactRecord.bucket == self._store.bucket)
                               .where(ArtifactRecord.prefix == ref.prefix)).first()
            return row is not None and row.status == "registered" and row.digest == digest

    def _register(self, ref: ArtifactRef, manifest: Manifest, digest: str, policy: ReleasePolicy,
                  bound: Any) -> IntakeResult:
        uri = self._store.uri.rstrip("/") + "/" + ref.prefix
        # Pods copy these generations (Cloud Storage); one swapped since hashing fails their digest check.
        generations = {info.name[len(ref.prefix):] or next(iter(manifest.files)): info.generation
                       for info in self._store.list(ref.prefix)}
        with session_scope(self._engine) as session:
            outcome = registry.register_version(
                session, model=ref.model, version=ref.version, digest=digest, artifact_uri=uri,
                format=str(manifest.format), manifest=manifest.model_dump(mode="json"), metrics=manifest.metrics,
                policy=policy.model_dump(mode="json"),
                generations={path: gen for path, gen in generations.items()
                             if path in manifest.files or path == MANIFEST_FILENAME})
            self._remember(ref, status="registered", digest=digest, session=session)
            if outcome.created:
                if self._on_registered is not None:
                    self._on_registered(session, outcome.version, manifest)
                data = ModelRegisteredData(model=ref.model, version=ref.version, version_id=outcome.version.id,
                                           digest=digest, artifact_uri=uri, format=str(manifest.format))
                self._bus.publish(make_event(EventType.MODEL_REGISTERED, data,
                                             event_id=f"registered-{outcome.version.id}"),
                                  topic=Topic.MODEL_EVENTS, session=session)
        if outcome.created:
            bound.info("artifact.registered", digest=digest)
        return IntakeResult(status="registered", artifact=ref.prefix, model=ref.model, version=ref.version,
                            created=outcome.created)

    def _reject(self, ref: ArtifactRef, rejection: ArtifactRejected, bound: Any) -> IntakeResult:
        report = {"artifact": ref.prefix, "model": ref.model, "version": ref.version,
                  "rejected_at": utcnow().isoformat(), **rejection.to_dict()}
        fingerprint = hashlib.sha256(f"{ref.prefix}|{rejection.reason}|{rejection.message}".encode()).hexdigest()
        with session_scope(self._engine) as session:
            row = self._remember(ref, status="rejected", reason=str(rejection.reason), message=rejection.message,
                                 session=session)
            repeated = row.digest == fingerprint
            row.digest = fingerprint
            session.add(row)
            if not repeated:
                data = ArtifactRejectedData(bucket=self._store.bucket, path=ref.prefix, reason=str(rejection.reason),
                                            message=rejection.message, file=rejection.file, model=ref.model,
                                            version=ref.version)
                self._bus.publish(make_event(EventType.ARTIFACT_REJECTED, data,
                                             event_id=f"rejected-{fingerprint[:32]}"),
                                  topic=Topic.MODEL_EVENTS, session=session)
        if not repeated:
            # Written after the commit: a crash in between leaves the event and a retry writes the report.
            try:
                self._store.write(ref.report_name, json.dumps(report, indent=2).encode())
            except (ArtifactRejected, OSError) as unwritable:
                # The artifact's own folder is unsafe to write into (a symlink out of the bucket): the verdict
                # stays in the registry and the artifact.rejected event, and nothing is written anywhere.
                bound.warning("artifact.report_unwritable", error=str(unwritable))
            bound.warning("artifact.rejected", reason=str(rejection.reason), error=rejection.message,
                          file=rejection.file)
        return IntakeResult(status="rejected", artifact=ref.prefix, model=ref.model, version=ref.version,
                            reason=str(rejection.reason), message=rejection.message)

    def _remember(self, ref: ArtifactRef, *, status: Status, digest: str | None = None, reason: str | None = None,
                  message: str = "", session: Session | None = None) -> ArtifactRecord:
        if session is None:
            with session_scope(self._engine) as own:
                return self._remember(ref, status=status, digest=digest, reason=reason, message=message,
                                      session=own)
        row = session.exec(select(ArtifactRecord).where(ArtifactRecord.bucket == self._store.bucket)
                           .where(ArtifactRecord.prefix == ref.prefix)).first()
        if row is None:
            row = ArtifactRecord(bucket=self._store.bucket, prefix=ref.prefix, status=status)
        if row.status == "registered" and status == "pending":
            return row  # a late or duplicated event never demotes a registered artifact
        row.status = status
        if status != "rejected":
            row.digest = digest
        row.reason = reason
        row.message = message
        row.updated_at = utcnow()
        session.add(row)
        session.flush()
        return row

