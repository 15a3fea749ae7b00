"""The release controller: a persisted state machine per version, driven by events.

Every event about a version makes the controller look at that version's stored state and take the one step
that state calls for (level-triggered, like a Kubernetes controller): run the step's side effect, which is
idempotent (deploy, evaluate, shift traffic, retire), then in ONE transaction move the state by
compare-and-swap and publish the events that follow (transactional outbox, written by ``release.transitions``).
A duplicated or stale event finds the state already moved and does nothing; a process killed anywhere re-runs
at most one idempotent side effect when the event is redelivered, so every run converges to the same end state.

::

    REGISTERED -> DEPLOYING -> STAGED -> EVALUATING -> PROMOTING -> LIVE -> RETIRED
                      |            (intent)  \\-> REJECTED    \\-> ROLLED_BACK
                      \\-> FAILED
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from release import registry
from release.db import session_scope
from release.deployment_spec import deployment_spec
from release.ports import Candidate, DeploymentSpec, EventBus, GateRunner, Promoter, ServingBackend
from release.registry import PROD, STG, VersionView
from release.transitions import SYSTEM, Step, TransitionApplier, alias_moved, displace, set_intent
from schemas.errors import InvalidTransition, NotFound, PermanentError, Reason, ReleaseError
from schemas.events import (
    CloudEvent,
    EventType,
    GatesEvaluatedData,
    RollbackRequestedData,
    RolledBackData,
    RolloutData,
    make_event,
)
from schemas.policy import ReleasePolicy
from schemas.reports import PromotionReport
from schemas.states import SETTLED, VersionState
from schemas.tables import AuditEntry, ModelVersion, utcnow

# Step is defined beside the applier that returns it, and is part of this module's API (the CLI reports it).
__all__ = ["SKIP_GATES", "Controller", "Step", "is_settled"]

log = structlog.get_logger(__name__)
S = VersionState

#: Intents that skip the gates: a person promoting by hand, or a rollback restoring a proven version.
SKIP_GATES = frozenset({"promote", "restore"})


class Controller:
    """Drives versions through the release state machine. Several controllers may run at once."""

    def __init__(self, *, engine: Engine, bus: EventBus, serving: ServingBackend, gates: GateRunner,
                 promoter: Promoter, materialize: Callable[[VersionView], Path | None],
                 crash_at: str = "", gpu: bool | None = None, clock: Callable[[], Any] = utcnow) -> None:
        self._engine = engine
        self._bus = bus
        self._serving = serving
        self._gates = gates
        self._promoter = promoter
        self._materialize = materialize
        self._crash_at = crash_at
        self._gpu = gpu
        self._now = clock
        self._transitions = TransitionApplier(engine=engine, bus=bus, backend=serving.name, fault=self._fault)

    # ------------------------------------------------------------------------------------------ entry points
    def handle(self, event: CloudEvent) -> Step | None:
        """React to one event of ``model-events``: reconcile the version it names."""
        if event.model is None or event.version is None:
            return None
        return self.reconcile(event.model, event.version)

    def react_to_alert(self, event: CloudEvent) -> Step | None:
        """The one reaction to the ``alerts`` topic: a ``release.rollback_requested`` (the monitor's verdict under
        the model's drift policy) rolls PROD back, unless PROD already moved off the version it names."""
        if event.type != EventType.ROLLBACK_REQUESTED:
            return None
        try:
            data = RollbackRequestedData.model_validate(event.data)
        except ValidationError as error:
            raise PermanentError(f"invalid rollback request: {error.errors()[0]['msg']}",
                                 reason=Reason.EVENT_INVALID) from error
        return self.rollback(data.model, actor=data.actor, reason=data.reason, expected_version=data.version)

    def reconcile(self, model: str, version: str) -> Step | None:
        """Take the one step the version's stored state calls for."""
        with session_scope(self._engine) as session:
            view = registry.get_version(session, model, version)
        structlog.contextvars.bind_contextvars(model=model, version=version)
        try:
            handler = self._STEPS.get(view.state)
            if handler is None:
                return None
            return handler(self, view)
        finally:
            structlog.contextvars.unbind_contextvars("model", "version")

    def resume_all(self) -> list[tuple[str, str]]:
        """Versions that are mid-flight or serving: a starting controller reconciles each once."""
        with session_scope(self._engine) as session:
            rows = session.exec(select(ModelVersion).where(
                col(ModelVersion.state).not_in([S.RETIRED, S.REJECTED, S.FAILED, S.ROLLED_BACK]))).all()
            return [(registry.get_version_by_id(session, r.id).model, r.version) for r in rows if r.id]

    # ------------------------------------------------------------------------------------------ steps
    def _registered(self, view: VersionView) -> Step:
        return self._transitions.move(view, S.DEPLOYING, reason="rollout started")

    def _deploying(self, view: VersionView) -> Step:
        try:
            # Inside the try: a local copy that no longer matches the registered bytes fails the version too.
            spec = self._spec(view)
            self._serving.deploy(spec)
            status = self._serving.wait_ready(spec, timeout_s=self._policy(view).rollout.ready_timeout_s)
        except PermanentError as error:
            self._fault("DEPLOYING:failed")
            excerpt = str(error.details.get("log_excerpt", ""))
            self._serving.retire(view.model, view.version)
            data = RolloutData(model=view.model, version=view.version, error=error.message, log_excerpt=excerpt,
                               reason=str(error.reason))
            failed = make_event(EventType.ROLLOUT_FAILED, data, event_id=f"rollout-failed-{view.id}-{view.revision}")
            return self._transitions.move(view, S.FAILED, reason=f"rollout failed [{error.reason}]: {error.message}",
                                          extra=[failed],
                                          deployment=("failed", (), excerpt))
        self._fault("DEPLOYING:deployed")
        data = RolloutData(model=view.model, version=view.version, endpoints=list(status.endpoints))

        def stage(session: Session) -> list[CloudEvent]:
            if view.intent in SKIP_GATES:
                return []
            return [alias_moved(session, view, STG)]

        ready = make_event(EventType.ROLLOUT_READY, data, event_id=f"rollout-ready-{view.id}-{view.revision}")
        return self._transitions.move(view, S.STAGED, reason="pods ready", extra=[ready],
                                      deployment=("ready", status.endpoints, ""), also=stage)

    def _staged(self, view: VersionView) -> Step:
        if view.intent in SKIP_GATES:
            return self._transitions.move(view, S.PROMOTING, reason=f"{view.intent}: gates skipped")
        return self._transitions.move(view, S.EVALUATING, reason="gates started")

    def _evaluating(self, view: VersionView) -> Step:
        candidate = self._candidate(view)
        baseline = self._prod_candidate(view.model, exclude=view.id)
        report = self._gates.evaluate(candidate, baseline=baseline, policy=self._policy(view))
        self._fault("EVALUATING:evaluated")
        passed = report.passed
        data = GatesEvaluatedData(model=view.model, version=view.version, passed=passed,
                                  report=report.model_dump(mode="json"))
        target = S.PROMOTING if passed else S.REJECTED
        reason = "gates passed" if passed else f"gates failed: {', '.join(report.failed_gates()) or 'see report'}"

        def store(session: Session) -> list[CloudEvent]:
            registry.add_gate_report(session, version_id=view.id, report=report)
            return []

        evaluated = make_event(EventType.GATES_EVALUATED, data, event_id=f"gates-{view.id}-{view.revision}")
        step = self._transitions.move(view, target, reason=reason, also=store, extra=[evaluated])
        if not passed:
            self._serving.retire(view.model, view.version)
        return step

    def _promoting(self, view: VersionView) -> Step:
        with session_scope(self._engine) as session:
            prod = registry.find_alias(session, view.model, PROD)
        stable = self._prod_candidate(view.model, exclude=view.id)
        policy = self._policy(view)
        if view.intent in SKIP_GATES:
            outcome = PromotionReport(ok=True, reason=view.intent)
        else:
            outcome = self._promoter.shift(self._candidate(view), stable=stable, policy=policy)
        self._fault("PROMOTING:shifted")
        if not outcome.ok:
            why = outcome.reason or "canary failed"
            data = RolledBackData(model=view.model, version=view.version,
                                  restored_version=stable.version if stable else None, actor=SYSTEM, reason=why)
            with session_scope(self._engine) as session:
                registry.set_route_weight(session, model=view.model, version=view.version, weight=0)
            rolled_back = make_event(EventType.RELEASE_ROLLED_BACK, data,
                                     event_id=f"rolled-back-{view.id}-{view.revision}")
            step = self._transitions.move(view, S.ROLLED_BACK, reason=f"canary aborted: {why}", extra=[rolled_back],
                                          audit=("release.rolled_back", why))
            self._serving.retire(view.model, view.version)
            return step
        expected = prod.revision if prod is not None else 0

        def flip(session: Session) -> list[CloudEvent]:
            events = [alias_moved(session, view, PROD, expected_revision=expected,
                                  reason=view.state_reason or "gates passed")]
            registry.clear_routes(session, view.model)  # the canary's route becomes PROD itself
            displaced = prod.version if prod is not None else None
            if view.intent == "restore" and displaced and displaced != view.version:
                events += displace(session, view.model, displaced, to=S.ROLLED_BACK,
                                   why=f"rolled back to {view.version}")
            return events

        return self._transitions.move(view, S.LIVE, reason="promoted to PROD", also=flip)

    def _live(self, view: VersionView) -> Step | None:
        with session_scope(self._engine) as session:
            prod = registry.find_alias(session, view.model, PROD)
        if prod is not None and prod.version == view.version:
            spec = self._spec(view)
            if self._serving.status(view.model, view.version) is None:
                self._serving.deploy(spec)
                status = self._serving.wait_ready(spec, timeout_s=self._policy(view).rollout.ready_timeout_s)
                with session_scope(self._engine) as session:
                    registry.record_deployment(session, version_id=view.id, backend=self._serving.name,
                                               status="ready", endpoints=status.endpoints)
            return None
        grace = timedelta(seconds=self._policy(view).rollout.grace_period_s)
        superseded_at = prod.updated_at if prod is not None else view.updated_at
        if self._now() - superseded_at < grace:
            return None
        step = self._transitions.move(view, S.RETIRED, reason="superseded; grace period over")
        self._serving.retire(view.model, view.version)
        return step

    def _settled(self, view: VersionView) -> None:
        self._serving.retire(view.model, view.version)

    _STEPS: dict[VersionState, Callable[[Controller, VersionView], Step | None]] = {
        S.REGISTERED: _registered,
        S.DEPLOYING: _deploying,
        S.STAGED: _staged,
        S.EVALUATING: _evaluating,
        S.PROMOTING: _promoting,
        S.LIVE: _live,
        S.REJECTED: _settled,
        S.FAILED: _settled,
        S.ROLLED_BACK: _settled,
        S.RETIRED: _settled,
    }

    def retire_superseded(self, *, ignore_grace: bool = False) -> list[Step]:
        """Retire LIVE versions that PROD no longer points at (after their grace period)."""
        steps = []
        for model, version in self.resume_all():
            with session_scope(self._engine) as session:
                view = registry.get_version(session, model, version)
                prod = registry.find_alias(session, model, PROD)
            if view.state is not S.LIVE or (prod is not None and prod.version == version):
                continue
            if ignore_grace:
                steps.append(self._transitions.move(view, S.RETIRED, reason="superseded"))
                self._serving.retire(model, version)
            elif (live_step := self._live(view)) is not None:
                steps.append(live_step)
        return steps

    # ------------------------------------------------------------------------------------------ operations
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

    # ------------------------------------------------------------------------------------------ helpers
    def _previous_prod(self, session: Session, model: str, current: str) -> str | None:
        row = session.exec(select(AuditEntry).where(AuditEntry.model == model)
                           .where(AuditEntry.action == "alias.moved").where(AuditEntry.alias == PROD)
                           .where(AuditEntry.to_version == current)
                           .order_by(col(AuditEntry.id).desc())).first()
        return row.from_version if row is not None else None

    def _policy(self, view: VersionView) -> ReleasePolicy:
        return ReleasePolicy.model_validate(view.policy or {})

    def _spec(self, view: VersionView) -> DeploymentSpec:
        return deployment_spec(view, local_path=self._materialize(view), gpu=self._gpu)

    def _candidate(self, view: VersionView) -> Candidate:
        status = self._serving.status(view.model, view.version)
        endpoints = status.endpoints if status is not None and status.ready else ()
        if not endpoints:
            with session_scope(self._engine) as session:
                deployment = registry.get_deployment(session, view.id)
                endpoints = tuple(deployment.endpoints) if deployment else ()
        return Candidate(model=view.model, version=view.version, version_id=view.id, manifest=view.manifest,
                         endpoints=endpoints, local_path=self._materialize(view))

    def _prod_candidate(self, model: str, *, exclude: int) -> Candidate | None:
        with session_scope(self._engine) as session:
            prod = registry.find_alias(session, model, PROD)
            if prod is None or prod.version_id is None or prod.version_id == exclude:
                return None
            view = registry.get_version_by_id(session, prod.version_id)
        status = self._serving.status(model, view.version)
        if status is None or not status.ready:
            try:
                spec = self._spec(view)
                self._serving.deploy(spec)
                status = self._serving.wait_ready(spec, timeout_s=self._policy(view).rollout.ready_timeout_s)
            except ReleaseError as error:
                log.warning("baseline.unavailable", baseline=view.version, error=str(error))
                return None
        return Candidate(model=model, version=view.version, version_id=view.id, manifest=view.manifest,
                         endpoints=status.endpoints)

    def _fault(self, point: str) -> None:
        # Testing hook: a real SIGKILL at a named point proves that restarts converge.
        if self._crash_at and self._crash_at == point:
            log.warning("fault.injected", point=point)
            os.kill(os.getpid(), signal.SIGKILL)


def is_settled(state: VersionState) -> bool:
    """True when the controller has nothing left to do on its own for a version in ``state``."""
    return state in SETTLED
