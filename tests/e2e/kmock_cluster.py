"""What a GKE cluster does that kmock does not: run the pods of a Deployment, and resolve Service names.

``Kubelet`` watches for new Deployments and runs what each declares: the init container's copy of the
artifact from the bucket, then the server container's own command (``python -m handlers.server`` with the
rendered arguments, ``/models`` and ``/tmp`` mapped to a temp folder, the port to a free one). When that real
pod server passes the readiness probe the Deployment declares, it patches the Deployment's status ready, as
the Deployment controller would. ``ClusterDns`` wraps a serving backend and maps each Service URL it reports
to the pod process started for it. ``test_production_shape`` uses both; nothing else is faked.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from google.cloud import storage
from kubernetes import client, watch
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from release.adapters.k8s_names import object_name
from release.ports import DeploymentSpec, DeploymentStatus, ServingBackend
from tests.servers.gcs_server import free_port

ROOT = Path(__file__).resolve().parents[2]


class Kubelet:
    """Runs the pods kmock cannot: for each new Deployment, its init container's copy and its server command."""

    def __init__(self, *, api: client.ApiClient, namespace: str, bucket: storage.Bucket, root: Path) -> None:
        self._api = api
        self._namespace = namespace
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
            stream = watch.Watch().stream(self._apps.list_namespaced_deployment, self._namespace,
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

        # The init container: its script's positional parameters are SOURCE DEST, then (file, generation) pairs
        # when registration recorded generations: each object is copied at that generation, as `gs://...#GEN`.
        command = pod["initContainers"][0]["command"]
        source, dest, *pinned = command[command.index("fetch-model") + 1:]
        prefix = source.removeprefix(f"gs://{self._bucket.name}/").rstrip("/") + "/"
        generations = dict(zip(pinned[::2], (int(g) for g in pinned[1::2]), strict=True))
        blobs = ([self._bucket.blob(prefix + path, generation=gen) for path, gen in generations.items()]
                 if generations else list(self._bucket.list_blobs(prefix=prefix)))
        for blob in blobs:
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
        self._apps.patch_namespaced_deployment_status(name, self._namespace, {
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

    def check_ready(self, spec: DeploymentSpec, *, give_up: bool = False) -> DeploymentStatus:
        """Look once through the real backend."""
        return self._resolve(self.backend.check_ready(spec, give_up=give_up))

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
