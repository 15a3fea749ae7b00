"""The audit log: who did what to which model, version or alias, and why. Append-only; the caller's transaction
holds each entry together with the change it records. ``release.registry`` re-exports both functions."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from release import registry_sql
from schemas.tables import AuditEntry, utcnow


def audit(session: Session, *, actor: str, action: str, model: str, version: str | None = None,
          alias: str | None = None, from_version: str | None = None, to_version: str | None = None,
          reason: str = "", details: dict[str, Any] | None = None) -> None:
    """Append to the audit log (there is no update or delete of audit rows anywhere)."""
    registry_sql.insert_audit(session, {"at": utcnow(), "actor": actor, "action": action, "model": model,
                                        "version": version, "alias": alias, "from_version": from_version,
                                        "to_version": to_version, "reason": reason, "details": dict(details or {})})


def audit_log(session: Session, *, model: str | None = None, limit: int = 100) -> list[AuditEntry]:
    """The newest audit entries, newest last."""
    query = select(AuditEntry)
    if model is not None:
        query = query.where(AuditEntry.model == model)
    rows = session.exec(query.order_by(col(AuditEntry.id).desc()).limit(limit)).all()
    return list(reversed(rows))

