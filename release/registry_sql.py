"""The registry's hot statements, built once as SQLAlchemy Core and run on the session's own connection.

Why: resolve, register and move-alias run on every promotion, rollback, intake and CLI call. Through the ORM a
resolve was seven queries, each statement rebuilt per call (operator overloading) and every row loaded into the
identity map; profiles showed that machinery, not the database, was most of the time. Here each operation is one
statement in the common case (resolve: one UNION; register: one INSERT that also numbers the version and reports a
duplicate through ON CONFLICT; move: one lookup and one compare-and-swap UPDATE), prebuilt so SQLAlchemy's
compiled-statement cache always hits, and on PostgreSQL each is one round trip. ``release.registry`` keeps the
domain rules and the error messages; this module only knows SQL.

These statements bypass the ORM's autoflush, so ``_run`` flushes pending ORM changes first, and callers expire
any ORM copy of a row they change here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlmodel import Session

from schemas.states import VersionState
from schemas.tables import Alias, AuditEntry, Model, ModelVersion

_M: sa.Table = Model.__table__  # type: ignore[attr-defined]
_V: sa.Table = ModelVersion.__table__  # type: ignore[attr-defined]
_A: sa.Table = Alias.__table__  # type: ignore[attr-defined]
_AUDIT: sa.Table = AuditEntry.__table__  # type: ignore[attr-defined]

# What a VersionView is made of, in one place for every statement that returns a version.
VERSION_COLUMNS = ("id", "version", "seq", "state", "state_reason", "intent", "digest", "artifact_uri", "format",
                   "manifest", "metrics", "policy", "revision", "created_at", "updated_at", "generations")


def _version_select(rank: int, joined: sa.FromClause, *where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    return (sa.select(sa.literal_column(str(rank)).label("rank"), *(_V.c[c] for c in VERSION_COLUMNS))
            .select_from(joined).where(*where))


_MODEL_ID = sa.select(_M.c.id).where(_M.c.name == sa.bindparam("model"))

# A version named ``ref`` wins over an alias named ``ref`` (rank 0 before rank 1).
_RESOLVE = sa.union_all(
    _version_select(0, _M.join(_V, _V.c.model_id == _M.c.id),
                    _M.c.name == sa.bindparam("model"), _V.c.version == sa.bindparam("ref")),
    _version_select(1, _M.join(_A, _A.c.model_id == _M.c.id).join(_V, _V.c.id == _A.c.version_id),
                    _M.c.name == sa.bindparam("model"), _A.c.name == sa.bindparam("ref")),
).order_by(sa.literal_column("rank")).limit(1)

_VERSION_BY_NAME = _version_select(0, _V, _V.c.model_id == sa.bindparam("model_id"),
                                   _V.c.version == sa.bindparam("version"))

_ALIAS = (sa.select(_A.c.version_id, _A.c.revision, _A.c.updated_at, _V.c.version)
          .select_from(_M.join(_A, _A.c.model_id == _M.c.id).outerjoin(_V, _V.c.id == _A.c.version_id))
          .where(_M.c.name == sa.bindparam("model"), _A.c.name == sa.bindparam("alias")))

_target, _previous = _V.alias("target"), _V.alias("previous")
# Everything a move needs in one row: the model, the target version, the alias and where it points now.
_MOVE_LOOKUP = (
    sa.select(_M.c.id.label("model_id"), _target.c.id.label("target_id"), _A.c.id.label("alias_id"),
              _A.c.revision, _previous.c.version.label("previous"))
    .select_from(_M.outerjoin(_target, sa.and_(_target.c.model_id == _M.c.id,
                                                _target.c.version == sa.bindparam("version")))
                 .outerjoin(_A, sa.and_(_A.c.model_id == _M.c.id, _A.c.name == sa.bindparam("alias")))
                 .outerjoin(_previous, _previous.c.id == _A.c.version_id))
    .where(_M.c.name == sa.bindparam("model")))

_MOVE = (sa.update(_A).where(_A.c.id == sa.bindparam("b_id"), _A.c.revision == sa.bindparam("b_seen"))
         .values(version_id=sa.bindparam("b_target"), revision=sa.bindparam("b_next"),
                 updated_at=sa.bindparam("b_now")))

_ALIAS_REVISION = sa.select(_A.c.revision).where(_A.c.id == sa.bindparam("alias_id"))

_AUDIT_INSERT = sa.insert(_AUDIT).values({c: sa.bindparam(c) for c in (
    "at", "actor", "action", "model", "version", "alias", "from_version", "to_version", "reason", "details")})

_NEXT_SEQ = (sa.select(sa.func.coalesce(sa.func.max(_V.c.seq), 0) + 1)
             .where(_V.c.model_id == sa.bindparam("model_id")).scalar_subquery())
_NEW_VERSION_COLUMNS = ("model_id", "version", "state", "state_reason", "intent", "digest", "artifact_uri", "format",
                        "manifest", "metrics", "policy", "revision", "created_at", "updated_at", "generations")


def _insert_ignoring_duplicates(insert: Any, table: sa.Table, values: dict[str, Any], key: list[str],
                                *returning: sa.ColumnElement[Any]) -> Any:
    return insert(table).values(values).on_conflict_do_nothing(index_elements=key).returning(*returning)


# One statement per dialect (ON CONFLICT is spelled the same, but SQLAlchemy builds it per dialect): a duplicate
# returns no row instead of raising, so no savepoint is needed around the insert.
_INSERT_VERSION = {
    name: _insert_ignoring_duplicates(
        dialect.insert, _V, {**{c: sa.bindparam(c) for c in _NEW_VERSION_COLUMNS}, "seq": _NEXT_SEQ},
        ["model_id", "version"], _V.c.id, _V.c.seq)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))}
_INSERT_ALIAS = {
    name: _insert_ignoring_duplicates(
        dialect.insert, _A, {"model_id": sa.bindparam("model_id"), "name": sa.bindparam("alias"),
                             "version_id": sa.bindparam("target_id"), "revision": 1,
                             "updated_at": sa.bindparam("now")}, ["model_id", "name"], _A.c.id)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))}


def _run(session: Session, statement: Any, params: Mapping[str, Any]) -> sa.CursorResult[Any]:
    if session.new or session.dirty or session.deleted:  # Core statements do not autoflush
        session.flush()
    return session.connection().execute(statement, dict(params))


def model_id(session: Session, model: str) -> int | None:
    """The model's id, or None when it was never registered."""
    found: int | None = _run(session, _MODEL_ID, {"model": model}).scalar()
    return found


def resolve(session: Session, model: str, ref: str) -> Row[Any] | None:
    """The version named ``ref``, else the one alias ``ref`` points at: a row of ``VERSION_COLUMNS``."""
    return _run(session, _RESOLVE, {"model": model, "ref": ref}).first()


def version(session: Session, model_id: int, version: str) -> Row[Any] | None:
    """One version of a model by its version string, as a row of ``VERSION_COLUMNS``."""
    return _run(session, _VERSION_BY_NAME, {"model_id": model_id, "version": version}).first()


def alias(session: Session, model: str, alias: str) -> Row[Any] | None:
    """``(version_id, revision, updated_at, version)`` of an alias, or None."""
    return _run(session, _ALIAS, {"model": model, "alias": alias}).first()


def insert_version(session: Session, values: Mapping[str, Any]) -> tuple[int, int] | None:
    """Insert a version numbered after the model's newest; ``(id, seq)``, or None when it already exists."""
    statement = _INSERT_VERSION[session.connection().dialect.name]
    row = _run(session, statement, {"state": VersionState.REGISTERED.value, "state_reason": "", "intent": "",
                                    "revision": 0, **values}).first()
    return None if row is None else (int(row.id), int(row.seq))


def move_lookup(session: Session, *, model: str, alias: str, version: str | None) -> Row[Any] | None:
    """``(model_id, target_id, alias_id, revision, previous)`` for a move; None when the model is unknown."""
    return _run(session, _MOVE_LOOKUP, {"model": model, "alias": alias, "version": version}).first()


def create_alias(session: Session, *, model_id: int, alias: str, target_id: int | None, now: datetime) -> bool:
    """Create the alias at revision 1; False when someone else created it first."""
    statement = _INSERT_ALIAS[session.connection().dialect.name]
    params = {"model_id": model_id, "alias": alias, "target_id": target_id, "now": now}
    return _run(session, statement, params).first() is not None


def swap_alias(session: Session, *, alias_id: int, seen: int, target_id: int | None, now: datetime) -> bool:
    """Point the alias at ``target_id`` if its revision is still ``seen``; False when it moved meanwhile."""
    result = _run(session, _MOVE, {"b_id": alias_id, "b_seen": seen, "b_target": target_id, "b_next": seen + 1,
                                   "b_now": now})
    found = session.identity_map.get(session.identity_key(Alias, alias_id))
    if found is not None:  # an ORM copy loaded earlier in this transaction would now be stale
        session.expire(found)
    return result.rowcount == 1


def alias_revision(session: Session, alias_id: int) -> int:
    """The alias's revision now (to report what a lost race found)."""
    return int(_run(session, _ALIAS_REVISION, {"alias_id": alias_id}).scalar_one())


def insert_audit(session: Session, values: Mapping[str, Any]) -> None:
    """Append one audit row (every column given)."""
    _run(session, _AUDIT_INSERT, values)
