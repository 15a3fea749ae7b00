"""Canary steps as short reconciles: each step is started by one and judged by another, its progress stored.

Starting step *i* is one transaction: the step's row (index, weight, start, the candidate pods' counters then),
the route weight, ``canary.step`` (started) and a due event at start + ``watch_s``. The due reconcile reads the
counters again, judges the window with the pure ``judge_step`` and, in one transaction, records the verdict,
publishes ``canary.step`` (passed or failed) and starts step *i + 1*. The last verdict, and a failed one, are
handed back to the controller, which records them in the transaction that flips PROD or rolls back.

Every write is guarded: a step's row is unique per (version, attempt, step), and a verdict is recorded only over
an empty one, so a duplicated or reordered event, or a second controller, changes nothing; a process killed
between a step's start and its verdict finds the open row and judges it when it is due.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import structlog
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from release import registry
from release.db import session_scope
from release.ports import Candidate, EventBus, Promoter
from release.registry import VersionView
from release.waits import Scheduler, due_event
from schemas.events import CanaryStepData, CloudEvent, EventType, Topic, make_event
from schemas.policy import CanaryStep, RolloutPolicy, Strategy
from schemas.reports import CanaryStepResult, PromotionReport
from schemas.tables import CanaryStepRecord

log = structlog.get_logger(__name__)


class _LostRace(Exception):
    """Another reconcile recorded this verdict first."""


@dataclass(frozen=True)
class Verdict:
    """How the canary ended, and the writes that record its last step in the controller's transaction."""

    report: PromotionReport
    record: Callable[[Session], list[CloudEvent]]


class CanaryRunner:
    """Runs one version's canary one step per reconcile."""

    def __init__(self, *, engine: Engine, bus: EventBus, promoter: Promoter, scheduler: Scheduler,
                 clock: Callable[[], datetime], fault: Callable[[str], None]) -> None:
        self._engine = engine
        self._bus = bus
        self._promoter = promoter
        self._scheduler = scheduler
        self._now = clock
        self._fault = fault

    def started(self, view: VersionView) -> bool:
        """Whether this promotion attempt of the version already started a step."""
        return bool(self._rows(view))

    def advance(self, view: VersionView, candidate: Candidate, rollout: RolloutPolicy) -> Verdict | None:
        """Take the canary's next move; the verdict once it has one, None while steps remain or a window is open."""
        rows = self._rows(view)
        if not rows:
            self._start(view, candidate, rollout, index=0)
            return None
        current = rows[-1]
        if current.result is not None:  # passed: a failure leaves PROMOTING in the same transaction
            if current.step + 1 < len(rollout.steps):
                self._start(view, candidate, rollout, index=current.step + 1)
                return None
            return Verdict(report=_report(rows, None), record=lambda _s: [])
        due = current.started_at + timedelta(seconds=current.watch_s)
        if self._now() < due:
            self._scheduler.at(view, due, why=f"canary step {current.step} watch window")
            return None
        step = CanaryStep(weight=current.weight, watch_s=current.watch_s)
        result = self._promoter.judge(candidate, step=step, snapshot=current.snapshot, rollout=rollout)
        self._fault("PROMOTING:judged")
        if not result.ok or current.step + 1 >= len(rollout.steps):
            return Verdict(report=_report(rows, result),
                           record=lambda session: self._record(session, view, current, result))
        self._start(view, candidate, rollout, index=current.step + 1,
                    judged=lambda session: self._record(session, view, current, result))
        return None

    # ------------------------------------------------------------------------------------------ writes
    def _start(self, view: VersionView, candidate: Candidate, rollout: RolloutPolicy, *, index: int,
               judged: Callable[[Session], list[CloudEvent]] | None = None) -> None:
        step = rollout.steps[index]
        snapshot = self._promoter.snapshot(candidate)
        started_at = self._now()
        try:
            with session_scope(self._engine) as session:
                events = judged(session) if judged is not None else []
                session.add(CanaryStepRecord(version_id=view.id, attempt=view.revision, step=index,
                                             weight=step.weight, watch_s=step.watch_s, started_at=started_at,
                                             snapshot=snapshot))
                session.flush()  # the unique step row: a second starter fails here and changes nothing
                registry.set_route_weight(session, model=view.model, version=view.version, weight=step.weight)
                events.append(_step_event(view, index, step.weight, "started"))
                for event in events:
                    self._bus.publish(event, topic=Topic.MODEL_EVENTS, session=session)
                due_at = started_at + timedelta(seconds=step.watch_s)
                self._scheduler.publish(session, due_event(view, due_at, why=f"canary step {index}"), due_at)
        except (IntegrityError, _LostRace):
            log.info("canary.step_lost_race", step=index)
            return
        log.info("canary.step_started", step=index, weight=step.weight, watch_s=step.watch_s)
        self._fault("PROMOTING:step_started")

    def _record(self, session: Session, view: VersionView, row: CanaryStepRecord,
                result: CanaryStepResult) -> list[CloudEvent]:
        done = session.execute(update(CanaryStepRecord)
                               .where(col(CanaryStepRecord.id) == row.id, col(CanaryStepRecord.result).is_(None))
                               .values(result=result.model_dump(mode="json"), judged_at=self._now()))
        if not done.rowcount:  # type: ignore[attr-defined]
            raise _LostRace(f"step {row.step} of {view.model}/{view.version} was judged already")
        if not result.ok:
            registry.set_route_weight(session, model=view.model, version=view.version, weight=0)
        return [_step_event(view, row.step, row.weight, "passed" if result.ok else "failed", result)]

    def _rows(self, view: VersionView) -> list[CanaryStepRecord]:
        with session_scope(self._engine) as session:
            return list(session.exec(select(CanaryStepRecord).where(CanaryStepRecord.version_id == view.id)
                                     .where(CanaryStepRecord.attempt == view.revision)
                                     .order_by(col(CanaryStepRecord.step))).all())


def _step_event(view: VersionView, index: int, weight: int, phase: Literal["started", "passed", "failed"],
                result: CanaryStepResult | None = None) -> CloudEvent:
    data = CanaryStepData(model=view.model, version=view.version, step=index, weight=weight,
                          phase=phase,
                          result=result.model_dump(mode="json") if result is not None else None)
    return make_event(EventType.CANARY_STEP, data, event_id=f"canary-{view.id}-{view.revision}-{index}-{phase}")


def _report(rows: list[CanaryStepRecord], last: CanaryStepResult | None) -> PromotionReport:
    """The promotion report of a finished canary, in the shape stored before steps were persisted."""
    steps = [CanaryStepResult.model_validate(r.result) for r in rows if r.result is not None]
    if last is not None:
        steps.append(last)
    if last is not None and not last.ok:
        return PromotionReport(ok=False, strategy=Strategy.CANARY, steps=tuple(steps),
                               reason=f"step {last.weight}%: {'; '.join(last.breaches)}")
    return PromotionReport(ok=True, strategy=Strategy.CANARY, steps=tuple(steps))
