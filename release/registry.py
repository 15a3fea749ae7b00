"""The model registry: models, versions, aliases and the audit log.

Repository functions take ``*, session`` and never commit: the caller owns the transaction, so a state change,
its audit entry and its outgoing events land together or not at all. Rows leave as the frozen ``VersionView`` /
``AliasView`` domain objects, never as live ORM rows. Gate reports, deployment rows and canary routes live in
``release.rollout_records`` and are re-exported here, so callers reach every registry operation as ``registry.X``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from release import registry_sql
from release.audit import audit as audit
from release.audit import audit_log as audit_log
from release.rollout_records import add_gate_report as add_gate_report
from release.rollout_records import clear_routes as clear_routes
from release.rollout_records import get_deployment as get_deployment
from release.rollout_records import latest_gate_report as latest_gate_report
from release.rollout_records import load_gate_report as load_gate_report
from release.rollout_records import record_deployment as record_deployment
from release.rollout_records import route_weights as route_weights
from release.rollout_records import set_route_weight as set_route_weight
from schemas.errors import AliasConflict, InvalidTransition, NotFound, Reason
from schemas.states import VersionState, can_move
from schemas.tables import Alias, Model, ModelVersion, utcnow

PROD = "PROD"
STG = "STG"


@dataclass(frozen=True)
class VersionView:
    """A registered version as the rest of the system sees it."""

    id: int
    model: str
    version: str
    seq: int
    state: VersionState
    state_reason: str
    intent: str
    digest: str
    artifact_uri: str
    format: str
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    policy: dict[str, Any]
    revision: int
    created_at: datetime
    updated_at: datetime
    generations: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AliasView:
    """An alias and where it points."""

    model: str
    name: str
    version: str | None
    version_id: int | None
    revision: int
    updated_at: datetime


@dataclass(frozen=True)
class ModelSummary:
    """One row of `release models`."""

    name: str
    versions: int
    latest: str | None
    aliases: dict[str, str | None]
    created_at: datetime


def _view(row: ModelVersion, model: str) -> VersionView:
    assert row.id is not None
    return VersionView(id=row.id, model=model, version=row.version, seq=row.seq, state=VersionState(row.state),
                       state_reason=row.state_reason, intent=row.intent, digest=row.digest,
                       artifact_uri=row.artifact_uri,
                       format=row.format, manifest=dict(row.manifest), metrics=dict(row.metrics),
                       policy=dict(row.policy), revision=row.revision, created_at=row.created_at,
                       updated_at=row.updated_at, generations={k: int(v) for k, v in (row.generations or {}).items()})


def _row_view(row: Row[Any], model: str) -> VersionView:
    """A view from a ``registry_sql`` row of ``VERSION_COLUMNS``."""
    m = row._mapping
    return VersionView(id=m["id"], model=model, version=m["version"], seq=m["seq"], state=VersionState(m["state"]),
                       state_reason=m["state_reason"], intent=m["intent"], digest=m["digest"],
                       artifact_uri=m["artifact_uri"], format=m["format"], manifest=dict(m["manifest"]),
                       metrics=dict(m["metrics"]), policy=dict(m["policy"]), revision=m["revision"],
                       created_at=m["created_at"], updated_at=m["updated_at"],
                       generations={k: int(v) for k, v in (m["generations"] or {}).items()})


def _missing(session: Session, model: str, error: NotFound) -> NotFound:
    """``error``, unless the model itself is unknown (then MODEL_NOT_FOUND): asked only after a lookup missed."""
    if registry_sql.model_id(session, model) is None:
        return NotFound(f"model {model!r} is not registered", reason=Reason.MODEL_NOT_FOUND)
    return error


# ----------------------------------------------------------------------------------------------- models
def _model_row(session: Session, name: str) -> Model:
    row = session.exec(select(Model).where(Model.name == name)).first()
    if row is None:
        raise NotFound(f"model {name!r} is not registered", reason=Reason.MODEL_NOT_FOUND)
    return row


def get_model(session: Session, name: str) -> Model:
    """The model row; ``NotFound(MODEL_NOT_FOUND)`` when it was never registered."""
    return _model_row(session, name)


def ensure_model(session: Session, name: str) -> Model:
    """The model row, created when missing (safe against a concurrent creator)."""
    row = session.exec(select(Model).where(Model.name == name)).first()
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = Model(name=name)
            session.add(row)
    except IntegrityError:
        row = session.exec(select(Model).where(Model.name == name)).one()
    return row


def list_models(session: Session) -> list[ModelSummary]:
    """Every model with its version count, newest version and aliases, in name order."""
    counts = dict(session.exec(
        select(ModelVersion.model_id, func.count()).group_by(col(ModelVersion.model_id))).all())
    latest_seq = dict(session.exec(
        select(ModelVersion.model_id, func.max(ModelVersion.seq)).group_by(col(ModelVersion.model_id))).all())
    latest_names: dict[int, str] = {}
    if latest_seq:
        pairs = session.exec(select(ModelVersion.model_id, ModelVersion.seq, ModelVersion.version)
                             .where(col(ModelVersion.model_id).in_(list(latest_seq)))
                             .where(col(ModelVersion.seq).in_(list(set(latest_seq.values()))))).all()
        latest_names = {mid: ver for mid, seq, ver in pairs if latest_seq.get(mid) == seq}
    alias_rows = session.exec(
        select(Alias.model_id, Alias.name, ModelVersion.version)
        .join(ModelVersion, col(Alias.version_id) == col(ModelVersion.id), isouter=True)).all()
    aliases: dict[int, dict[str, str | None]] = {}
    for model_id, alias, version in alias_rows:
        aliases.setdefault(model_id, {})[alias] = version
    out = []
    for row in session.exec(select(Model).order_by(col(Model.name))).all():
        assert row.id is not None
        out.append(ModelSummary(name=row.name, versions=counts.get(row.id, 0), latest=latest_names.get(row.id),
                                aliases=aliases.get(row.id, {}), created_at=row.created_at))
    return out


# ----------------------------------------------------------------------------------------------- versions
@dataclass(frozen=True)
class Registration:
    """The outcome of ``register_version``: the version, and whether this call created it."""

    version: VersionView
    created: bool


def register_version(session: Session, *, model: str, version: str, digest: str, artifact_uri: str,
                     format: str, manifest: dict[str, Any], metrics: dict[str, Any] | None = None,
                     policy: dict[str, Any] | None = None, actor: str = "intake",
                     generations: dict[str, int] | None = None) -> Registration:
    """Register ``model/version`` idempotently.

    ``generations``: each file's object generation as intake read and hashed it, where the bucket has them.

    The same name, version and digest again is a no-op that returns the existing version. The same name and
    version with another digest raises ``PermanentError(VERSION_CONFLICT)``: versions are immutable.
    """
    from schemas.errors import PermanentError

    model_id = registry_sql.model_id(session, model)
    if model_id is None:
        model_id = ensure_model(session, model).id
        assert model_id is not None
    now, manifest, metrics, policy = utcnow(), dict(manifest), dict(metrics or {}), dict(policy or {})
    values = {"model_id": model_id, "version": version, "digest": digest, "artifact_uri": artifact_uri,
              "format": format, "manifest": manifest, "metrics": metrics, "policy": policy,
              "generations": dict(generations or {}), "created_at": now, "updated_at": now}
    # Insert first: a duplicate (a redelivered event, or a concurrent intake) comes back as no row, not an error.
    inserted = registry_sql.insert_version(session, values)
    if inserted is None:
        existing = registry_sql.version(session, model_id, version)
        assert existing is not None  # versions are never deleted
        if existing.digest == digest:
            return Registration(_row_view(existing, model), created=False)
        raise PermanentError(
            f"{model} version {version} is already registered with digest {existing.digest[:19]}…; "
            f"the upload has digest {digest[:19]}…",
            reason=Reason.VERSION_CONFLICT,
            hint="Versions are immutable: upload the changed model under a new version.",
            details={"registered_digest": existing.digest, "uploaded_digest": digest})
    audit(session, actor=actor, action="version.registered", model=model, version=version,
          details={"digest": digest, "artifact_uri": artifact_uri})
    version_id, seq = inserted
    return Registration(VersionView(id=version_id, model=model, version=version, seq=seq,
                                    state=VersionState.REGISTERED, state_reason="", intent="", digest=digest,
                                    artifact_uri=artifact_uri, format=format, manifest=manifest, metrics=metrics,
                                    policy=policy, revision=0, created_at=now, updated_at=now,
                                    generations=dict(generations or {})), created=True)


def _version_row(session: Session, model: str, version: str) -> ModelVersion:
    model_row = _model_row(session, model)
    row = session.exec(select(ModelVersion).where(ModelVersion.model_id == model_row.id)
                       .where(ModelVersion.version == version)).first()
    if row is None:
        raise NotFound(f"{model} has no version {version!r}", reason=Reason.VERSION_NOT_FOUND)
    return row


def get_version(session: Session, model: str, version: str) -> VersionView:
    """A version by model name and version string."""
    return _view(_version_row(session, model, version), model)


def get_version_by_id(session: Session, version_id: int) -> VersionView:
    """A version by its id."""
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise NotFound(f"no version with id {version_id}", reason=Reason.VERSION_NOT_FOUND)
    model_row = session.get(Model, row.model_id)
    assert model_row is not None
    return _view(row, model_row.name)


def list_versions(session: Session, model: str, *, state: VersionState | None = None,
                  limit: int | None = None, offset: int = 0, newest_first: bool = False) -> list[VersionView]:
    """The versions of a model in registration order, optionally filtered by state and paged."""
    model_row = _model_row(session, model)
    query = select(ModelVersion).where(ModelVersion.model_id == model_row.id)
    if state is not None:
        query = query.where(ModelVersion.state == state)
    order = col(ModelVersion.seq).desc() if newest_first else col(ModelVersion.seq)
    query = query.order_by(order).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return [_view(row, model) for row in session.exec(query).all()]


def search_versions(session: Session, *, text: str = "", state: VersionState | None = None,
                    limit: int = 100) -> list[VersionView]:
    """Versions across models whose model name or version contains ``text``, newest first."""
    query = select(ModelVersion, Model.name).join(Model, col(Model.id) == col(ModelVersion.model_id))
    if text:
        pattern = f"%{text}%"
        query = query.where(col(Model.name).like(pattern) | col(ModelVersion.version).like(pattern))
    if state is not None:
        query = query.where(ModelVersion.state == state)
    query = query.order_by(col(ModelVersion.id).desc()).limit(limit)
    return [_view(row, name) for row, name in session.exec(query).all()]


def transition(session: Session, *, model: str, version: str, to: VersionState,
               expect: VersionState | None = None, reason: str = "") -> tuple[VersionView, VersionState]:
    """Move a version along an edge of the state machine, guarded by compare-and-swap on its revision.

    Returns the new view and the state it left. Raises ``InvalidTransition`` when the edge does not exist or
    the version is no longer in ``expect`` (someone else moved it first).
    """
    row = _version_row(session, model, version)
    current = VersionState(row.state)
    if expect is not None and current is not expect:
        raise InvalidTransition(f"{model}/{version} is {current}, not {expect}",
                                details={"state": str(current), "expected": str(expect)})
    if not can_move(current, to):
        raise InvalidTransition(f"{model}/{version} cannot move from {current} to {to}",
                                details={"state": str(current), "target": str(to)})
    now = utcnow()
    result = session.execute(
        update(ModelVersion)
        .where(col(ModelVersion.id) == row.id, col(ModelVersion.revision) == row.revision)
        .values(state=to, state_reason=reason, revision=row.revision + 1, updated_at=now)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidTransition(f"{model}/{version} changed while moving to {to}; re-read and retry")
    session.expire(row)
    return get_version(session, model, version), current


def set_reference_profile(session: Session, *, model: str, version: str, profile: dict[str, Any]) -> None:
    """Store the drift baseline computed at registration."""
    row = _version_row(session, model, version)
    row.reference_profile = profile
    session.add(row)


def get_reference_profile(session: Session, *, model: str, version: str) -> dict[str, Any] | None:
    """The stored drift baseline, if any."""
    return _version_row(session, model, version).reference_profile


# ----------------------------------------------------------------------------------------------- aliases
def _alias_view(row: Alias, model: str, version: str | None) -> AliasView:
    return AliasView(model=model, name=row.name, version=version, version_id=row.version_id,
                     revision=row.revision, updated_at=row.updated_at)


def get_alias(session: Session, model: str, alias: str) -> AliasView:
    """Where ``alias`` points; ``NotFound(ALIAS_NOT_FOUND)`` when it was never set."""
    row = registry_sql.alias(session, model, alias)
    if row is None:
        raise _missing(session, model, NotFound(f"{model} has no alias {alias!r}", reason=Reason.ALIAS_NOT_FOUND))
    return AliasView(model=model, name=alias, version=row.version, version_id=row.version_id, revision=row.revision,
                     updated_at=row.updated_at)


def find_alias(session: Session, model: str, alias: str) -> AliasView | None:
    """Like ``get_alias`` but None when the model or alias does not exist."""
    try:
        return get_alias(session, model, alias)
    except NotFound:
        return None


def list_aliases(session: Session, model: str) -> list[AliasView]:
    """Every alias of a model, by name."""
    model_row = _model_row(session, model)
    rows = session.exec(select(Alias, ModelVersion.version)
                        .join(ModelVersion, col(Alias.version_id) == col(ModelVersion.id), isouter=True)
                        .where(Alias.model_id == model_row.id).order_by(col(Alias.name))).all()
    return [_alias_view(row, model, version) for row, version in rows]


def resolve(session: Session, model: str, ref: str) -> VersionView:
    """A version by version string or by alias name (an alias wins only when no version has that name)."""
    row = registry_sql.resolve(session, model, ref)
    if row is None:  # an unknown model is MODEL_NOT_FOUND, not a missing version
        raise _missing(session, model, NotFound(f"{model} has no version or alias {ref!r}",
                                                reason=Reason.VERSION_NOT_FOUND))
    return _row_view(row, model)


def move_alias(session: Session, *, model: str, alias: str, version: str | None, expected_revision: int | None,
               actor: str, reason: str) -> tuple[AliasView, str | None]:
    """Point ``alias`` at ``version`` (None unsets it) if its revision is still ``expected_revision``.

    ``expected_revision=None`` means "whatever it is now" (for system moves that already hold the version's
    state lock). Exactly one of two movers with the same expected revision wins; the other gets
    ``AliasConflict``. Returns the new alias and the version it pointed at before. Audited.
    """
    found = registry_sql.move_lookup(session, model=model, alias=alias, version=version)
    if found is None:
        raise NotFound(f"model {model!r} is not registered", reason=Reason.MODEL_NOT_FOUND)
    if version is not None and found.target_id is None:
        raise NotFound(f"{model} has no version {version!r}", reason=Reason.VERSION_NOT_FOUND)
    now = utcnow()
    if found.alias_id is None:
        if expected_revision not in (None, 0):
            raise AliasConflict(f"{model} alias {alias} does not exist (expected revision {expected_revision})",
                                details={"expected_revision": expected_revision, "revision": 0})
        if not registry_sql.create_alias(session, model_id=found.model_id, alias=alias, target_id=found.target_id,
                                         now=now):
            raise AliasConflict(f"{model} alias {alias} was created concurrently",
                                details={"expected_revision": expected_revision})
        previous, revision = None, 1
    else:
        seen = found.revision
        if expected_revision is not None and seen != expected_revision:
            raise AliasConflict(f"{model} alias {alias} is at revision {seen}, not {expected_revision}",
                                details={"expected_revision": expected_revision, "revision": seen})
        if not registry_sql.swap_alias(session, alias_id=found.alias_id, seen=seen, target_id=found.target_id,
                                       now=now):
            # Lost the race after our read: report the revision the winner left.
            now_at = registry_sql.alias_revision(session, found.alias_id)
            raise AliasConflict(f"{model} alias {alias} is at revision {now_at}, not {seen}",
                                details={"expected_revision": seen, "revision": now_at})
        previous, revision = found.previous, seen + 1
    audit(session, actor=actor, action="alias.moved", model=model, alias=alias, from_version=previous,
          to_version=version, reason=reason)
    return AliasView(model=model, name=alias, version=version, version_id=found.target_id, revision=revision,
                     updated_at=now), previous
