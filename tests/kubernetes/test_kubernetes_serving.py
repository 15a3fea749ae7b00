"""The Kubernetes serving backend against an emulated API server, through the official client over HTTP."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kmock
import pytest
from kubernetes import client

from release.adapters.k8s_manifests import service_url
from release.adapters.k8s_names import object_name
from release.adapters.kubernetes_serving import KubernetesServingBackend
from release.ports import DeploymentSpec
from schemas.errors import PermanentError, Reason, TemporaryError
from tests.kubernetes.conftest import NAMESPACE
from tests.servers.kube_server import KubeServer

GPU_SPEC = DeploymentSpec(model="digits", version="V2.0_rc", artifact_uri="gs://models-bkt/models/digits/V2.0_rc",
                          gpu=True)
NAME = object_name(GPU_SPEC.model, GPU_SPEC.version)
PODMONITORING = ("monitoring.googleapis.com", "v1", NAMESPACE, "podmonitorings")


def _plain(api: client.ApiClient, model: object) -> Any:
    """A client model as the API's JSON, the shape the manifests were written in."""
    return api.sanitize_for_serialization(model)


def _set_status(api: client.ApiClient, status: dict[str, Any], *, generation: int = 1) -> None:
    """Play the Deployment controller: the emulator keeps no status of its own."""
    client.AppsV1Api(api).patch_namespaced_deployment_status(
        NAME, NAMESPACE, {"metadata": {"generation": generation}, "status": status})


STARTING = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0}


def _ready(replicas: int = 1) -> dict[str, Any]:
    return {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas}


def _stuck_pod(api: client.ApiClient) -> None:
    """A pod of the version that no node can take, with a crashed fetch container before it."""
    labels = {"app.kubernetes.io/name": "model-server", "app.kubernetes.io/instance": NAME}
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{NAME}-5d9f-abcde", "namespace": NAMESPACE, "labels": labels},
        "spec": {"containers": [{"name": "server", "image": "pod"}]},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}],
            "containerStatuses": [{"name": "server", "ready": False, "restartCount": 2, "image": "pod",
                                   "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
        },
    }
    client.CoreV1Api(api).create_namespaced_pod(NAMESPACE, client.V1Pod.model_validate(pod))


def test_deploy_creates_every_object_with_gpu_fields(backend: KubernetesServingBackend,
                                                     api_client: client.ApiClient) -> None:
    """A GPU version gets GPU limits, node selector and toleration, plus a Service, HPA and PodMonitoring."""
    status = backend.deploy(GPU_SPEC)

    assert status.ready is False
    assert status.endpoints == (f"http://{NAME}.{NAMESPACE}.svc.cluster.local:8080",)
    deployment = _plain(api_client, client.AppsV1Api(api_client).read_namespaced_deployment(NAME, NAMESPACE))
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert deployment["metadata"]["annotations"]["modelrelease.dev/version"] == "V2.0_rc"
    service = _plain(api_client, client.CoreV1Api(api_client).read_namespaced_service(NAME, NAMESPACE))
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = _plain(api_client, client.AutoscalingV2Api(api_client).read_namespaced_horizontal_pod_autoscaler(
        NAME, NAMESPACE))
    assert hpa["spec"]["scaleTargetRef"]["name"] == NAME
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "pod_queue_time_seconds"
    monitoring = _plain(api_client, client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        *PODMONITORING, NAME))
    assert monitoring["spec"]["endpoints"][0]["path"] == "/metrics"


def test_deploy_twice_is_idempotent_server_side_apply(backend: KubernetesServingBackend,
                                                      api_client: client.ApiClient, kube: KubeServer) -> None:
    """A second deploy changes nothing and goes out as forced server-side applies under our field manager."""
    backend.deploy(GPU_SPEC)
    before = client.AppsV1Api(api_client).read_namespaced_deployment(NAME, NAMESPACE).to_dict()
    seen = len(kube.requests())

    backend.deploy(GPU_SPEC)

    second = kube.requests()[seen:]
    after = client.AppsV1Api(api_client).read_namespaced_deployment(NAME, NAMESPACE).to_dict()
    assert after == before
    assert [r.method for r in second] == ["PATCH"] * 4
    assert all(r.headers["Content-Type"] == "application/apply-patch+yaml" for r in second)
    assert all(r.params == {"fieldManager": "model-release", "force": "true"} for r in second)
    assert len(client.AppsV1Api(api_client).list_namespaced_deployment(NAMESPACE).items) == 1


def test_wait_ready_returns_when_the_watch_reports_the_rollout_complete(
        backend: KubernetesServingBackend, api_client: client.ApiClient, kube: KubeServer) -> None:
    """wait_ready blocks on the watch while pods start and returns once all replicas are updated and ready."""
    backend.deploy(GPU_SPEC)
    _set_status(api_client, STARTING)
    watching = threading.Event()
    kube.configure(lambda emulator: emulator[kmock.action.WATCH] >> watching)

    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(backend.wait_ready, GPU_SPEC, timeout_s=20)
        assert watching.wait(timeout=10)
        assert not waiting.done()
        _set_status(api_client, _ready())
        status = waiting.result(timeout=20)

    assert status.ready is True
    assert status.ready_replicas == status.replicas == 1
    assert status.endpoints == (service_url(GPU_SPEC.model, GPU_SPEC.version, namespace=NAMESPACE),)


def test_wait_ready_waits_for_a_new_generation_to_be_observed(backend: KubernetesServingBackend,
                                                              api_client: client.ApiClient) -> None:
    """Ready counts of the previous generation do not count: observedGeneration must catch up."""
    backend.deploy(GPU_SPEC)
    _set_status(api_client, _ready(), generation=2)

    with pytest.raises(PermanentError) as failure:
        backend.wait_ready(GPU_SPEC, timeout_s=1)

    assert failure.value.reason == Reason.ROLLOUT_FAILED


def test_wait_ready_times_out_with_pod_conditions_and_logs(
        backend: KubernetesServingBackend, api_client: client.ApiClient, kube: KubeServer) -> None:
    """A version that never gets ready fails with ROLLOUT_FAILED and an excerpt of pod conditions and logs."""
    backend.deploy(GPU_SPEC)
    _set_status(api_client, STARTING)
    _stuck_pod(api_client)
    log = b"torch.OutOfMemoryError: CUDA out of memory\n"
    kube.configure(lambda emulator: emulator[re.compile(r".*/pods/[^/]+/log")]
                   << log << kmock.headers({"Content-Type": "text/plain; charset=utf-8"}))

    started = time.monotonic()
    with pytest.raises(PermanentError) as failure:
        backend.wait_ready(GPU_SPEC, timeout_s=1)

    assert time.monotonic() - started < 10
    error = failure.value
    assert error.reason == Reason.ROLLOUT_FAILED
    excerpt = error.details["log_excerpt"]
    assert "PodScheduled=False (Unschedulable): 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." \
        in excerpt
    assert "CrashLoopBackOff" in excerpt
    assert "CUDA out of memory" in excerpt
    assert error.details["pods"][0]["phase"] == "Pending"


def test_wait_ready_fails_at_once_when_the_progress_deadline_passed(backend: KubernetesServingBackend,
                                                                    api_client: client.ApiClient) -> None:
    """A Deployment reporting ProgressDeadlineExceeded fails the wait without sitting out the timeout."""
    backend.deploy(GPU_SPEC)
    timed_out = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": f'ReplicaSet "{NAME}-5d9f" has timed out progressing.'}
    _set_status(api_client, {**STARTING, "conditions": [timed_out]})

    started = time.monotonic()
    with pytest.raises(PermanentError) as failure:
        backend.wait_ready(GPU_SPEC, timeout_s=60)

    assert time.monotonic() - started < 10
    assert "ProgressDeadlineExceeded" in failure.value.details["log_excerpt"]


def test_check_ready_looks_once_and_gives_up_only_when_told(backend: KubernetesServingBackend,
                                                            api_client: client.ApiClient) -> None:
    """One read: not ready yet while pods start, ready once complete, ROLLOUT_FAILED on give_up while starting."""
    backend.deploy(GPU_SPEC)
    _set_status(api_client, STARTING)
    assert not backend.check_ready(GPU_SPEC).ready
    with pytest.raises(PermanentError) as failure:
        backend.check_ready(GPU_SPEC, give_up=True)
    assert failure.value.reason == Reason.ROLLOUT_FAILED and "not ready in time" in failure.value.message
    _set_status(api_client, _ready())
    assert backend.check_ready(GPU_SPEC, give_up=True).ready


def test_status_reads_the_deployment_or_none(backend: KubernetesServingBackend,
                                             api_client: client.ApiClient) -> None:
    """status is None before deploy and reflects the Deployment's replica counts after."""
    assert backend.status(GPU_SPEC.model, GPU_SPEC.version) is None
    backend.deploy(GPU_SPEC)
    _set_status(api_client, _ready(replicas=2))

    status = backend.status(GPU_SPEC.model, GPU_SPEC.version)

    assert status is not None
    assert (status.ready, status.ready_replicas, status.replicas) == (True, 2, 2)


def test_retire_deletes_every_object_and_is_idempotent(backend: KubernetesServingBackend,
                                                       api_client: client.ApiClient) -> None:
    """retire removes Deployment, Service, HPA and PodMonitoring; retiring again is fine."""
    backend.deploy(GPU_SPEC)

    backend.retire(GPU_SPEC.model, GPU_SPEC.version)
    backend.retire(GPU_SPEC.model, GPU_SPEC.version)

    assert backend.status(GPU_SPEC.model, GPU_SPEC.version) is None
    assert client.CoreV1Api(api_client).list_namespaced_service(NAMESPACE).items == []
    autoscalers = client.AutoscalingV2Api(api_client).list_namespaced_horizontal_pod_autoscaler(NAMESPACE)
    assert autoscalers.items == []
    monitors = _plain(api_client,
                      client.CustomObjectsApi(api_client).list_namespaced_custom_object(*PODMONITORING))
    assert monitors["items"] == []


@pytest.mark.parametrize(("status", "error"), [
    (409, PermanentError), (422, PermanentError), (403, PermanentError),
    (429, TemporaryError), (500, TemporaryError), (503, TemporaryError),
])
def test_api_refusals_become_release_errors(backend: KubernetesServingBackend, kube: KubeServer,
                                            status: int, error: type[Exception]) -> None:
    """429 and 5xx become TemporaryError, other refusals PermanentError, chained to the vendor error."""
    backend.deploy(GPU_SPEC)  # the emulator answers a patch of a missing object before any reaction runs
    refusal = kmock.KubernetesError(status=status, reason="Refused", message=f"refused with {status}")
    kube.configure(lambda emulator: emulator[kmock.method.PATCH] << refusal)

    with pytest.raises(error) as raised:
        backend.deploy(GPU_SPEC)

    assert type(raised.value) is error
    assert f"refused with {status}" in str(raised.value)
    assert isinstance(raised.value.__cause__, client.ApiException)


def test_unreachable_api_server_is_a_temporary_error() -> None:
    """A refused connection is worth retrying later: TemporaryError."""
    with client.ApiClient(client.Configuration(host="http://127.0.0.1:9")) as api:
        api.configuration.retries = 0
        serving = KubernetesServingBackend(namespace=NAMESPACE, api_client=api, request_timeout_s=2)

        with pytest.raises(TemporaryError):
            serving.status("digits", "1")
