"""The drift monitor: the ``prediction-logs`` subscriber that turns served predictions into drift alerts.

Per model version it cuts windows of prediction records (``monitoring.windows``), measures each closed window
against the version's reference profile (``monitoring.measure``), steps the persisted alert state machine
(``monitoring.alerts``) with the version's drift policy, and publishes what happened: ``drift.measured`` on
``drift-metrics``, ``drift.alert`` / ``drift.resolved`` on ``alerts`` and, when the policy says a critical
alert rolls back, ``release.rollback_requested`` on ``alerts``, which ``Controller.react_to_alert`` applies.

Consistency: one delivered batch is one transaction holding its de-dup marker (``processed_event``), its
prediction-log rows, and for every window it closed the measurement row, the alert state and the outgoing
events (transactional outbox). The open windows live in memory and are replaced only after that commit, so a
batch that fails, or is redelivered after a commit whose ack was lost, is never counted twice. The price: a
restarted monitor loses the records of its still-open windows (at most ``window_size - 1`` per version),
which a statistical monitor can afford; window indices and alert streaks continue from the store.

The reference profile is built at registration: ``handle_registration``, the consumer of the monitor's
``drift-profiles`` subscription on ``model-events``, builds and stores it from the same ``model.registered``
event the controller reacts to (``monitoring.reference`` says why intake does not). ``handle`` uses the
stored profile and builds one itself only when none is stored yet (a version registered before the monitor ran).
Side effects that must not hold a transaction open, Prometheus gauges, log lines and the best-effort
webhook (``monitoring.alert_webhooks``), run after the commit. One monitor instance per deployment is
assumed; a second one would cut its own windows from the share of batches it receives.
"""

from __future__ import annotations

import copy
import hashlib
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from pydantic import ValidationError
from sqlalchemy import delete, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from monitoring.alert_messages import webhook_payload
from monitoring.alert_webhooks import WebhookQueue, WebhookSender, post_json
from monitoring.alerts import AlertAction, AlertState, classify, step
from monitoring.measure import measure
from monitoring.metrics import DriftMetrics
from monitoring.pod_records import pod_batch
from monitoring.profile import ReferenceProfile, profile_from_dict
from monitoring.reference import profile_for_version
from monitoring.windows import WindowAccumulator, WindowData, WindowKey
from release import policies, registry
from release.artifacts import materialize
from release.db import session_scope
from release.ports import ArtifactStore, EventBus, SubscriptionSpec
from release.registry import VersionView
from schemas.errors import NotFound, PermanentError, Reason
from schemas.events import CloudEvent, EventType, RollbackRequestedData, Topic, make_event
from schemas.policy import DriftPolicy, ReleasePolicy
from schemas.predictions import DriftMeasurement, PredictionBatch, PredictionRecord
from schemas.tables import DriftAlertStateRow, DriftMeasurementRow, PredictionLogRow, ProcessedEvent, utcnow

log = structlog.get_logger(__name__)

MONITOR_SUBSCRIPTION = "drift-monitor"
#: On ``model-events``: builds each version's reference profile when it is registered, before it serves.
PROFILE_SUBSCRIPTION = "drift-profiles"
ACTOR = "drift-monitor"
#: How long prediction request ids are kept for joining feedback; older rows are pruned by ``flush``.
PREDICTION_RETENTION = timedelta(days=7)
_EVENT_ID_MAX = 64


def subscriptions(*, ack_deadline_s: float = 60.0, max_attempts: int = 5) -> list[SubscriptionSpec]:
    """What the monitor consumes: predictions on ``prediction-logs``, registrations on ``model-events``."""
    return [SubscriptionSpec(name=MONITOR_SUBSCRIPTION, topic=Topic.PREDICTION_LOGS,
                             ack_deadline_s=ack_deadline_s, max_attempts=max_attempts),
            SubscriptionSpec(name=PROFILE_SUBSCRIPTION, topic=Topic.MODEL_EVENTS,
                             ack_deadline_s=ack_deadline_s, max_attempts=max_attempts)]


@dataclass(frozen=True)
class _VersionInfo:
    policy: DriftPolicy
    profile: ReferenceProfile | None


@dataclass
class _Outcome:
    """What one judged window leaves to do once its transaction has committed."""

    measurement: DriftMeasurement
    state: AlertState
    alerts: list[CloudEvent] = field(default_factory=list)
    webhook_url: str | None = None


class DriftMonitor:
    """Consumes ``prediction-logs`` batches; ``flush(now)`` closes windows of streams that went quiet."""

    def __init__(self, *, engine: Engine, bus: EventBus, store: ArtifactStore, cache_dir: Path,
                 default_policy: DriftPolicy | None = None, webhook: WebhookSender | None = None,
                 metrics: DriftMetrics | None = None, retention: timedelta = PREDICTION_RETENTION,
                 webhook_prefixes: tuple[str, ...] = (), console_url: str = "",
                 pod_namespace: str = "model-release") -> None:
        """``webhook_prefixes`` is the operator's allow-list (RELEASE_WEBHOOK_ALLOW): a policy's webhook outside it
        is never called, even if it reached a stored policy some other way. ``console_url`` (the dashboard's
        address, RELEASE_CONSOLE_URL) adds a link to webhook messages. ``pod_namespace`` (RELEASE_K8S_NAMESPACE)
        is where the serving pods whose printed records are accepted run (``monitoring.pod_records``)."""
        self._engine = engine
        self._bus = bus
        self._store = store
        self._cache = cache_dir
        self._default_policy = default_policy or DriftPolicy()
        self._metrics = metrics
        self._retention = retention
        self._webhooks = WebhookQueue(webhook or post_json)
        self._webhook_prefixes = webhook_prefixes
        self._console_url = console_url
        self._pod_namespace = pod_namespace
        self._versions: dict[WindowKey, _VersionInfo] = {}
        self._windows: dict[WindowKey, WindowAccumulator] = {}

    # ------------------------------------------------------------------------------------------ entry points
    def handle_registration(self, event: CloudEvent) -> None:
        """Build and store the reference profile of a newly registered version (other events are ignored).

        Intake cannot do it (the release core does not import monitoring), so the profile is built from the
        same ``model.registered`` event the controller reacts to; ``handle`` still builds one lazily for
        versions registered before the monitor ran.
        """
        if event.type != EventType.MODEL_REGISTERED or event.model is None or event.version is None:
            return
        info = self._load((event.model, event.version))
        if info is not None:
            self._versions[(event.model, event.version)] = info

    def handle(self, event: CloudEvent) -> None:
        """Count one ``predictions.logged`` batch, or the records a pod printed (``pod_records.logged``); other
        event types on the topic are ignored."""
        if event.type == EventType.POD_RECORDS_LOGGED:
            batch = pod_batch(event.data, namespace=self._pod_namespace)
        elif event.type == EventType.PREDICTIONS_LOGGED:
            batch = _parse(event)
        else:
            return
        infos = self._infos({(r.model, r.version) for r in batch.records})
        records = [r for r in batch.records if (r.model, r.version) in infos]
        with session_scope(self._engine) as session:
            if session.get(ProcessedEvent, (MONITOR_SUBSCRIPTION, event.id)) is not None:
                return
            _log_predictions(session, records)
            staged = self._stage(session, [r for r in records if infos[(r.model, r.version)].profile])
            closed = [w for acc in staged.values() for w in acc.pending_closed]
            outcomes = self._judge_all(session, closed, infos)
            session.add(ProcessedEvent(consumer=MONITOR_SUBSCRIPTION, event_id=event.id))
        self._windows.update({key: acc.accumulator for key, acc in staged.items()})
        self._after_commit(outcomes)

    def flush(self, now: datetime | None = None) -> int:
        """Close windows whose first record is ``window_seconds`` old, and prune expired prediction logs.

        Returns how many windows were closed. Call it periodically; an idle stream has no batch to close them.
        """
        now = now or utcnow()
        closed_count = 0
        for key, current in list(self._windows.items()):
            candidate = copy.deepcopy(current)
            closed = candidate.flush(now)
            if not closed:
                continue
            with session_scope(self._engine) as session:
                outcomes = self._judge_all(session, closed, self._versions)
            self._windows[key] = candidate
            self._after_commit(outcomes)
            closed_count += len(closed)
        with session_scope(self._engine) as session:
            session.execute(delete(PredictionLogRow)
                            .where(col(PredictionLogRow.received_at) < now - self._retention))
        return closed_count

    def wait_for_webhooks(self, timeout_s: float = 10.0) -> bool:
        """Block until queued webhook calls are done (tests, shutdown); False when ``timeout_s`` ran out."""
        return self._webhooks.wait(timeout_s)

    # ------------------------------------------------------------------------------------------ versions
    def _infos(self, keys: Iterable[WindowKey]) -> dict[WindowKey, _VersionInfo]:
        out: dict[WindowKey, _VersionInfo] = {}
        for key in keys:
            info = self._versions.get(key) or self._load(key)
            if info is not None:
                self._versions[key] = out[key] = info
        return out

    def _load(self, key: WindowKey) -> _VersionInfo | None:
        model, version = key
        with session_scope(self._engine) as session:
            try:
                view = registry.get_version(session, model, version)
            except NotFound:
                # Not cached: the router may log a version a moment before its registration is visible here.
                log.warning("drift.unknown_version", model=model, version=version)
                return None
            stored = registry.get_reference_profile(session, model=model, version=version)
        policy = (ReleasePolicy.model_validate(view.policy).drift if view.policy else self._default_policy)
        if stored is None:
            # Built outside any transaction: downloading an artifact must not hold the store's write lock.
            stored = self._build_profile(view)
            if stored is not None:
                with session_scope(self._engine) as session:
                    registry.set_reference_profile(session, model=model, version=version, profile=stored)
        return _VersionInfo(policy=policy, profile=profile_from_dict(stored) if stored else None)

    def _build_profile(self, view: VersionView) -> dict[str, Any] | None:
        try:
            profile = profile_for_version(materialize(self._store, view, cache=self._cache), view.manifest)
        except (PermanentError, ValueError, KeyError, zipfile.BadZipFile) as error:
            # A version whose sample cannot be profiled is still served; it is just not drift-monitored.
            log.warning("drift.no_profile", model=view.model, version=view.version, error=str(error))
            return None
        if profile is None:
            log.info("drift.no_reference_sample", model=view.model, version=view.version)
        return profile

    # ------------------------------------------------------------------------------------------ windows
    def _stage(self, session: Session, records: Sequence[PredictionRecord]) -> dict[WindowKey, _Staged]:
        """Copies of the touched accumulators with ``records`` added; committed state swaps them in later."""
        staged: dict[WindowKey, _Staged] = {}
        for record in records:
            key = (record.model, record.version)
            if key not in staged:
                current = self._windows.get(key) or self._new_accumulator(session, key)
                staged[key] = _Staged(copy.deepcopy(current))
            staged[key].pending_closed.extend(staged[key].accumulator.add([record]))
        return staged

    def _new_accumulator(self, session: Session, key: WindowKey) -> WindowAccumulator:
        state = _load_state(session, key)
        last_measured = session.exec(select(func.max(DriftMeasurementRow.window_index))
                                     .where(DriftMeasurementRow.model == key[0])
                                     .where(DriftMeasurementRow.version == key[1])).one()
        seen = [i for i in (state.last_window, last_measured) if i is not None]
        return WindowAccumulator(self._versions[key].policy, next_index={key: max(seen) + 1 if seen else 0})

    def _judge_all(self, session: Session, windows: Sequence[WindowData],
                   infos: dict[WindowKey, _VersionInfo]) -> list[_Outcome]:
        outcomes = []
        for window in windows:
            key = (window.meta.model, window.meta.version)
            outcome = self._judge(session, window, infos[key])
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _judge(self, session: Session, window: WindowData, info: _VersionInfo) -> _Outcome | None:
        """Measure one window, step its alert state and publish, all inside the caller's transaction."""
        assert info.profile is not None
        meta = window.meta
        try:
            measurement = measure(info.profile, window, alpha=info.policy.alpha)
        except PermanentError as error:
            # Inputs that do not fit the profile poison one window, not the stream: skip it, keep going.
            log.warning("drift.window_unmeasurable", model=meta.model, version=meta.version,
                        window=meta.index, error=str(error))
            return None
        verdict = classify(measurement, info.policy)
        state, actions = step(_load_state(session, (meta.model, meta.version)), measurement, info.policy)
        session.add(DriftMeasurementRow(
            model=meta.model, version=meta.version, window_index=meta.index, samples=measurement.samples,
            severity=None if verdict is None else str(verdict.severity), window_start=meta.start,
            window_end=meta.end, measurement=measurement.model_dump(mode="json")))
        _save_state(session, state)
        subject = f"models/{meta.model}/versions/{meta.version}"
        self._bus.publish(make_event(EventType.DRIFT_MEASURED, measurement, subject=subject,
                                     event_id=_event_id("drift-measured", meta.model, meta.version, meta.index)),
                          topic=Topic.DRIFT_METRICS, session=session)
        outcome = _Outcome(measurement=measurement, state=state, webhook_url=info.policy.webhook_url)
        for action in actions:
            alert = make_event(action.event_type, action.alert, event_id=_event_id(action.event_id))
            self._bus.publish(alert, topic=Topic.ALERTS, session=session)
            outcome.alerts.append(alert)
            if action.alert.rollback_requested:
                self._bus.publish(_rollback_event(action), topic=Topic.ALERTS, session=session)
        return outcome

    def _after_commit(self, outcomes: Sequence[_Outcome]) -> None:
        for outcome in outcomes:
            if self._metrics is not None:
                self._metrics.observe(outcome.measurement)
                self._metrics.set_alert(outcome.state)
            for alert in outcome.alerts:
                data = alert.data
                log.warning("drift.alert", model=data["model"], version=data["version"], kind=data["kind"],
                            severity=data["severity"], alert_id=data["alert_id"], reasons=data["reasons"],
                            rollback_requested=data["rollback_requested"])
                if outcome.webhook_url and policies.webhook_allowed(outcome.webhook_url,
                                                                    prefixes=self._webhook_prefixes):
                    self._webhooks.submit(outcome.webhook_url, webhook_payload(alert.model_dump(mode="json"),
                                                                               console_url=self._console_url))
                elif outcome.webhook_url:
                    log.warning("drift.webhook_refused", url=outcome.webhook_url,
                                hint="Add its prefix to RELEASE_WEBHOOK_ALLOW to let alerts reach it.")


@dataclass
class _Staged:
    accumulator: WindowAccumulator
    pending_closed: list[WindowData] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- helpers
def _parse(event: CloudEvent) -> PredictionBatch:
    try:
        return PredictionBatch.model_validate(event.data)
    except ValidationError as error:
        raise PermanentError(f"invalid prediction batch: {error.error_count()} errors",
                             reason=Reason.EVENT_INVALID,
                             details={"errors": error.errors(include_url=False, include_context=False,
                                                             include_input=False)}) from error


def _event_id(*parts: object) -> str:
    """A deterministic event id within the journal's 64 characters (long model names are hashed)."""
    text = ":".join(str(p) for p in parts)
    return text if len(text) <= _EVENT_ID_MAX else "h:" + hashlib.sha256(text.encode()).hexdigest()[:60]


def _rollback_event(action: AlertAction) -> CloudEvent:
    alert = action.alert
    detail = f": {alert.reasons[0]}" if alert.reasons else ""
    data = RollbackRequestedData(model=alert.model, version=alert.version, actor=ACTOR,
                                 reason=f"{alert.severity} drift alert {alert.alert_id} "
                                        f"at window {alert.window_index}{detail}")
    return make_event(EventType.ROLLBACK_REQUESTED, data,
                      event_id=_event_id("rollback-requested", alert.alert_id, alert.window_index))


def _predicted(record: PredictionRecord) -> tuple[int | None, float | None]:
    """The predicted class (explicit, or argmax of several outputs) and a regression output (one output)."""
    outputs = record.outputs or []
    if record.predicted_class is not None:
        return record.predicted_class, None
    if len(outputs) > 1:
        return int(np.argmax(outputs)), None
    return None, (outputs[0] if outputs else None)


def _log_predictions(session: Session, records: Sequence[PredictionRecord]) -> None:
    """Keep each request id with its prediction for the feedback join; a request id already kept is skipped."""
    fresh = {(r.model, r.request_id): r for r in records}
    if not fresh:
        return
    known = session.exec(select(PredictionLogRow.model, PredictionLogRow.request_id)
                         .where(col(PredictionLogRow.request_id).in_([k[1] for k in fresh]))).all()
    for key in known:
        fresh.pop((key[0], key[1]), None)
    for record in fresh.values():
        predicted_class, predicted_value = _predicted(record)
        session.add(PredictionLogRow(model=record.model, version=record.version, request_id=record.request_id,
                                     predicted_class=predicted_class, predicted_value=predicted_value,
                                     received_at=record.received_at))


def _state_row(session: Session, key: WindowKey) -> DriftAlertStateRow | None:
    return session.exec(select(DriftAlertStateRow).where(DriftAlertStateRow.model == key[0])
                        .where(DriftAlertStateRow.version == key[1])).first()


def _load_state(session: Session, key: WindowKey) -> AlertState:
    row = _state_row(session, key)
    if row is None:
        return AlertState(model=key[0], version=key[1])
    return AlertState.model_validate(row.state)


def _save_state(session: Session, state: AlertState) -> None:
    row = _state_row(session, (state.model, state.version)) or DriftAlertStateRow(model=state.model,
                                                                                  version=state.version)
    row.severity = str(state.severity)
    row.alert_id = state.alert_id
    row.state = state.model_dump(mode="json")
    row.updated_at = utcnow()
    session.add(row)
