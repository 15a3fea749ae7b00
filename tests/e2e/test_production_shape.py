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
  kmock runs no pods, so a small kubelet stand-in in this test watches for the version's Deployment and runs
  what it declares: the init container's copy of the artifact from the bucket, then the server container's
  own command (``python -m handlers.server`` with the rendered arguments, ``/models`` mapped to a temp folder
  and the port to a free one). When that real pod server passes the readiness probe the Deployment declares,
  the stand-in patches the Deployment's status ready, as the Deployment controller would.
* Cluster DNS: the Service URL the backend reports (``http://NAME.NS.svc.cluster.local:8080``) cannot resolve
  here, so ``ClusterDns`` wraps the serving backend and maps each Service URL to the pod process started for
  it. That mapping is the one override: the gates then send real inference requests to the real pod.

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
from kubernetes import client, watch
from sqlalchemy.engine import Engine
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from release import journal, registry
from release.adapters.k8s_manifests import ServingOptions
from release.adapters.k8s_names import object_name
from release.adapters.kubernetes_serving import KubernetesServingBackend
from release.bootstrap import CONTROLLER_SUBSCRIPTION, App, bootstrap
from release.db import session_scope
from release.ports import DeploymentSpec, DeploymentStatus, ServingBackend
from release.settings import Settings
from release.worker import Consumer
from schemas.states import VersionState
from tests.artifacts import DigitsMLP, manifest_for, npz_bytes, torchscript_bytes
from tests.conftest import _pg_schema_engine
from tests.servers.functions import start_function
from tests.servers.gcs_server import GcsServer, free_port
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
    schema = _pg_schema_engine(postgres_url)
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


# ------------------------------------------------------------------------------------------------ the cluster
class Kubelet:
    """Runs the pods kmock cannot: for each new Deployment, its init container's copy and its server command."""

    def __init__(self, *, api: client.ApiClient, bucket: storage.Bucket, root: Path) -> None:
        self._api = api
        self._apps = client.AppsV1Api(api)
        self._bucket = bucket
        self._root = root
        self._stop = threading.Event()
        self._pods: dict[str, subprocess.Popen[bytes]] = {}
        self.addresses: dict[str, str] = {}  # Deployment name -> http://127.0.0.1:PORT
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for pod in self._pods.values():
            pod.send_signal(signal.SIGTERM)
        for pod in self._pods.values():
            try:
                pod.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pod.kill()

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = watch.Watch().stream(self._apps.list_namespaced_deployment, NAMESPACE,
                                          _request_timeout=(5, 1))
            try:
                for event in stream:
                    deployment = self._api.sanitize_for_serialization(event["object"])
                    if event["type"] != "DELETED" and deployment["metadata"]["name"] not in self._pods:
                        self._start(deployment)
                    if self._stop.is_set():
                        return
            except (ReadTimeoutError, ProtocolError):
                continue  # the read timeout ends one window of the watch (kmock ignores watch timeouts)
            except Exception as e:  # reported by the test instead of dying silently in this thread
                self.errors.append(e)
                return

    def _start(self, deployment: dict[str, Any]) -> None:
        name: str = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        root = self._root / name
        mapped = {"/models": str(root / "models"), "/tmp": str(root / "tmp")}

        def local(value: str) -> str:
            for pod_path, here in mapped.items():
                if value == pod_path or value.startswith(pod_path + "/"):
                    return here + value[len(pod_path):]
            return value

        # The init container: `gcloud storage rsync SOURCE DEST` of the artifact's prefix.
        source, dest = pod["initContainers"][0]["command"][-2:]
        prefix = source.removeprefix(f"gs://{BUCKET}/").rstrip("/") + "/"
        for blob in self._bucket.list_blobs(prefix=prefix):
            target = Path(local(dest)) / blob.name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target))
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        # The server container, with its own command and arguments; only addresses and mounts differ.
        server = pod["containers"][0]
        port = free_port()
        args = [local(a) for a in server["args"]]
        args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
        env = {**os.environ, **{e["name"]: local(e["value"]) for e in server["env"]}, "PYTHONPATH": str(ROOT)}
        with (root / "server.log").open("wb") as log:
            self._pods[name] = subprocess.Popen([sys.executable, *server["command"][1:], *args], env=env, cwd=ROOT,
                                                stdout=log, stderr=subprocess.STDOUT)
        address = f"http://127.0.0.1:{port}"
        # The readiness probe the Deployment declares, run the way the kubelet runs it.
        probe = server["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + 120
        while not self._ready(address + probe):
            if self._pods[name].poll() is not None or time.monotonic() > deadline:
                self.errors.append(RuntimeError(f"pod {name} never ready: {(root / 'server.log').read_text()}"))
                return
            self._stop.wait(0.2)  # the probe's period: readiness is only known by asking
        self.addresses[name] = address
        # What the Deployment controller would report once the pod is ready.
        self._apps.patch_namespaced_deployment_status(name, NAMESPACE, {
            "metadata": {"generation": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                       "availableReplicas": 1}})

    @staticmethod
    def _ready(url: str) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False


@dataclasses.dataclass
class ClusterDns:
    """The serving backend with cluster DNS: each Service URL it reports maps to the pod process serving it."""

    backend: ServingBackend
    kubelet: Kubelet

    @property
    def name(self) -> str:
        """The wrapped backend's name (stored with deployments)."""
        return self.backend.name

    def deploy(self, spec: DeploymentSpec) -> DeploymentStatus:
        """Apply through the real backend."""
        return self._resolve(self.backend.deploy(spec))

    def wait_ready(self, spec: DeploymentSpec, *, timeout_s: float) -> DeploymentStatus:
        """Watch through the real backend."""
        return self._resolve(self.backend.wait_ready(spec, timeout_s=timeout_s))

    def status(self, model: str, version: str) -> DeploymentStatus | None:
        """Read through the real backend."""
        status = self.backend.status(model, version)
        return None if status is None else self._resolve(status)

    def retire(self, model: str, version: str) -> None:
        """Delete through the real backend."""
        self.backend.retire(model, version)

    def close(self) -> None:
        """Close the real backend."""
        self.backend.close()

    def _resolve(self, status: DeploymentStatus) -> DeploymentStatus:
        pod = self.kubelet.addresses.get(object_name(status.model, status.version))
        return status if pod is None else dataclasses.replace(status, endpoints=(pod,))


# ------------------------------------------------------------------------------------------------ helpers
def _upload_model(bucket: storage.Bucket) -> None:
    """A TorchScript digits model with an eval set it classifies correctly, its policy, the manifest last."""
    torch.manual_seed(0)
    model = DigitsMLP().eval()
    x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(dim=1).numpy().astype(np.int64)
    files = {"model.pt": torchscript_bytes(model), "eval.npz": npz_bytes(x=x, y=y)}
    manifest = manifest_for(MODEL, VERSION, files, eval="eval.npz")
    bucket.blob(f"policies/{MODEL}.json").upload_from_string(json.dumps(POLICY), content_type="application/json")
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
            if seen[-1] in ("rollout.failed", "release.rolled_back"):
                raise AssertionError(f"the release failed: {event['data']}")
            if seen[-1] == "gates.evaluated" and not event["data"]["passed"]:
                raise AssertionError(f"gates failed: {json.dumps(event['data']['report'])[:2000]}")
    raise AssertionError(f"PROD did not move within {timeout_s} s; events seen: {seen}")


# ------------------------------------------------------------------------------------------------ the test
@pytest.mark.slow
@pytest.mark.postgres
def test_upload_to_live_through_gcs_function_pubsub_postgres_and_kubernetes(
        env: dict[str, str], tmp_path: Path, gcs: tuple[GcsServer, storage.Bucket], pubsub: str,
        postgres: tuple[Engine, str], kube: str) -> None:
    """A model uploaded to the bucket goes LIVE behind PROD: function intake, Pub/Sub, PostgreSQL, kmock, real gates."""
    _, bucket = gcs
    setup = subprocess.run([sys.executable, "-m", "release.cli", "setup", "--json"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
    assert setup.returncode == 0, setup.stderr
    subscriber = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(pubsub)))
    observer = f"projects/{PROJECT}/subscriptions/e2e-observer"
    subscriber.create_subscription(request={"name": observer, "topic": f"projects/{PROJECT}/topics/model-events"})

    function, function_url = _start_function(env, tmp_path)
    app: App = bootstrap(Settings())
    api = client.ApiClient(client.Configuration(host=kube))
    stop = threading.Event()
    try:
        with Kubelet(api=api, bucket=bucket, root=tmp_path / "pods") as kubelet:
            # The controller of `release up --only controller`, with cluster DNS for the Service URLs.
            backend = KubernetesServingBackend(namespace=app.settings.k8s_namespace, kubeconfig=env["KUBECONFIG"],
                                               options=ServingOptions(image=app.settings.k8s_image))
            app = dataclasses.replace(app, _serving=ClusterDns(backend=backend, kubelet=kubelet))
            app.ensure_subscriptions()
            consumer = Consumer(bus=app.bus, subscription=CONTROLLER_SUBSCRIPTION, handler=app.controller.handle)
            controller = threading.Thread(target=consumer.run, args=(stop,), name="controller", daemon=True)
            controller.start()

            _upload_model(bucket)
            answer = _eventarc_post(function_url, bucket.blob(f"models/{MODEL}/{VERSION}/manifest.json"))
            assert answer.status_code == 200, answer.text

            seen = _await_prod(subscriber, observer, kubelet, timeout_s=240)
            stop.set()
            controller.join(timeout=30)

            name = object_name(MODEL, VERSION)
            objects: dict[str, Any] = {
                "Deployment": client.AppsV1Api(api).read_namespaced_deployment(name, NAMESPACE),
                "Service": client.CoreV1Api(api).read_namespaced_service(name, NAMESPACE),
                "HorizontalPodAutoscaler": client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(
                    name, NAMESPACE),
            }
    finally:
        stop.set()
        app.close()
        api.close()
        subscriber.close()
        function.send_signal(signal.SIGTERM)
        function.wait(timeout=15)

    engine = postgres[0]
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

