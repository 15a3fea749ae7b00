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
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from release import registry, rollout_slots
from release.canary import CanaryRunner, Verdict
from release.db import session_scope
from release.deployment_spec import deployment_spec
from release.operator_actions import SKIP_GATES, OperatorActions
from release.ports import Candidate, DeploymentSpec, EventBus, GateRunner, Promoter, ServingBackend
from release.registry import PROD, STG, VersionView
from release.transitions import SYSTEM, Step, TransitionApplier, alias_moved, displace
from release.waits import Scheduler, check_due
from schemas.errors import PermanentError, ReleaseError
from schemas.events import (
    CloudEvent,
    EventType,
    GatesEvaluatedData,
    RolledBackData,
    RolloutData,
    make_event,
)
from schemas.policy import ReleasePolicy, Strategy
from schemas.states import SETTLED, VersionState
from schemas.tables import ModelVersion, utcnow

# Step is defined beside the applier that returns it, and is part of this module's API (the CLI reports it).
__all__ = ["SKIP_GATES", "Controller", "Step", "is_settled"]

log = structlog.get_logger(__name__)
S = VersionState

#: States a tick wakes when they have not moved for a while: everything still on its way.
WOKEN_BY_TICK = (S.REGISTERED, *rollout_slots.IN_FLIGHT)


class Controller(OperatorActions):
    """Drives versions through the release state machine. Several controllers may run at once."""

    def __init__(self, *, engine: Engine, bus: EventBus, serving: ServingBackend, gates: GateRunner,
                 promoter: Promoter, materialize: Callable[[VersionView], Path | None],
                 crash_at: str = "", gpu: bool | None = None, clock: Callable[[], datetime] = utcnow,
                 max_rollouts: int = 4, stale_after_s: float = 30.0) -> None:
        self._engine = engine
        self._bus = bus
        self._serving = serving
        self._gates = gates
        self._promoter = promoter
        self._materialize = materialize
        self._crash_at = crash_at
        self._gpu = gpu
        self._now = clock
        self._max_rollouts = max_rollouts
        self._stale_after = timedelta(seconds=stale_after_s)
        self._transitions = TransitionApplier(engine=engine, bus=bus, backend=serving.name, fault=self._fault)
        self._scheduler = Scheduler(engine=engine, bus=bus, clock=clock)
        self._canary = CanaryRunner(engine=engine, bus=bus, promoter=promoter, scheduler=self._scheduler,
                                    clock=clock, fault=self._fault)

    # ------------------------------------------------------------------------------------------ entry points
    def handle(self, event: CloudEvent) -> Step | None:
        """React to one event of ``model-events``: reconcile the version it names."""
        if event.type == EventType.ROLLBACK_REQUESTED:
            data = event.data
            return self.rollback(data["model"], actor=str(data.get("actor", "unknown")),
                                 reason=str(data.get("reason", "")), expected_version=data.get("version"))
        if event.model is None or event.version is None or event.type == EventType.CANARY_STEP:
            return None  # a canary step's own event is a record: its due event drives the next move
        if event.type == EventType.RECONCILE_DUE:
            check_due(event, self._now())
        return self.reconcile(event.model, event.version)

    def handle_tick(self, event: CloudEvent) -> int:
        """React to one event of ``release-ticks``: one tick; how many versions it woke."""
        return self.tick() if event.type == EventType.TICK else 0

    def tick(self) -> int:
        """The safety net, one short step: a due event for every in-flight version that has not moved for a
        while (its own due event may be lost), and the superseded versions whose grace period is over retired.
        Returns how many versions were woken."""
        cutoff = self._now() - self._stale_after
        with session_scope(self._engine) as session:
            freed = rollout_slots.sweep(session)
            rows = session.exec(select(ModelVersion).where(col(ModelVersion.state).in_(WOKEN_BY_TICK))
                                .where(col(ModelVersion.updated_at) < cutoff)).all()
            views = [registry.get_version_by_id(session, r.id) for r in rows if r.id is not None]
            for view in views:
                self._scheduler.wake(session, view, why="tick")
        if freed or views:
            log.info("controller.tick", woken=len(views), slots_freed=freed)
        self.retire_superseded()
        return len(views)

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
        def claim(session: Session) -> list[CloudEvent]:
            rollout_slots.claim(session, version_id=view.id, limit=self._max_rollouts)
            return []

        try:
            return self._transitions.move(view, S.DEPLOYING, reason="rollout started", also=claim)
        except (rollout_slots.NoSlot, IntegrityError) as busy:
            log.info("rollout.queued", why=str(busy))
            return self._scheduler.later(view, since=view.updated_at, why="waiting for a rollout slot", cap_s=5.0)

    def _deploying(self, view: VersionView) -> Step:
        try:
            # Inside the try: a local copy that no longer matches the registered bytes fails the version too.
            spec = self._spec(view)
            self._serving.deploy(spec)
            status = self._serving.check_ready(spec, give_up=self._overdue(view, view.updated_at))
            if not status.ready:
                return self._scheduler.later(view, since=view.updated_at, why="pods not ready")
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
        baseline, pending = self._baseline(view)
        if pending:
            return self._scheduler.later(view, since=view.updated_at, why="baseline pods not ready")
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
        rollout = self._policy(view).rollout
        canary = view.intent not in SKIP_GATES and rollout.strategy is Strategy.CANARY
        if canary and not self._canary.started(view):
            stable, pending = self._baseline(view)
            if pending:
                return self._scheduler.later(view, since=view.updated_at, why="baseline pods not ready")
            canary = stable is not None  # nothing to compare with: a direct flip, as for a first version
        verdict = self._canary.advance(view, self._candidate(view), rollout) if canary else None
        if canary and verdict is None:
            return Step(view.model, view.version, view.state, view.state, note="canary in progress")
        self._fault("PROMOTING:shifted")
        if verdict is not None and not verdict.report.ok:
            return self._roll_back(view, verdict)
        return self._flip(view, record=verdict.record if verdict is not None else None)

    def _roll_back(self, view: VersionView, verdict: Verdict) -> Step:
        why = verdict.report.reason or "canary failed"
        with session_scope(self._engine) as session:
            prod = registry.find_alias(session, view.model, PROD)
        data = RolledBackData(model=view.model, version=view.version,
                              restored_version=prod.version if prod else None, actor=SYSTEM, reason=why)
        rolled_back = make_event(EventType.RELEASE_ROLLED_BACK, data, event_id=f"rolled-back-{view.id}-{view.revision}")
        step = self._transitions.move(view, S.ROLLED_BACK, reason=f"canary aborted: {why}", extra=[rolled_back],
                                      also=verdict.record, audit=("release.rolled_back", why))
        self._serving.retire(view.model, view.version)
        return step

    def _flip(self, view: VersionView, *, record: Callable[[Session], list[CloudEvent]] | None) -> Step:
        with session_scope(self._engine) as session:
            prod = registry.find_alias(session, view.model, PROD)
        expected = prod.revision if prod is not None else 0

        def flip(session: Session) -> list[CloudEvent]:
            events = record(session) if record is not None else []
            events.append(alias_moved(session, view, PROD, expected_revision=expected,
                                      reason=view.state_reason or "gates passed"))
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
            status = self._serving.status(view.model, view.version)
            if status is None or not status.ready:
                spec = self._spec(view)
                self._serving.deploy(spec)
                status = self._serving.check_ready(spec)
                if not status.ready:
                    return self._scheduler.later(view, since=view.updated_at, why="PROD pods not ready")
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

    # ------------------------------------------------------------------------------------------ helpers
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

    def _baseline(self, view: VersionView) -> tuple[Candidate | None, bool]:
        """PROD's pods to compare ``view`` with, brought up when gone: (candidate, False); (None, False) when
        there is no PROD or it cannot come up in time; (None, True) while it is still coming up."""
        with session_scope(self._engine) as session:
            prod = registry.find_alias(session, view.model, PROD)
            if prod is None or prod.version_id is None or prod.version_id == view.id:
                return None, False
            base = registry.get_version_by_id(session, prod.version_id)
        status = self._serving.status(base.model, base.version)
        if status is None or not status.ready:
            try:
                spec = self._spec(base)
                self._serving.deploy(spec)
                status = self._serving.check_ready(spec, give_up=self._overdue(base, view.updated_at))
            except ReleaseError as error:
                log.warning("baseline.unavailable", baseline=base.version, error=str(error))
                return None, False
            if not status.ready:
                return None, True
        return Candidate(model=base.model, version=base.version, version_id=base.id, manifest=base.manifest,
                         endpoints=status.endpoints), False

    def _overdue(self, view: VersionView, since: datetime) -> bool:
        """Whether ``view``'s pods have had their ``ready_timeout_s`` since ``since``."""
        return self._now() - since >= timedelta(seconds=self._policy(view).rollout.ready_timeout_s)

    def _fault(self, point: str) -> None:
        # Testing hook: a real SIGKILL at a named point proves that restarts converge.
        if self._crash_at and self._crash_at == point:
            log.warning("fault.injected", point=point)
            os.kill(os.getpid(), signal.SIGKILL)


def is_settled(state: VersionState) -> bool:
    """True when the controller has nothing left to do on its own for a version in ``state``."""
    return state in SETTLED
