"""Load through the router while PROD moves: zero failed requests, and the new version answers within 1 s.

The embedded flow with real pods: versions 1 and 2 of a small torch model are dropped into the bucket folder and
released through intake and the controller (as ``app/demo.py`` does, with RELEASE_HOME under tmp); the
router runs under uvicorn in a thread; 8 concurrent clients keep a closed loop of requests going while version 2
is released through the normal gates (direct strategy) and then rolled back to version 1 by ``controller.rollback``.
The superseded version 1 must stay warm through its grace period so that the rollback only flips the alias.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client import CollectorRegistry

from release import registry
from release.bootstrap import App, bootstrap
from release.db import session_scope
from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, build_router_app
from release.settings import Settings
from schemas.states import VersionState
from tests.artifacts import DigitsMLP, torchscript_bytes, write_artifact
from tests.servers.in_thread import serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MODEL = "digits"
CLIENTS = 8
SETTLE_S = 1.0  # the bound under test: requests started this long after a move see the new version
POLICY = {
    "rollout": {"strategy": "direct", "grace_period_s": 600, "ready_timeout_s": 90},
    "gates": {"latency": {"requests": 40, "concurrency": 2, "p99_ms": 5000}},
}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


@dataclass(frozen=True)
class Answer:
    """One client request: when it started and ended (wall clock), its status and the version that answered."""

    started: float
    ended: float
    status: int
    version: str
    error: str = ""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    """The embedded control plane with its home under tmp; pods are stopped at the end."""
    settings = Settings(home=tmp_path / "home", log_format="console", log_level="WARNING",
                        policy_json=json.dumps(POLICY))
    application = bootstrap(settings)
    try:
        yield application
    finally:
        application.close()


def _release(app: App, version: str, seed: int) -> None:
    """Drop a version into the bucket as a user would, then run intake and the controller until idle."""
    torch.manual_seed(seed)
    write_artifact(Path(app.settings.bucket_location), MODEL, version, {"model.pt": torchscript_bytes(DigitsMLP())})
    app.ensure_subscriptions()
    app.intake.reconcile(final=True)
    app.drain_controller()


def _prod(app: App) -> registry.AliasView:
    with session_scope(app.engine) as s:
        alias = registry.find_alias(s, MODEL, registry.PROD)
    assert alias is not None
    return alias


@pytest.fixture
def router_url(app: App) -> Iterator[str]:
    """The router (with its prediction logger) served by uvicorn in a thread on a loopback port."""
    metrics = RouterMetrics(CollectorRegistry())
    logger = PredictionLogger(engine=app.engine, bus=app.bus, dropped=metrics.dropped)
    logger.start()
    router = Router(table=RouteTable(engine=app.engine), logger=logger, metrics=metrics)
    try:
        with serve_in_thread(build_router_app(router), name="router") as url:
            yield url
    finally:
        logger.close()


class Load:
    """CLIENTS closed-loop clients in their own thread and event loop, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)

    def start(self) -> None:
        """Start the clients."""
        self._thread.start()

    def stop(self) -> list[Answer]:
        """Stop the clients and return every answer."""
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()
        return sorted(self.answers, key=lambda a: a.started)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:
            await asyncio.gather(*(self._client(client) for _ in range(CLIENTS)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            started = time.time()
            try:
                response = await client.post(f"/v2/models/{MODEL}/infer", json=BODY)
                answer = Answer(started, time.time(), response.status_code,
                                response.headers.get("x-model-version", "-"),
                                "" if response.status_code == 200 else response.text[:200])
            except httpx.HTTPError as exc:
                answer = Answer(started, time.time(), 0, "-", f"{type(exc).__name__}: {exc}")
            self.answers.append(answer)


def _wait(seconds: float) -> None:
    # The load runs for a fixed time around each move; there is no event to await here.
    time.sleep(seconds)


def test_promotion_and_rollback_under_load_lose_no_request(app: App, router_url: str) -> None:
    """8 clients, v1 -> v2 through the gates, then a rollback to warm v1: no failures, new version within 1 s."""
    _release(app, "1", seed=1)
    assert _prod(app).version == "1"
    load = Load(router_url)
    load.start()
    try:
        _wait(2.0)
        _release(app, "2", seed=2)  # deploy, gates (direct strategy) and the PROD flip, all under load
        promoted = _prod(app)
        assert promoted.version == "2"
        with session_scope(app.engine) as s:
            assert registry.get_version(s, MODEL, "1").state is VersionState.LIVE  # superseded, in its grace
        warm = app.serving.status(MODEL, "1")
        assert warm is not None and warm.ready, "the previous PROD must stay warm during the grace period"
        _wait(3.0)
        called = time.time()
        step = app.controller.rollback(MODEL, actor="load-test", reason="rollback under load")
        returned = time.time()
        rolled = _prod(app)
        assert step is not None and step.after is VersionState.ROLLED_BACK and rolled.version == "1"
        assert rolled.updated_at.timestamp() - called < 1.0, "a warm rollback flips the alias at once"
        _wait(3.0)
    finally:
        answers = load.stop()

    moves = [(promoted.updated_at.timestamp(), "1", "2"), (rolled.updated_at.timestamp(), "2", "1")]
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, first: {failed[:3]}"
    assert len(answers) >= 100
    first, second = moves
    before = [a for a in answers if a.ended < first[0]]
    # Whole lifetime inside the v2 phase: started > 1 s after the promotion, answered before the rollback moved PROD.
    on_two = [a for a in answers if a.started > first[0] + SETTLE_S and a.ended < second[0]]
    after = [a for a in answers if a.started > second[0] + SETTLE_S]
    assert before and on_two and after
    assert {a.version for a in before} == {"1"}
    assert {a.version for a in on_two} == {"2"}, "a request started > 1 s after the promotion got the old version"
    assert {a.version for a in after} == {"1"}, "a request started > 1 s after the rollback got the old version"
    ends = [second[0], float("inf")]
    stale = {f"->v{new}": round(max((a.started - at for a in answers if a.started > at and a.ended < end
                                     and a.version == old), default=0.0), 3)
             for (at, old, new), end in zip(moves, ends, strict=True)}
    print(f"\n{len(answers)} requests, 0 failed; rollback call {returned - called:.2f}s; "
          f"latest start answered by the old version after each move: {stale}")
