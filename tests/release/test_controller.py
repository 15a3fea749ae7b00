"""The release controller: every path of the state machine, idempotence, and convergence after SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from release import journal, registry
from release.db import session_scope
from release.ports import Candidate
from release.promotion import PodCounters, RoutePromoter
from release.worker import run_until_idle
from schemas.errors import InvalidTransition
from schemas.events import EventType
from schemas.policy import CanaryStep, ReleasePolicy, RolloutPolicy, Strategy
from tests.release.controller_harness import build, end_state
from tests.release.registrations import register_version

#: A canary whose steps are judged as soon as they start: what is tested is the path, not the waiting.
QUICK_CANARY = ReleasePolicy(rollout=RolloutPolicy(strategy=Strategy.CANARY, steps=[
    CanaryStep(weight=10, watch_s=0), CanaryStep(weight=100, watch_s=0)])).model_dump(mode="json")


def _types(engine: Engine) -> list[str]:
    with session_scope(engine) as s:
        return [r.type.removeprefix("dev.modelrelease.").removesuffix(".v1") for r in journal.recent(s, limit=1000)]


def test_good_version_goes_live_and_moves_prod(sqlite_engine: Engine, tmp_path: Path) -> None:
    """A version that deploys and passes its gates ends LIVE with PROD and STG on it, every step an event."""
    engine, bus, _controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    register_version(engine, bus, "1")
    run_until_idle([consumer], bus=bus)
    assert end_state(engine) == {"digits": {"versions": {"1": "LIVE"}, "aliases": {"PROD": "1", "STG": "1"}}}
    types = _types(engine)
    for expected in ("model.registered", "rollout.ready", "gates.evaluated", "alias.moved",
                     "version.state_changed"):
        assert expected in types
    assert types.count("version.state_changed") == 5


def test_failing_gates_reject_and_keep_prod(tmp_path: Path) -> None:
    """A version that fails its gates is REJECTED, its pods retired, PROD unchanged."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", failing={"2"})
    register_version(engine, bus, "1")
    run_until_idle([consumer], bus=bus)
    register_version(engine, bus, "2")
    run_until_idle([consumer], bus=bus)
    state = end_state(engine)["digits"]
    assert state["versions"] == {"1": "LIVE", "2": "REJECTED"} and state["aliases"]["PROD"] == "1"
    assert ("digits", "2") in controller._serving.retired  # type: ignore[attr-defined]
    with session_scope(engine) as s:
        assert registry.get_version(s, "digits", "2").state_reason == "gates failed: metric:accuracy"


def test_gates_evaluated_event_carries_the_stored_report(tmp_path: Path) -> None:
    """The report published in gates.evaluated is the same JSON as the one stored for the version."""
    engine, bus, _controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    register_version(engine, bus, "1")
    run_until_idle([consumer], bus=bus)
    with session_scope(engine) as s:
        (event,) = [r.envelope for r in journal.recent(s, limit=1000) if r.type == EventType.GATES_EVALUATED]
        stored = registry.latest_gate_report(s, registry.get_version(s, "digits", "1").id)
    assert stored is not None and event["data"]["report"] == stored and event["data"]["passed"] is True


def test_pods_that_never_get_ready_end_failed_with_the_log(tmp_path: Path) -> None:
    """A rollout that never becomes ready ends FAILED, and the deployment keeps the pod log excerpt."""
    engine, bus, _controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", broken={"1"})
    register_version(engine, bus, "1")
    run_until_idle([consumer], bus=bus)
    with session_scope(engine) as s:
        view = registry.get_version(s, "digits", "1")
        deployment = registry.get_deployment(s, view.id)
    assert view.state == "FAILED" and deployment is not None
    assert "cannot load model.pt" in deployment.log_excerpt
    assert "rollout.failed" in _types(engine)


def test_aborted_canary_rolls_back_and_prod_stays(tmp_path: Path) -> None:
    """A canary that breaches its budget ends ROLLED_BACK and PROD never moves."""
    engine, bus, _controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", aborting={"2"})
    register_version(engine, bus, "1")
    register_version(engine, bus, "2", policy=QUICK_CANARY)
    run_until_idle([consumer], bus=bus)
    state = end_state(engine)["digits"]
    assert state["versions"]["2"] == "ROLLED_BACK" and state["aliases"]["PROD"] == "1"
    assert "release.rolled_back" in _types(engine)


def test_new_prod_supersedes_and_rollback_restores_the_previous(tmp_path: Path) -> None:
    """Version 2 replaces 1; a rollback puts PROD back on the still-warm 1 and marks 2 ROLLED_BACK, audited."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    register_version(engine, bus, "1")
    run_until_idle([consumer], bus=bus)
    register_version(engine, bus, "2")
    run_until_idle([consumer], bus=bus)
    assert end_state(engine)["digits"]["aliases"]["PROD"] == "2"
    controller.rollback("digits", actor="oncall", reason="bad outputs")
    run_until_idle([consumer], bus=bus)
    state = end_state(engine)["digits"]
    assert state["aliases"]["PROD"] == "1" and state["versions"]["2"] == "ROLLED_BACK"
    with session_scope(engine) as s:
        entries = [(e.actor, e.action) for e in registry.audit_log(s, model="digits")]
    assert ("oncall", "release.rolled_back") in entries


def test_rollback_to_a_retired_version_redeploys_it_before_moving_prod(tmp_path: Path) -> None:
    """When the previous version's pods are gone it is redeployed without gates, and only then PROD moves."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    register_version(engine, bus, "1")
    run_until_idle([consumer], bus=bus)
    register_version(engine, bus, "2")
    run_until_idle([consumer], bus=bus)
    controller.retire_superseded(ignore_grace=True)
    assert end_state(engine)["digits"]["versions"]["1"] == "RETIRED"
    calls = len(controller._gates.calls)  # type: ignore[attr-defined]
    step = controller.rollback("digits", actor="oncall", reason="drift")
    assert step is not None and step.after == "DEPLOYING"
    assert end_state(engine)["digits"]["aliases"]["PROD"] == "2"  # stable until the restore is ready
    run_until_idle([consumer], bus=bus)
    state = end_state(engine)["digits"]
    assert state["aliases"]["PROD"] == "1" and state["versions"] == {"1": "LIVE", "2": "ROLLED_BACK"}
    assert len(controller._gates.calls) == calls  # type: ignore[attr-defined]


def test_manual_promote_of_a_rejected_version_skips_gates(tmp_path: Path) -> None:
    """`release promote` redeploys a rejected version and moves PROD to it without gates, audited."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", failing={"2"})
    register_version(engine, bus, "1")
    register_version(engine, bus, "2")
    run_until_idle([consumer], bus=bus)
    controller.promote("digits", "2", actor="ana", reason="accept the lower score")
    run_until_idle([consumer], bus=bus)
    assert end_state(engine)["digits"]["aliases"]["PROD"] == "2"


def test_duplicate_and_stale_events_change_nothing(tmp_path: Path) -> None:
    """Redelivering every event of a finished release leaves the end state and journal length unchanged."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    register_version(engine, bus, "1")
    run_until_idle([consumer], bus=bus)
    before, count = end_state(engine), len(_types(engine))
    with session_scope(engine) as s:
        events = [journal.to_event(r) for r in journal.recent(s, limit=1000)]
    for event in events:
        controller.handle(event)
    assert end_state(engine) == before and len(_types(engine)) == count


def test_promote_while_deploying_says_to_wait(tmp_path: Path) -> None:
    """Promoting a version that is mid-rollout is refused with a clear error."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    register_version(engine, bus, "1")
    consumer.drain_once()  # REGISTERED -> DEPLOYING only
    with pytest.raises(InvalidTransition, match="wait until it settles"):
        controller.promote("digits", "1", actor="ana", reason="")


CRASH_POINTS = [
    "REGISTERED:before_commit", "REGISTERED:after_commit", "DEPLOYING:deployed", "DEPLOYING:before_commit",
    "DEPLOYING:after_commit", "STAGED:before_commit", "STAGED:after_commit", "EVALUATING:evaluated",
    "EVALUATING:before_commit", "EVALUATING:after_commit", "PROMOTING:shifted", "PROMOTING:before_commit",
    "PROMOTING:after_commit",
]


@pytest.fixture(scope="module")
def reference_end_state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The end state of an uninterrupted run, to compare crashed-and-restarted runs against."""
    url = f"sqlite:///{tmp_path_factory.mktemp('ref') / 'c.db'}"
    engine, bus, _c, _consumer = build(url)
    register_version(engine, bus, "good")
    register_version(engine, bus, "bad")
    out = subprocess.run([sys.executable, "-m", "tests.release.controller_harness", url], check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_any_transition_then_restart_converges(point: str, tmp_path: Path,
                                                          reference_end_state: dict) -> None:
    """A controller process SIGKILLed at a transition and started again ends exactly where an uninterrupted one does."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine, bus, _c, _consumer = build(url)
    register_version(engine, bus, "good")
    register_version(engine, bus, "bad")
    crashed = subprocess.run([sys.executable, "-m", "tests.release.controller_harness", url, point],
                             check=False, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    restarted = subprocess.run([sys.executable, "-m", "tests.release.controller_harness", url], check=True,
                               capture_output=True, text=True, timeout=120)
    assert json.loads(restarted.stdout) == reference_end_state
    assert reference_end_state["digits"]["versions"] == {"good": "LIVE", "bad": "REJECTED"}


def test_aborted_canary_can_be_retried_through_the_whole_path(tmp_path: Path) -> None:
    """After a canary aborts, `retry` sends the version through gates and canary again, audited."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", aborting={"2"})
    register_version(engine, bus, "1")
    register_version(engine, bus, "2", policy=QUICK_CANARY)
    run_until_idle([consumer], bus=bus)
    assert end_state(engine)["digits"]["versions"]["2"] == "ROLLED_BACK"
    controller._promoter.aborting.clear()  # type: ignore[attr-defined]  (the cause went away)
    controller.retry("digits", "2", actor="ana", reason="flaky dependency fixed")
    run_until_idle([consumer], bus=bus)
    assert end_state(engine)["digits"]["aliases"]["PROD"] == "2"
    assert controller._gates.calls.count("2") == 2  # type: ignore[attr-defined]
    with session_scope(engine) as s:
        assert ("ana", "version.retried") in [(e.actor, e.action) for e in registry.audit_log(s, model="digits")]
    with pytest.raises(InvalidTransition, match="only a settled version"):
        controller.retry("digits", "2", actor="ana", reason="")


class _ScrapedPromoter(RoutePromoter):
    """The real route promoter, with the pods' counters scripted: every window sees 10 requests."""

    def __init__(self, *, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing
        self.scrapes = 0

    def _scrape(self, candidate: Candidate) -> PodCounters:
        self.scrapes += 1
        if self.scrapes % 2:  # the scrape opening a window
            return PodCounters(0.0, 0.0, ())
        return PodCounters(10.0, 10.0 if candidate.version in self.failing else 0.0, ())


def test_back_to_back_canaries_leave_no_stale_routes(tmp_path: Path) -> None:
    """An aborted canary and then a promoted one leave no route weight behind: PROD takes all traffic."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    controller._canary._promoter = _ScrapedPromoter(failing={"2"})  # type: ignore[attr-defined]
    canary = ReleasePolicy(rollout=RolloutPolicy(strategy=Strategy.CANARY, min_requests=1, steps=[
        CanaryStep(weight=50, watch_s=0), CanaryStep(weight=100, watch_s=0)])).model_dump(mode="json")
    for version in ("1", "2", "3"):
        register_version(engine, bus, version, policy=canary)
        run_until_idle([consumer], bus=bus)
    state = end_state(engine)["digits"]
    assert state["versions"]["2"] == "ROLLED_BACK" and state["aliases"]["PROD"] == "3"
    with session_scope(engine) as s:
        assert registry.route_weights(s, "digits") == {}
