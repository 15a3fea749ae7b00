"""``release setup``, ``release deploy render`` and ``release up --only ROLE``, run as the real command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

from app import cli, stack
from monitoring.monitor import subscriptions as monitor_subscriptions
from release import registry
from release.adapters.k8s_names import object_name
from release.db import make_engine, migrate, session_scope
from tests.kubernetes.test_manifests import validate
from tests.servers.pubsub_server import PubSubServer

ROOT = Path(__file__).resolve().parents[2]
CONTROL_PLANE = ROOT / "deploy" / "k8s" / "control-plane.yaml"
PROJECT = "setup-project"
TOPICS = ["model-events", "prediction-logs", "drift-metrics", "alerts", "release-ticks"]


def _release(*args: str, env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Settings of a `release` process: its own home (SQLite store, folder bucket) and JSON logs."""
    return {**os.environ, "RELEASE_HOME": str(tmp_path / "home"), "RELEASE_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT)}


@pytest.fixture
def pubsub() -> Iterator[str]:
    """The local Pub/Sub gRPC server, ``host:port``."""
    server = PubSubServer()
    yield server.start()
    server.stop()


# ------------------------------------------------------------------------------------------------ setup
def test_setup_creates_topics_and_subscriptions_on_pubsub_twice(env: dict[str, str], pubsub: str) -> None:
    """`release setup` creates every topic, their dead letters and the consumer subscriptions; again is a no-op."""
    env = {**env, "RELEASE_BUS": "pubsub", "PUBSUB_EMULATOR_HOST": pubsub, "RELEASE_GCP_PROJECT": PROJECT}
    first = _release("setup", "--json", env=env)
    second = _release("setup", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["topics"] == TOPICS

    publisher = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(pubsub)))
    subscriber = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(pubsub)))
    try:
        topics = {t.name.rsplit("/", 1)[1] for t in publisher.list_topics(request={"project": f"projects/{PROJECT}"})}
        controller = subscriber.get_subscription(subscription=f"projects/{PROJECT}/subscriptions/controller")
        monitor = subscriber.get_subscription(subscription=f"projects/{PROJECT}/subscriptions/drift-monitor")
        kept = subscriber.get_subscription(subscription=f"projects/{PROJECT}/subscriptions/alerts-dead-letter")
    finally:
        publisher.stop()
        subscriber.close()
    assert topics == {*TOPICS, *(f"{t}-dead-letter" for t in TOPICS)}
    assert controller.topic.endswith("/topics/model-events")
    assert controller.dead_letter_policy.dead_letter_topic.endswith("/topics/model-events-dead-letter")
    assert monitor.topic.endswith("/topics/prediction-logs")
    assert kept.topic.endswith("/topics/alerts-dead-letter")


def test_setup_on_the_local_bus_migrates_and_ensures_subscriptions(env: dict[str, str], tmp_path: Path) -> None:
    """With the local bus, `release setup` migrates the SQLite store and records the subscriptions, twice."""
    assert _release("setup", env=env).returncode == 0
    again = _release("setup", "--json", env=env)
    assert again.returncode == 0, again.stderr
    wanted = ["controller", "controller-ticks", "rollbacks", *(spec.name for spec in monitor_subscriptions())]
    assert [s["name"] for s in json.loads(again.stdout)["subscriptions"]] == wanted
    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'release.db'}")
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("select name, topic from bus_subscription order by name").all()
    engine.dispose()
    assert {r[0] for r in rows} == set(wanted)
    assert ("controller", "model-events") in [tuple(r) for r in rows]


# ------------------------------------------------------------------------------------------------ deploy render
@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A version `digits/V3.0_rc` registered from a gs:// bucket in the SQLite store the CLI will open."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("RELEASE_HOME", str(home))
    monkeypatch.setenv("RELEASE_LOG_FORMAT", "json")
    engine = make_engine(f"sqlite:///{home / 'release.db'}")
    migrate(engine)
    with session_scope(engine) as s:
        registry.register_version(s, model="digits", version="V3.0_rc", digest="sha256:" + "0" * 64,
                                  artifact_uri="gs://models-bkt/models/digits/V3.0_rc", format="torchscript",
                                  manifest={}, policy={"rollout": {"replicas": 2}})
        registry.move_alias(s, model="digits", alias="STG", version="V3.0_rc", expected_revision=None,
                            actor="test", reason="test")
    engine.dispose()
    return "V3.0_rc"


def test_deploy_render_prints_schema_valid_yaml(registered: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`release deploy render` prints Deployment, Service, HPA, PodMonitoring as YAML that validates."""
    code = cli.main(["deploy", "render", "digits", registered, "--namespace", "serving", "--image", "pod:1",
                     "--gpu", "--accelerator", "nvidia-h100-80gb"])
    documents = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]

    assert code == 0
    assert [d["kind"] for d in documents] == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodMonitoring"]
    for document in documents:
        validate(document)
        assert document["metadata"]["namespace"] == "serving"
        assert document["metadata"]["name"] == object_name("digits", registered)
    deployment = documents[0]
    pod = deployment["spec"]["template"]["spec"]
    assert documents[2]["spec"]["minReplicas"] == 2  # the version policy's replicas, as the controller renders
    assert pod["containers"][0]["image"] == "pod:1"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}


def test_deploy_render_json_by_alias_without_gpu(registered: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` prints a JSON list; an alias resolves to its version; `--no-gpu` requests no GPU."""
    code = cli.main(["deploy", "render", "digits", "STG", "--json", "--no-gpu"])
    documents: list[dict[str, Any]] = json.loads(capsys.readouterr().out)

    assert code == 0
    assert documents[0]["metadata"]["annotations"]["modelrelease.dev/version"] == registered
    assert "nvidia.com/gpu" not in documents[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in documents[0]["spec"]["template"]["spec"]


def test_deploy_render_of_an_unknown_version_is_refused(registered: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Rendering a version that is not registered exits 3 with the reason, printing no manifest."""
    code = cli.main(["deploy", "render", "digits", "99"])
    captured = capsys.readouterr()
    assert code == 3
    assert captured.out == ""
    assert "not_found" in captured.err or "version" in captured.err


# ------------------------------------------------------------------------------------------------ up --only
def _declared_probes(role: str) -> list[dict[str, Any]]:
    """The probes control-plane.yaml declares for the Deployment running `up --only role`."""
    for doc in yaml.safe_load_all(CONTROL_PLANE.read_text()):
        if doc and doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            if container["args"] == ["up", "--only", role]:
                return [container[k] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in container]
    return []


def test_roles_match_between_cli_and_stack() -> None:
    """The CLI offers exactly the roles the stack can run, and every Deployment runs one of them."""
    assert cli.ROLES == stack.ROLES
    roles = [doc["spec"]["template"]["spec"]["containers"][0]["args"][2]
             for doc in yaml.safe_load_all(CONTROL_PLANE.read_text()) if doc and doc["kind"] == "Deployment"]
    assert set(roles) <= set(cli.ROLES) and _declared_probes("controller") and _declared_probes("monitor")


def _wait_for_http(url: str, proc: subprocess.Popen[bytes], *, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"`release up` exited with {proc.returncode} before listening")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)  # nothing to await: the port opens when uvicorn binds
    raise AssertionError(f"nothing listened at {url} within {timeout_s} s")


@pytest.mark.parametrize("role", cli.ROLES)
def test_each_role_starts_and_answers_its_probes(role: str, env: dict[str, str]) -> None:
    """`up --only ROLE` listens on RELEASE_PORT, answers /healthz and the probes k8s declares, exits 0 on SIGTERM."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--only", role],
                            env={**env, "RELEASE_PORT": str(port), "RELEASE_POLL_INTERVAL_S": "0.2"}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_http(base + "/healthz", proc)
        health = httpx.get(base + "/healthz", timeout=5)
        metrics = httpx.get(base + "/metrics", timeout=5)
        probes = _declared_probes(role)
        answers = []
        for probe in probes:
            if "httpGet" in probe:
                answers.append(httpx.get(base + probe["httpGet"]["path"], timeout=5).status_code)
            else:  # tcpSocket: the port accepts a connection
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    answers.append(200)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    assert health.status_code == 200, health.text
    assert health.json()["role"] == role and health.json()["ok"] is True
    assert metrics.status_code == 200 and "process_" in metrics.text
    assert answers == [200] * len(probes)
    assert code == 0, stderr[-2000:]
