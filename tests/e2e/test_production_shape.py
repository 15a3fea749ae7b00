"""End to end in the production shape, on one machine and without a cloud account.

What runs, and what stands in for Google Cloud:

* Cloud Storage: fake-gcs-server; the model and its policy are uploaded with the real storage client.
* Eventarc: the test POSTs the object-finalized CloudEvent in binary mode, exactly as Eventarc delivers it, to a
  real ``functions-framework`` process serving ``functions/main.py:on_storage_event``.
* Cloud SQL: a fresh schema on the real PostgreSQL server; every process shares it.
* Pub/Sub: the local gRPC server (``tests/servers/pubsub_server.py``); ``release setup`` creates the topics and
  subscriptions first, as in a deployment. The function only journals ``model.registered`` (transactional
  outbox); the controller's consumer loop relays the journal to Pub/Sub before every pull, so the event
  reaches the controller through the real adapter.
* GKE: kmock behind the real ``kubernetes`` client and the real serving backend (configured by a kubeconfig
  file, as outside a cluster).
  kmock runs no pods, so a small kubelet stand-in (``Kubelet`` in ``tests/e2e/kmock_cluster.py``) watches for
  the version's Deployment and runs what it declares: the init container's copy of the artifact from the
  bucket, then the server container's own command (``python -m handlers.server`` with the rendered arguments,
  ``/models`` mapped to a temp folder and the port to a free one). When that real pod server passes the
  readiness probe the Deployment declares, the stand-in patches the Deployment's status ready, as the
  Deployment controller would.
* Cluster DNS: the Service URL the backend reports (``http://NAME.NS.svc.cluster.local:8080``) cannot resolve
  here, so ``ClusterDns`` (same module) wraps the serving backend and maps each Service URL to the pod process
  started for it. That mapping is the one override: the gates then send real inference requests to the real pod.

The controller runs in the test process: ``bootstrap`` with ``RELEASE_SERVING=kubernetes`` builds it, the
backend being the one ``bootstrap`` makes, given the kubeconfig file and wrapped in ``ClusterDns``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport
from kubernetes import client
from sqlalchemy.engine import Engine

from release import journal, registry
from release.adapters.k8s_manifests import ServingOptions
from release.adapters.k8s_names import object_name
from release.adapters.kubernetes_serving import KubernetesServingBackend
from release.bootstrap import CONTROLLER_SUBSCRIPTION, App, bootstrap
from release.db import session_scope
from release.settings import Settings
from release.worker import Consumer
from schemas.states import VersionState
from tests.artifacts import DigitsMLP, manifest_for, npz_bytes, torchscript_bytes
from tests.conftest import pg_schema_engine
from tests.e2e.kmock_cluster import ClusterDns, Kubelet
from tests.servers.functions import start_function
from tests.servers.gcs_server import GcsServer
from tests.servers.kube_server import running_kube
from tests.servers.pubsub_server import PubSubServer

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((ROOT / "tests/data/events/storage_finalized_binary.json").read_text())
PROJECT = "e2e-project"
BUCKET = "models-e2e"
NAMESPACE = "model-release"
MODEL, VERSION = "digits", "1"
POLICY = {
    "gates": {"metrics": [{"metric": "accuracy", "min": 0.9}],
              "latency": {"requests": 20, "concurrency": 2, "p99_ms": 5000}},
    "rollout": {"strategy": "direct", "ready_timeout_s": 120},
}


# ------------------------------------------------------------------------------------------------ emulators
@pytest.fixture
def kube() -> Iterator[str]:
    """kmock on 127.0.0.1 knowing the kinds the serving backend manages; yields its URL."""
    with running_kube() as server:
        yield server.url


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[tuple[Engine, str]]:
    """A fresh, empty schema on the real PostgreSQL server (migrated by `release setup`)."""
    schema = pg_schema_engine(postgres_url)
    yield next(schema)
    schema.close()  # type: ignore[attr-defined]  # a generator, typed as the Iterator it yields from


@pytest.fixture
def pubsub() -> Iterator[str]:
    """The local Pub/Sub gRPC server; ``host:port``."""
    server = PubSubServer()
    yield server.start()
    server.stop()


@pytest.fixture
def gcs(tmp_path: Path) -> Iterator[tuple[GcsServer, storage.Bucket]]:
    """fake-gcs-server with the models bucket created through the real client."""
    server = GcsServer(root=tmp_path / "gcs")
    server.start()
    gcs_client = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": server.url})
    yield server, gcs_client.create_bucket(BUCKET)
    server.stop()


@pytest.fixture
def env(tmp_path: Path, postgres: tuple[Engine, str], pubsub: str, gcs: tuple[GcsServer, storage.Bucket],
        kube: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The production settings, pointed at the local stand-ins; also set in this process for the controller."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": kube}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}))
    values = {
        "RELEASE_HOME": str(tmp_path / "controller-home"), "RELEASE_BUCKET": f"gs://{BUCKET}",
        "RELEASE_DB_URL": postgres[1], "RELEASE_BUS": "pubsub", "RELEASE_GCP_PROJECT": PROJECT,
        "RELEASE_SERVING": "kubernetes", "RELEASE_K8S_NAMESPACE": NAMESPACE, "RELEASE_LOG_FORMAT": "json",
        "STORAGE_EMULATOR_HOST": gcs[0].url, "PUBSUB_EMULATOR_HOST": pubsub, "KUBECONFIG": str(kubeconfig),
    }
    # The kubernetes client reads KUBECONFIG when first imported, so in this process the controller's backend
    # gets the file explicitly (see the test); processes started from here read the variable.
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values, "PYTHONPATH": str(ROOT)}


# ------------------------------------------------------------------------------------------------ helpers
def _upload_model(bucket: storage.Bucket) -> None:
    """A TorchScript digits model with an eval set it classifies correctly, the manifest last."""
    torch.manual_seed(0)
    model = DigitsMLP().eval()
    x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(dim=1).numpy().astype(np.int64)
    files = {"model.pt": torchscript_bytes(model), "eval.npz": npz_bytes(x=x, y=y)}
    manifest = manifest_for(MODEL, VERSION, files, eval="eval.npz")
    for name, data in files.items():
        bucket.blob(f"models/{MODEL}/{VERSION}/{name}").upload_from_string(data)
    bucket.blob(f"models/{MODEL}/{VERSION}/manifest.json").upload_from_string(json.dumps(manifest),
                                                                              content_type="application/json")


def _eventarc_post(url: str, blob: storage.Blob) -> httpx.Response:
    """The object-finalized CloudEvent in binary mode: ce-* headers, the object resource as the JSON body."""
    blob.reload()
    headers = dict(GOLDEN["headers"], **{
        "ce-id": f"{blob.generation}-e2e", "ce-subject": f"objects/{blob.name}",
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{BUCKET}"})
    data = {"kind": "storage#object", **blob._properties}  # the JSON API resource, as Eventarc forwards it
    return httpx.post(url, headers=headers, content=json.dumps(data), timeout=120)


def _start_function(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    return start_function("on_storage_event", "cloudevent", log=tmp_path / "function.log",
                          env={**env, "RELEASE_HOME": str(tmp_path / "function-home")})


def _await_prod(subscriber: pubsub_v1.SubscriberClient, subscription: str, kubelet: Kubelet, *,
                timeout_s: float) -> list[str]:
    """Pull model-events (the server holds each pull open) until PROD moves; returns the event types seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert not kubelet.errors, kubelet.errors
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 50}, timeout=10)
        if not response.received_messages:
            continue
        subscriber.acknowledge(request={"subscription": subscription,
                                        "ack_ids": [m.ack_id for m in response.received_messages]})
        for received in response.received_messages:
            event = json.loads(received.message.data)
            seen.append(event["type"].removeprefix("dev.modelrelease.").removesuffix(".v1"))
            if seen[-1] == "alias.moved" and event["data"]["alias"] == "PROD":
                return seen
            if seen[-1] in ("rollout.failed", "release.rolled_back", "artifact.rejected"):
                raise AssertionError(f"the release failed: {event['data']}")
            if seen[-1] == "gates.evaluated" and not event["data"]["passed"]:
                raise AssertionError(f"gates failed: {json.dumps(event['data']['report'])[:2000]}")
    raise AssertionError(f"PROD did not move within {timeout_s} s; events seen: {seen}")


def _release_setup(env: dict[str, str], tmp_path: Path) -> None:
    """``release setup`` as a deployment runs it (migrations, topics, subscriptions), then the operator's policy
    for the model with ``release policy set``."""
    setup = subprocess.run([sys.executable, "-m", "app.cli", "setup", "--json"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
    assert setup.returncode == 0, setup.stderr
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    operator = subprocess.run([sys.executable, "-m", "app.cli", "policy", "set", MODEL, str(policy), "--reason",
                               "onboarding"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
                              check=False)
    assert operator.returncode == 0, operator.stderr


def _observe_model_events(pubsub: str) -> tuple[pubsub_v1.SubscriberClient, str]:
    """A subscriber client and a subscription of its own on model-events, to see what goes over Pub/Sub."""
    subscriber = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(pubsub)))
    observer = f"projects/{PROJECT}/subscriptions/e2e-observer"
    subscriber.create_subscription(request={"name": observer, "topic": f"projects/{PROJECT}/topics/model-events"})
    return subscriber, observer


def _with_cluster_dns(app: App, kubelet: Kubelet, *, kubeconfig: str) -> App:
    """``app`` with the real Kubernetes backend, given the kubeconfig file, behind ``ClusterDns``."""
    backend = KubernetesServingBackend(namespace=app.settings.k8s_namespace, kubeconfig=kubeconfig,
                                       options=ServingOptions(image=app.settings.k8s_image))
    return dataclasses.replace(app, _serving=ClusterDns(backend=backend, kubelet=kubelet))


def _start_controller(app: App, stop: threading.Event) -> threading.Thread:
    """The controller of ``release up --only controller``: its consumer loop on a thread until ``stop``."""
    app.ensure_subscriptions()
    consumer = Consumer(bus=app.bus, subscription=CONTROLLER_SUBSCRIPTION, handler=app.controller.handle)
    controller = threading.Thread(target=consumer.run, args=(stop,), name="controller", daemon=True)
    controller.start()
    return controller


def _served_objects(api: client.ApiClient) -> dict[str, Any]:
    """The version's Deployment, Service and HorizontalPodAutoscaler as the API server holds them."""
    name = object_name(MODEL, VERSION)
    return {
        "Deployment": client.AppsV1Api(api).read_namespaced_deployment(name, NAMESPACE),
        "Service": client.CoreV1Api(api).read_namespaced_service(name, NAMESPACE),
        "HorizontalPodAutoscaler": client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(
            name, NAMESPACE),
    }


def _assert_live(engine: Engine, *, seen: list[str], objects: dict[str, Any]) -> None:
    """The version is LIVE behind PROD with passing gates, its events in order in the journal and on Pub/Sub."""
    with session_scope(engine) as s:
        version = registry.get_version(s, MODEL, VERSION)
        prod = registry.find_alias(s, MODEL, "PROD")
        report = registry.latest_gate_report(s, version.id)
        types = [r.type.removeprefix("dev.modelrelease.").removesuffix(".v1")
                 for r in journal.recent(s, limit=200, model=MODEL)]
    assert version.state is VersionState.LIVE
    assert version.artifact_uri.rstrip("/") == f"gs://{BUCKET}/models/{MODEL}/{VERSION}"
    assert prod is not None and prod.version == VERSION
    assert report is not None and report["passed"] and report["metrics"]["accuracy"] == 1.0
    for expected in ("model.registered", "rollout.ready", "gates.evaluated", "alias.moved"):
        assert expected in types, types
        assert expected in seen, seen  # and each went over Pub/Sub
    assert types.index("model.registered") < types.index("rollout.ready") < types.index("gates.evaluated")
    assert all(o.metadata.annotations["modelrelease.dev/version"] == VERSION for o in objects.values())


# ------------------------------------------------------------------------------------------------ the test
@pytest.mark.slow
@pytest.mark.postgres
def test_upload_to_live_through_gcs_function_pubsub_postgres_and_kubernetes(
        env: dict[str, str], tmp_path: Path, gcs: tuple[GcsServer, storage.Bucket], pubsub: str,
        postgres: tuple[Engine, str], kube: str) -> None:
    """A model uploaded to the bucket goes LIVE behind PROD: function intake, Pub/Sub, PostgreSQL, kmock, real gates."""
    _, bucket = gcs
    _release_setup(env, tmp_path)
    subscriber, observer = _observe_model_events(pubsub)

    function, function_url = _start_function(env, tmp_path)
    app: App = bootstrap(Settings())
    api = client.ApiClient(client.Configuration(host=kube))
    stop = threading.Event()
    try:
        with Kubelet(api=api, namespace=NAMESPACE, bucket=bucket, root=tmp_path / "pods") as kubelet:
            app = _with_cluster_dns(app, kubelet, kubeconfig=env["KUBECONFIG"])
            controller = _start_controller(app, stop)

            _upload_model(bucket)
            answer = _eventarc_post(function_url, bucket.blob(f"models/{MODEL}/{VERSION}/manifest.json"))
            assert answer.status_code == 200, answer.text

            seen = _await_prod(subscriber, observer, kubelet, timeout_s=240)
            stop.set()
            controller.join(timeout=30)
            objects = _served_objects(api)
    finally:
        stop.set()
        app.close()
        api.close()
        subscriber.close()
        function.send_signal(signal.SIGTERM)
        function.wait(timeout=15)

    _assert_live(postgres[0], seen=seen, objects=objects)
