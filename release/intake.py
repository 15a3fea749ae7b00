"""Intake: turns storage events into registered versions, or into rejection reports.

For every object event under ``models/`` it finds the artifact the object belongs to, decides whether that
artifact is complete (every listed file present with its size and sha256), validates it, and registers it
idempotently. Incomplete artifacts wait; bad ones get ``REJECTED.json`` beside them and an
``artifact.rejected`` event, and are never registered. Events may come duplicated and in any order: the
decision depends only on what is in the bucket and the registry, never on the event that triggered it.
No artifact code runs here; archives and pickles are inspected as bytes (``release.inspection``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from release import policies, registry
from release.db import session_scope
from release.inspection import check_weights_pickle, read_mar_manifest
from release.ports import ArtifactStore, EventBus, ObjectInfo
from schemas.errors import ArtifactRejected, NotFound, PermanentError, Reason
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
    REJECTED_FILENAME,
    VERSION_PATTERN,
    Datatype,
    FileEntry,
    Manifest,
    ModelFormat,
    TensorSpec,
)
from schemas.policy import ReleasePolicy
from schemas.storage import StorageObjectData
from schemas.tables import ArtifactRecord, utcnow

log = structlog.get_logger(__name__)

_DIR_ARTIFACT = re.compile(r"^models/([^/]+)/([^/]+)/(.+)$")
_MAR_ARTIFACT = re.compile(r"^models/([^/]+)/([^/]+)\.mar$")
_CHUNK = 1 << 20

Status = Literal["registered", "pending", "rejected", "ignored"]


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact lives in the bucket and which model/version its path claims."""

    kind: Literal["dir", "mar"]
    model: str
    version: str
    prefix: str

    @property
    def report_name(self) -> str:
        """Where the rejection report goes."""
        return self.prefix + REJECTED_FILENAME if self.kind == "dir" else self.prefix + "." + REJECTED_FILENAME


@dataclass(frozen=True)
class IntakeResult:
    """What intake decided for one artifact."""

    status: Status
    artifact: str
    model: str | None = None
    version: str | None = None
    created: bool = False
    reason: str | None = None
    message: str = ""
    missing: list[str] = field(default_factory=list)


def artifact_for(object_name: str) -> ArtifactRef | None:
    """The artifact an object belongs to, or None for objects that are not part of one."""
    mar = _MAR_ARTIFACT.match(object_name)
    if mar:
        return ArtifactRef(kind="mar", model=mar.group(1), version=mar.group(2), prefix=object_name)
    match = _DIR_ARTIFACT.match(object_name)
    if match is None:
        return None
    if match.group(3) == REJECTED_FILENAME:
        return None
    return ArtifactRef(kind="dir", model=match.group(1), version=match.group(2),
                       prefix=f"models/{match.group(1)}/{match.group(2)}/")


def manifest_digest(manifest: Manifest) -> str:
    """The content address of a model directory: sha256 of its canonical manifest (which pins every file)."""
    canonical = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


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
        return [self.evaluate(ref, final=final) for ref in refs.values()]

    def evaluate(self, ref: ArtifactRef, *, final: bool = False) -> IntakeResult:
        """Decide about one artifact from what is in the bucket now."""
        bound = log.bind(model=ref.model, version=ref.version, artifact=ref.prefix)
        try:
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
            if manifest.has_model_code and not policy.rollout.allow_model_code:
                raise ArtifactRejected(
                    f"{ref.model}'s policy forbids model code inside artifacts; this artifact is {manifest.format} "
                    f"with handler {manifest.handler!r}", reason=Reason.MODEL_CODE_FORBIDDEN, file=manifest.handler,
                    hint="Ship state_dict or safetensors weights for a built-in architecture with a built-in handler "
                         "(tabular, image_classifier, text_classifier), or change the policy.")
            return self._register(ref, manifest, digest, policy, bound)
        except ArtifactRejected as rejection:
            return self._reject(ref, rejection, bound)
        except PermanentError as error:
            if error.reason is Reason.VERSION_CONFLICT:
                return self._reject(ref, ArtifactRejected(error.message, reason=error.reason, hint=error.hint,
                                                          details=error.details), bound)
            raise

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
        if manifest.format is ModelFormat.STATE_DICT:
            for path in manifest.files:
                if path.endswith((".pt", ".pth", ".bin")):
                    with self._store.open(ref.prefix + path, generation=objects[ref.prefix + path].generation) as f:
                        check_weights_pickle(f, label=path)
        if not manifest.has_handler_code and manifest.handler not in BUILTIN_HANDLERS:
            raise ArtifactRejected(f"handler {manifest.handler!r} is neither built in "
                                   f"({', '.join(sorted(BUILTIN_HANDLERS))}) nor a .py file in the artifact",
                                   reason=Reason.UNKNOWN_HANDLER, file=MANIFEST_FILENAME)
        return manifest, digest

    def _read_manifest(self, ref: ArtifactRef, info: ObjectInfo) -> Manifest:
        if info.size > MAX_MANIFEST_BYTES:
            raise ArtifactRejected(f"{MANIFEST_FILENAME} is {info.size} bytes, over {MAX_MANIFEST_BYTES}",
                                   reason=Reason.MANIFEST_TOO_LARGE, file=MANIFEST_FILENAME)
        with self._store.open(info.name, generation=info.generation) as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        try:
            document = json.loads(raw)
        except ValueError as exc:
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
        sha = self._sha256(ref.prefix, info)
        with self._store.open(ref.prefix, generation=info.generation) as handle:
            mar = read_mar_manifest(handle, label=ref.prefix.rsplit("/", 1)[-1])
        model = mar["model"]
        filename = f"{ref.version}.mar"
        manifest = Manifest(
            name=ref.model, version=ref.version, format=ModelFormat.MAR, handler=str(model["handler"]),
            files={filename: FileEntry(sha256=sha, size=info.size)},
            inputs=[TensorSpec(name="data", datatype=Datatype.BYTES, shape=[-1])],
            outputs=[TensorSpec(name="output", datatype=Datatype.BYTES, shape=[-1])],
            description=f"TorchServe archive {model.get('modelName', '')} {model.get('modelVersion', '')}".strip(),
            extra={"mar": mar})
        return manifest, "sha256:" + sha

    # ------------------------------------------------------------------------------------------ decisions
    def _policy_for(self, model: str) -> ReleasePolicy:
        """The operator's policy from the registry; else, only where opted in, the bucket's; else the default."""
        with session_scope(self._engine) as session:
            operator = policies.current(session, model)
        if operator is not None:
            return operator.policy
        if not self._bucket_policies:
            return self._default_policy
        name = f"policies/{model}.json"
        info = self._store.stat(name)
        if info is None:
            return self._default_policy
        with self._store.open(name) as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        try:
            return ReleasePolicy.model_validate_json(raw)
        except ValidationError as exc:
            raise ArtifactRejected(f"{name} is not a valid release policy: {exc.errors()[0]['msg']}",
                                   reason=Reason.POLICY_INVALID, file=name,
                                   hint=f"Fix {name}; artifacts of {model} are held until it is valid.") from exc

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
            except ArtifactRejected as unwritable:
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

