"""Operator release policies: the registry, not the uploads bucket, decides how a model is gated and rolled out.

Every change is validated (the ``ReleasePolicy`` schema plus this installation's rules, such as the webhook
allow-list), stored as a new revision with its actor, reason and diff, and audited. Uploaders never reach this
module: intake reads the policy in force, it never writes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from release import registry
from schemas.errors import BadRequest, Reason
from schemas.policy import ReleasePolicy
from schemas.tables import PolicyRevision


@dataclass(frozen=True)
class PolicyView:
    """One revision of a model's operator policy."""

    model: str
    revision: int
    policy: ReleasePolicy
    actor: str
    reason: str
    diff: dict[str, Any]
    created_at: datetime


def _view(row: PolicyRevision) -> PolicyView:
    return PolicyView(model=row.model, revision=row.revision, policy=ReleasePolicy.model_validate(row.policy),
                      actor=row.actor, reason=row.reason, diff=row.diff, created_at=row.created_at)


def parse_policy(raw: str | bytes | dict[str, Any], *, webhook_prefixes: tuple[str, ...]) -> ReleasePolicy:
    """Validate a policy document against the schema and the installation's rules; ``BadRequest`` says what to fix."""
    try:
        policy = (ReleasePolicy.model_validate(raw) if isinstance(raw, dict)
                  else ReleasePolicy.model_validate_json(raw))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "(document)"
        raise BadRequest(f"invalid release policy at {where}: {error['msg']}", reason=Reason.POLICY_INVALID,
                         hint="See schemas/policy.py for the fields; `release policy show NAME` prints the current "
                              "one.") from exc
    check_webhook(policy.drift.webhook_url, prefixes=webhook_prefixes)
    return policy


def webhook_allowed(url: str, *, prefixes: tuple[str, ...]) -> bool:
    """Whether ``url`` starts with one of the operator's allowed prefixes (RELEASE_WEBHOOK_ALLOW)."""
    return any(url.startswith(prefix) for prefix in prefixes)


def check_webhook(url: str | None, *, prefixes: tuple[str, ...]) -> None:
    """Refuse a drift webhook outside the operator's allow-list (RELEASE_WEBHOOK_ALLOW)."""
    if url is not None and not webhook_allowed(url, prefixes=prefixes):
        raise BadRequest(f"drift webhook {url!r} is not on this installation's allow-list",
                         reason=Reason.POLICY_INVALID,
                         hint="Add its URL prefix to RELEASE_WEBHOOK_ALLOW (comma-separated), or leave it out.")


def current(session: Session, model: str) -> PolicyView | None:
    """The revision in force for ``model``, or None when the operator never set one."""
    row = session.exec(select(PolicyRevision).where(PolicyRevision.model == model)
                       .order_by(col(PolicyRevision.revision).desc())).first()
    return None if row is None else _view(row)


def history(session: Session, model: str, *, limit: int = 50) -> list[PolicyView]:
    """Revisions of ``model``'s policy, newest first."""
    rows = session.exec(select(PolicyRevision).where(PolicyRevision.model == model)
                        .order_by(col(PolicyRevision.revision).desc()).limit(limit)).all()
    return [_view(r) for r in rows]


def set_policy(session: Session, *, model: str, policy: ReleasePolicy, actor: str, reason: str) -> PolicyView:
    """Store ``policy`` as the next revision for ``model`` and audit the change (in the caller's transaction).

    Setting the policy already in force records nothing and returns the current revision.
    """
    registry.ensure_model(session, model)
    before = current(session, model)
    document = policy.model_dump(mode="json")
    previous = before.policy.model_dump(mode="json") if before is not None else {}
    if before is not None and previous == document:
        return before
    changes = diff(previous, document)
    row = PolicyRevision(model=model, revision=(before.revision if before else 0) + 1, policy=document,
                         actor=actor, reason=reason, diff=changes)
    session.add(row)
    registry.audit(session, actor=actor, action="policy.set", model=model, reason=reason,
                   details={"revision": row.revision, "diff": changes})
    session.flush()
    return _view(row)


def diff(before: dict[str, Any], after: dict[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """``{"dotted.key": {"from": old, "to": new}}`` for every leaf that differs (lists compare whole)."""
    changes: dict[str, Any] = {}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        path = f"{prefix}{key}"
        if isinstance(old, dict | None) and isinstance(new, dict | None) and (old or new):
            changes |= diff(old or {}, new or {}, prefix=f"{path}.")
        elif old != new:
            changes[path] = {"from": old, "to": new}
    return changes
