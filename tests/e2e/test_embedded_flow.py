"""The whole flow on the embedded default: bucket folder, intake, local bus, controller, real pods, real models.

Every test drops artifacts into the bucket folder of its own ``RELEASE_HOME`` the way a user would, runs intake
and drains the controller's subscription in-process (what ``release run --until-idle`` does), and checks the
outcome in the registry, the event journal and the ``release`` command's JSON output. Pods are real
``python -m handlers.server`` processes serving TorchScript digits classifiers trained here in a second.
Issue 4's "must show" list: a better version is promoted, a regressed one is rejected with its gate report,
a version whose pods never load ends FAILED with the pod's log, and a canary that breaches its error budget
rolls back by itself while traffic flows through the router.
"""

from __future__ import annotations

import functools
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_digits

from app.cli import main as release_main
from release import journal, policies, registry
from release.bootstrap import App, bootstrap
from release.db import session_scope
from release.registry import VersionView
from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, build_router_app
from release.settings import Settings
from release.worker import Consumer, run_until_idle
from schemas.policy import ReleasePolicy
from schemas.states import VersionState
from tests.artifacts import DigitsMLP, manifest_for, npz_bytes, torchscript_bytes, write_artifact
from tests.servers.in_thread import serve_in_thread

pytestmark = pytest.mark.slow

MODEL = "digits"
_DIGITS = load_digits()
RAW: np.ndarray = _DIGITS.data.astype(np.float32)  # pixel intensities 0..16, as a careless client sends them
X: np.ndarray = RAW / 16.0  # what every model here is trained on
Y: np.ndarray = _DIGITS.target.astype(np.int64)
_ORDER = np.random.default_rng(0).permutation(len(X))
TRAIN, HELD = _ORDER[:1200], _ORDER[1200:]
#: Gates and rollout kept quick for two shared cores: a short latency load, a generous p99 budget.
FAST: dict[str, Any] = {
    "gates": {"latency": {"requests": 40, "concurrency": 2, "p99_ms": 5000}},
    "rollout": {"ready_timeout_s": 60},
}
#: A tabular handler that only accepts normalised pixels: raw 0..16 inputs make it raise (the pod answers 500).
STRICT_HANDLER = '''
"""Tabular digits handler of v2: assumes inputs in [0, 1] and crashes on anything else."""
from handlers.builtin.tabular import TabularHandler


class StrictTabular(TabularHandler):
    def preprocess(self, batch):
        for request in batch:
            if any(float(array.max()) > 1.0 for array in request.inputs.values()):
                raise RuntimeError("pixel values above 1.0: this model expects normalised inputs")
        return super().preprocess(batch)
'''


# ------------------------------------------------------------------------------------------------ models
@functools.cache
def trained(kind: str) -> bytes:
    """TorchScript bytes of a digits classifier: ``baseline``, ``better`` or ``regressed`` (shuffled labels)."""
    hidden, epochs, seed = {"baseline": (16, 40, 1), "better": (64, 150, 2), "regressed": (64, 150, 3)}[kind]
    labels = Y[TRAIN]
    if kind == "regressed":
        labels = np.random.default_rng(seed).permutation(labels)
    torch.manual_seed(seed)
    model = DigitsMLP(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.tensor(X[TRAIN]), torch.tensor(labels)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(model(xt) + 1e-9), yt)
        loss.backward()
        optimizer.step()
    return torchscript_bytes(model)


def held_out_accuracy(kind: str) -> float:
    """Accuracy of a ``trained`` model on the held-out rows (computed here, not by the system under test)."""
    module = torch.jit.load(io.BytesIO(trained(kind)))
    with torch.no_grad():
        return float((module(torch.tensor(X[HELD])).argmax(1).numpy() == Y[HELD]).mean())


def drop(bucket: Path, version: str, model_bytes: bytes, *, handler: str | None = None) -> dict[str, Any]:
    """Upload a digits version: weights, eval set, reference sample, optional handler code; manifest last."""
    files = {"model.pt": model_bytes, "eval.npz": npz_bytes(x=X[HELD], y=Y[HELD]),
             "reference.npz": npz_bytes(x=X[TRAIN][:500])}
    overrides: dict[str, Any] = {"eval": "eval.npz", "reference": "reference.npz"}
    if handler is not None:
        files["strict_handler.py"] = handler.encode()
        overrides["handler"] = "strict_handler.py"
    return write_artifact(bucket, MODEL, version, files, manifest_for(MODEL, version, files, **overrides))


def put_policy(app: App, policy: dict[str, Any]) -> None:
    """The operator sets digits' policy (as `release policy set` does): versions registered afterwards carry it."""
    with session_scope(app.engine) as s:
        policies.set_policy(s, model=MODEL, policy=ReleasePolicy.model_validate(policy), actor="operator",
                            reason="test")


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """Policies merged section by section (later parts win)."""
    out: dict[str, Any] = {}
    for part in parts:
        for section, values in part.items():
            out[section] = {**out.get(section, {}), **values}
    return out


# ------------------------------------------------------------------------------------------------ the app
@contextmanager
def embedded_app(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The embedded app under ``home`` (RELEASE_HOME, so in-process ``release`` commands share it); closed after."""
    for name in ("RELEASE_BUCKET", "RELEASE_DB_URL", "RELEASE_BUS", "RELEASE_SERVING", "RELEASE_POLICY_JSON",
                 "RELEASE_FAULT_CRASH_AT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RELEASE_HOME", str(home))
    monkeypatch.setenv("RELEASE_LOG_FORMAT", "console")
    monkeypatch.setenv("RELEASE_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("RELEASE_GPU", "off")
    application = bootstrap(Settings())
    application.ensure_subscriptions()
    try:
        yield application
    finally:
        application.close()  # stops every pod it started


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """A fresh embedded app for one test."""
    with embedded_app(tmp_path / "home", monkeypatch) as application:
        yield application


def bucket_of(app: App) -> Path:
    """The bucket folder of the embedded app."""
    return Path(app.settings.bucket_location)


def drain(app: App, *extra: Consumer) -> int:
    """Intake everything in the bucket, then consume the controller's (and ``extra``) subscriptions until idle."""
    app.intake.reconcile(final=True)
    app.ensure_subscriptions()
    return run_until_idle([*app.release_consumers(), *extra], bus=app.bus)


def version(app: App, ref: str) -> VersionView:
    """A version of the digits model as the registry has it now."""
    with session_scope(app.engine) as s:
        return registry.get_version(s, MODEL, ref)


def prod(app: App) -> str | None:
    """The version PROD points at."""
    with session_scope(app.engine) as s:
        alias = registry.find_alias(s, MODEL, "PROD")
    return alias.version if alias is not None else None


def event_types(app: App) -> list[str]:
    """Journalled event types, short form, oldest first."""
    with session_scope(app.engine) as s:
        return [r.type.removeprefix("dev.modelrelease.").removesuffix(".v1")
                for r in journal.recent(s, limit=100_000)]


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """Run ``release ARGV --json`` in-process (settings from the environment) and parse what it printed."""
    capsys.readouterr()
    assert release_main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------------------ the router
@dataclass
class RouterProcess:
    """The router served on a free port in this process, with its prediction logger."""

    url: str
    logger: PredictionLogger
    metrics: RouterMetrics

    def routed(self, version_: str) -> float:
        """Requests the router has sent to ``version_`` so far (any status)."""
        total = 0.0
        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "router_requests_total" and sample.labels.get("version") == version_:
                    total += sample.value
        return total


@contextmanager
def serving_router(app: App) -> Iterator[RouterProcess]:
    """Serve the router with uvicorn in a thread (as ``release up`` does), logging predictions to the bus."""
    metrics = RouterMetrics(CollectorRegistry())
    logger = PredictionLogger(engine=app.engine, bus=app.bus, dropped=metrics.dropped, interval_s=0.1)
    logger.start()
    router = Router(table=RouteTable(engine=app.engine), logger=logger, metrics=metrics)
    try:
        with serve_in_thread(build_router_app(router), name="router") as url:
            yield RouterProcess(url=url, logger=logger, metrics=metrics)
    finally:
        logger.close()


def infer_body(rows: np.ndarray) -> dict[str, Any]:
    """An Open Inference Protocol request for ``rows`` [n, 64]."""
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.reshape(-1).tolist()}]}


@dataclass
class Traffic:
    """A background client sending single-row requests to PROD until stopped; remembers who answered."""

    url: str
    rows: np.ndarray
    answers: list[tuple[float, str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sending."""
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                started = time.monotonic()
                response = client.post(f"/v2/models/{MODEL}/infer",
                                       json=infer_body(self.rows[i % len(self.rows)][None, :]))
                self.answers.append((started, response.headers.get("x-model-version", "-"), response.status_code))
                i += 1

    def wait_for(self, count: int, *, after: float, timeout_s: float = 30.0) -> None:
        """Block until ``count`` requests started after ``after`` were answered."""
        deadline = time.monotonic() + timeout_s
        while sum(1 for t, _, _ in list(self.answers) if t > after) < count:
            assert time.monotonic() < deadline, f"traffic stalled: {len(self.answers)} answers"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop sending and wait for the last request."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


# ------------------------------------------------------------------------------------------------ tests
def test_better_version_is_promoted(app: App) -> None:
    """v1 goes LIVE as the first PROD; a better v2 passes every gate, goes LIVE and takes PROD."""
    assert held_out_accuracy("better") > held_out_accuracy("baseline")
    bucket = bucket_of(app)
    put_policy(app, FAST)
    drop(bucket, "1", trained("baseline"))
    drain(app)
    assert version(app, "1").state is VersionState.LIVE and prod(app) == "1"

    drop(bucket, "2", trained("better"))
    drain(app)
    v2 = version(app, "2")
    assert v2.state is VersionState.LIVE, v2.state_reason
    assert prod(app) == "2"
    with session_scope(app.engine) as s:
        report = registry.latest_gate_report(s, v2.id)
    assert report is not None and report["passed"] and report["baseline_version"] == "1"
    assert {g["name"] for g in report["gates"]} >= {"metric:accuracy", "regression:accuracy", "smoke", "error_rate"}
    types = event_types(app)
    assert types.count("model.registered") == 2 and types.count("gates.evaluated") == 2
    assert "alias.moved" in types


def test_regressed_version_is_rejected_with_its_gate_report(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    """A version trained on shuffled labels is REJECTED; its report and `release show --json` name the failed gates."""
    bucket = bucket_of(app)
    put_policy(app, FAST)
    drop(bucket, "1", trained("baseline"))
    drain(app)
    drop(bucket, "2", trained("regressed"))
    drain(app)

    v2 = version(app, "2")
    assert v2.state is VersionState.REJECTED
    assert prod(app) == "1"
    with session_scope(app.engine) as s:
        report = registry.latest_gate_report(s, v2.id)
    assert report is not None and not report["passed"]
    failed = {g["name"] for g in report["gates"] if not g["passed"]}
    assert {"metric:accuracy", "regression:accuracy"} <= failed
    assert "metric:accuracy" in (v2.state_reason or "") and "regression:accuracy" in (v2.state_reason or "")
    assert app.serving.status(MODEL, "2") is None  # a rejected version's pods are gone

    shown = cli_json(capsys, "show", MODEL, "2")
    assert shown["version"]["state"] == "REJECTED"
    assert {g["name"] for g in shown["gate_report"]["gates"] if not g["passed"]} == failed
    assert shown["gate_report"]["baseline_version"] == "1"


def test_pods_that_never_load_end_failed_with_their_log(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    """Garbage TorchScript bytes with a correct manifest pass intake, then the rollout FAILS with the pod's error."""
    bucket = bucket_of(app)
    put_policy(app, merged(FAST, {"rollout": {"ready_timeout_s": 20}}))
    drop(bucket, "1", b"this is not a TorchScript archive" * 32)
    drain(app)

    v1 = version(app, "1")
    assert v1.state is VersionState.FAILED
    assert "rollout failed" in (v1.state_reason or "")
    with session_scope(app.engine) as s:
        deployment = registry.get_deployment(s, v1.id)
        failed = [r.envelope["data"] for r in journal.recent(s, limit=1000)
                  if r.type.endswith("rollout.failed.v1")]
    assert deployment is not None and deployment.status == "failed"
    assert "pod.load_failed" in deployment.log_excerpt
    assert "not a loadable TorchScript module" in deployment.log_excerpt
    assert len(failed) == 1 and "not a loadable TorchScript module" in failed[0]["log_excerpt"]
    assert prod(app) is None and app.serving.status(MODEL, "1") is None

    shown = cli_json(capsys, "show", MODEL, "1")
    assert shown["deployment"]["status"] == "failed"
    assert "not a loadable TorchScript module" in shown["deployment"]["log_excerpt"]


def test_canary_breaching_its_error_budget_rolls_back(app: App) -> None:
    """v2 answers 500 to half of PROD traffic during its canary step; it is ROLLED_BACK and v1 keeps PROD."""
    bucket = bucket_of(app)
    # Both steps are watched: however slow the machine, v2 cannot reach PROD without being judged.
    canary = {"rollout": {"strategy": "canary", "min_requests": 3, "max_error_rate": 0.05,
                          "steps": [{"weight": 50, "watch_s": 3}, {"weight": 100, "watch_s": 2}]}}
    put_policy(app, merged(FAST, canary))
    drop(bucket, "1", trained("baseline"))
    drain(app)
    assert prod(app) == "1"

    with serving_router(app) as router:
        traffic = Traffic(url=router.url, rows=RAW[HELD])
        traffic.start()
        try:
            traffic.wait_for(5, after=0.0)
            drop(bucket, "2", trained("better"), handler=STRICT_HANDLER)
            drain(app)
            settled = time.monotonic()
            routed_to_v2 = router.routed("2")
            traffic.wait_for(30, after=settled)
        finally:
            traffic.stop()

        v2 = version(app, "2")
        assert v2.state is VersionState.ROLLED_BACK, v2.state_reason
        assert "error rate" in (v2.state_reason or "")
        assert prod(app) == "1"
        assert "release.rolled_back" in event_types(app)
        during = [(who, code) for t, who, code in traffic.answers if t < settled]
        assert ("2", 500) in during  # the canary really took traffic, and failed it
        after = [(who, code) for t, who, code in traffic.answers if t > settled]
        assert after and set(after) == {("1", 200)}
        assert router.routed("2") == routed_to_v2  # nothing reached v2 once the controller settled
        with session_scope(app.engine) as s:
            assert registry.route_weights(s, MODEL).get("2", 0) == 0
    assert app.serving.status(MODEL, "2") is None
