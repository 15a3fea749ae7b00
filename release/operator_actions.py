"""What people (and the monitor) ask of the controller: promote, retry, roll back. Audited, and done by moves
the controller's next steps carry on from, so an action is as safe under duplicates and restarts as any step.
"""

from __future__ import annotations

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from release import registry
from release.db import session_scope
from release.ports import ServingBackend
from release.registry import PROD
from release.transitions import Step, TransitionApplier, alias_moved, set_intent
from schemas.errors import InvalidTransition, NotFound, PermanentError, Reason
from schemas.events import CloudEvent, EventType, RolledBackData, make_event
from schemas.states import VersionState
from schemas.tables import AuditEntry

log = structlog.get_logger(__name__)
S = VersionState

#: Intents that skip the gates: a person promoting by hand, or a rollback restoring a proven version.
SKIP_GATES = frozenset({"promote", "restore"})


class OperatorActions:
    """The controller's operator entry points (mixed into ``Controller``, which provides these attributes)."""

    _engine: Engine
    _serving: ServingBackend
    _transitions: TransitionApplier

    def promote(self, model: str, version: str, *, actor: str, reason: str) -> Step:
        """Send a version to PROD by hand, skipping the gates. Audited; done by the controller's next steps."""
        with session_scope(self._engine) as session:
            view = registry.get_version(session, model, version)
            prod = registry.find_alias(session, model, PROD)
        if prod is not None and prod.version == version:
            return Step(model, version, view.state, view.state, note="already PROD")
        if view.state is S.LIVE and self._serving.status(model, version) is not None:
            with session_scope(self._engine) as session:
                moved = alias_moved(session, view, PROD, expected_revision=prod.revision if prod else 0,
                                    actor=actor, reason=reason)
                registry.audit(session, actor=actor, action="version.promoted", model=model, version=version,
                               reason=reason)
                self._transitions.publish(session, [moved])
            return Step(model, version, view.state, view.state, note="PROD flipped to warm version")
        if view.state in (S.STAGED, S.EVALUATING):
            with session_scope(self._engine) as session:
                set_intent(session, view, "promote")
                registry.audit(session, actor=actor, action="version.promoted", model=model, version=version,
                               reason=reason)
            return Step(model, version, view.state, view.state, note="will skip gates")
        if view.state in (S.REGISTERED, S.DEPLOYING, S.PROMOTING):
            raise InvalidTransition(f"{model}/{version} is {view.state}; wait until it settles, then promote",
                                    details={"state": str(view.state)})
        return self._transitions.move(view, S.DEPLOYING, reason=f"promoted by {actor}: {reason}",
                                      intent="promote", audit=("version.promoted", reason), actor=actor)

    def retry(self, model: str, version: str, *, actor: str, reason: str) -> Step:
        """Release a settled version again through the whole path: deploy, gates, canary. Audited.

        For an aborted canary, a rejected or failed version after its cause was fixed outside the artifact
        (a policy, a flaky dependency); the artifact itself is immutable.
        """
        with session_scope(self._engine) as session:
            view = registry.get_version(session, model, version)
        if view.state not in (S.REJECTED, S.FAILED, S.ROLLED_BACK, S.RETIRED):
            raise InvalidTransition(f"{model}/{version} is {view.state}; only a settled version that is not LIVE "
                                    "can be retried", details={"state": str(view.state)})
        return self._transitions.move(view, S.DEPLOYING, reason=f"retried by {actor}: {reason}", intent="",
                                      audit=("version.retried", reason), actor=actor)

    def rollback(self, model: str, *, actor: str, reason: str, expected_version: str | None = None) -> Step | None:
        """Put PROD back on the version it pointed at before the current one. Audited.

        When that version's pods are still warm the alias flips at once; otherwise it is redeployed and PROD
        stays on the current version until it is ready (the stable version is never unrouted first).
        """
        with session_scope(self._engine) as session:
            registry.get_model(session, model)  # an unknown model says so, rather than "no PROD"
            prod = registry.find_alias(session, model, PROD)
            if prod is None or prod.version is None:
                raise NotFound(f"{model} has no PROD version to roll back", reason=Reason.ALIAS_NOT_FOUND)
            if expected_version is not None and prod.version != expected_version:
                log.info("rollback.skipped", reason="PROD already moved", prod=prod.version,
                         requested_for=expected_version)
                return None
            current = registry.get_version(session, model, prod.version)
            previous = self._previous_prod(session, model, prod.version)
            if previous is None:
                raise PermanentError(f"{model} has no earlier PROD version to roll back to",
                                     reason=Reason.ALIAS_NOT_FOUND,
                                     hint="Promote a specific version with `release promote NAME VERSION`.")
            target = registry.get_version(session, model, previous)
        warm = target.state is S.LIVE and self._serving.status(model, target.version) is not None
        if warm:
            def flip(session: Session) -> list[CloudEvent]:
                events = [alias_moved(session, target, PROD, expected_revision=prod.revision, actor=actor,
                                      reason=f"rollback: {reason}")]
                data = RolledBackData(model=model, version=current.version, restored_version=target.version,
                                      actor=actor, reason=reason)
                events.append(make_event(EventType.RELEASE_ROLLED_BACK, data,
                                         event_id=f"rolled-back-{current.id}-{current.revision}"))
                return events
            step = self._transitions.move(current, S.ROLLED_BACK, reason=f"rolled back by {actor}: {reason}",
                                          also=flip, audit=("release.rolled_back", reason), actor=actor)
            self._serving.retire(model, current.version)
            return step
        why = f"restoring: rollback of {current.version} by {actor}"
        return self._transitions.move(target, S.DEPLOYING, reason=why, intent="restore",
                                      audit=("release.rollback_started", reason), actor=actor)

    def _previous_prod(self, session: Session, model: str, current: str) -> str | None:
        row = session.exec(select(AuditEntry).where(AuditEntry.model == model)
                           .where(AuditEntry.action == "alias.moved").where(AuditEntry.alias == PROD)
                           .where(AuditEntry.to_version == current)
                           .order_by(col(AuditEntry.id).desc())).first()
        return row.from_version if row is not None else None
