"""Render the Kubernetes objects that serve one model version: Deployment, Service, HPA, PodMonitoring.

This module is pure: plain dicts in, plain dicts out, no ``kubernetes`` import and no I/O, so the CLI can
print exactly what the Kubernetes serving backend would apply and tests can validate it against the
Kubernetes OpenAPI schemas offline. ``kubernetes_serving`` applies what this module renders; what the
objects are called and how they are labelled comes from ``k8s_names``.

Model files reach the pod in one of three ways (``ServingOptions.model_source``):

* ``init-container`` (default): an init container from the ``google-cloud-cli`` image copies the artifact
  with ``gcloud storage`` into an ``emptyDir`` before the server starts; the server only reads local files.
  The pods' Kubernetes service account is granted read access to the bucket through Workload Identity.
* ``gcsfuse``: a read-only Cloud Storage FUSE mount of the version's prefix (GKE's CSI driver), checked against
  the registered digest before the pod serves; ``k8s_model_files`` says how the trust boundary holds.
* ``gcs-direct``: the server gets the ``gs://`` URI as ``--artifact`` and fetches it itself. This needs a pod
  server that reads ``gs://``; ``handlers.server`` today takes a local path, hence the default above.

Pods are shaped per version by the policy's ``serving`` section (through ``DeploymentSpec``): accelerator, GPUs,
CPU, memory, replica range, queue-time target, workers, batching. ``ServingOptions`` holds the cluster's part.

Autoscaling follows the queue time the pod server exports (``pod_queue_time_seconds``, a histogram): the
HPA reads a *Pods* metric of that name from ``custom.metrics.k8s.io``, which a metrics adapter must serve as
the per-pod average over a short window (``deploy/k8s/metrics-adapter`` has the prometheus-adapter rule;
``deploy/README.md`` explains the setup).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from release.adapters.k8s_model_files import GCSFUSE_ANNOTATIONS, MODELS_DIR, artifact_source, fuse_mount
from release.adapters.k8s_names import metadata, object_name, selector_labels
from release.ports import DeploymentSpec

Manifest = dict[str, Any]

SERVER_PORT = 8080

_TMP_DIR = "/tmp"  # noqa: S108 - an emptyDir mounted there, not the image's shared /tmp
SERVER_CONTAINER = "server"  # the pod log entries the monitor accepts come from this container
_FETCH_CONTAINER = "fetch-model"
_GPU_RESOURCE = "nvidia.com/gpu"
_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"


@dataclass(frozen=True, kw_only=True)
class Resources:
    """CPU, memory and node-local disk of one container. Requests equal limits: GKE Autopilot enforces it
    anyway, and a Guaranteed pod is the last one evicted when a node runs short."""

    cpu: str
    memory: str
    ephemeral_storage: str


@dataclass(frozen=True, kw_only=True)
class Toleration:
    """A taint the serving pods tolerate, beyond the GPU taint they always tolerate when on a GPU."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


@dataclass(frozen=True, kw_only=True)
class ServingOptions:
    """How serving pods are shaped in a cluster; the per-version part comes from ``DeploymentSpec``."""

    image: str = "ghcr.io/modelrelease/pod:latest"
    """The serving pod image (``deploy/docker/pod.Dockerfile``). Pin a digest in production."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    accelerator: str | None = None
    """Overrides every version's ``serving.accelerator`` (GKE label value, e.g. ``nvidia-h100-80gb``)."""
    tolerations: tuple[Toleration, ...] = ()
    ephemeral_storage: str = "20Gi"  # the server container's node-local disk; CPU and memory: the policy's
    model_source: Literal["init-container", "gcsfuse", "gcs-direct"] = "init-container"
    fetch_image: str = "gcr.io/google.com/cloudsdktool/google-cloud-cli:slim"
    """Image of the init container that copies the artifact (``init-container`` mode)."""
    fetch_resources: Resources = Resources(cpu="500m", memory="1Gi", ephemeral_storage="1Gi")
    model_volume_limit: str = "16Gi"
    """Size limit of the ``emptyDir`` that holds the model files; keep it below ``ephemeral_storage``."""
    service_account_prefix: str = "model-"
    """A model's pods run as the Kubernetes service account ``PREFIX<model>``, which the operator creates when
    onboarding the model (``deploy/gcp/setup.sh grant-model NAME``): Workload Identity maps it to a reader of that
    model's bucket prefix alone, and an unknown model's pods never start."""
    run_as_user: int = 10001
    """The non-root uid the images are built with (``deploy/docker``)."""
    queue_time_metric: str = "pod_queue_time_seconds"
    """Pods metric (served by the metrics adapter) the HPA keeps near the policy's ``target_queue_ms``."""
    startup_timeout_s: int = 600
    """How long a pod may take to load its model before the kubelet restarts it."""
    progress_deadline_s: int = 1200
    """Rollout deadline: GPU nodes on Autopilot can take minutes to appear, then the model loads."""
    drain_s: int = 30
    """How long the server drains after SIGTERM (its ``--drain-timeout-s``)."""
    prestop_delay_s: int = 5
    """Pause before SIGTERM so endpoints drop the pod before it stops accepting requests."""
    pod_monitoring: bool = True
    """Render a PodMonitoring (needs Google Managed Prometheus, i.e. its CRD, in the cluster)."""


DEFAULT_OPTIONS = ServingOptions()


# --------------------------------------------------------------------------------------------- pod
def _resources(resources: Resources, *, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, str] = {
        "cpu": resources.cpu, "memory": resources.memory, "ephemeral-storage": resources.ephemeral_storage,
    }
    if gpus:
        amounts[_GPU_RESOURCE] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _mounts() -> list[dict[str, Any]]:
    return [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": _TMP_DIR}]


# Positional parameters: $1 the artifact's gs:// URI, $2 the local path, then (file, generation) pairs.
_COPY_PINNED_DIR = ('src="$1"; dst="$2"; shift 2; while [ "$#" -gt 1 ]; do mkdir -p "$(dirname "$dst/$1")"; '
                    'gcloud storage cp "$src/$1#$2" "$dst/$1"; shift 2; done')
_COPY_PINNED_MAR = 'gcloud storage cp "$1#$4" "$2"'


def _copy_script(local: str, generations: dict[str, int]) -> tuple[str, list[str]]:
    """The init container's copy command and its extra arguments.

    With the generations recorded at registration it copies exactly those objects (``gs://...#GENERATION``),
    so a swap in the bucket after the gates never reaches a pod that starts later; without them it copies
    the prefix, and the server's ``--expect-digest`` refuses anything but the registered bytes.
    """
    if not generations:
        return ('gcloud storage cp "$1" "$2"' if local.endswith(".mar") else
                'mkdir -p "$2" && gcloud storage rsync --recursive "$1" "$2"'), []
    pairs = [str(part) for path, generation in sorted(generations.items()) for part in (path, generation)]
    return (_COPY_PINNED_MAR if local.endswith(".mar") else _COPY_PINNED_DIR), pairs


def _fetch_container(source: str, local: str, options: ServingOptions,
                     generations: dict[str, int]) -> dict[str, Any]:
    # Arguments travel as positional parameters, never spliced into the script, so no object name can
    # inject shell syntax. rsync (not cp) copies a prefix's *contents* into the target whatever exists.
    copy, pinned = _copy_script(local, generations)
    return {
        "name": _FETCH_CONTAINER,
        "image": options.fetch_image,
        "imagePullPolicy": options.image_pull_policy,
        "command": ["/bin/sh", "-c", f"set -e; {copy}", "fetch-model", source, local, *pinned],
        "env": [
            {"name": "HOME", "value": _TMP_DIR},
            {"name": "CLOUDSDK_CONFIG", "value": f"{_TMP_DIR}/gcloud"},
            {"name": "CLOUDSDK_CORE_DISABLE_PROMPTS", "value": "1"},
        ],
        "resources": _resources(options.fetch_resources),
        "securityContext": _container_security(),
        "volumeMounts": _mounts(),
    }


def _probe(path: str, *, period_s: int, failures: int, timeout_s: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": timeout_s,
        "failureThreshold": failures,
    }


def _server_env(spec: DeploymentSpec) -> list[dict[str, str]]:
    env = {"HOME": _TMP_DIR, "TMPDIR": _TMP_DIR, **spec.env}
    return [{"name": name, "value": value} for name, value in sorted(env.items())]


def _server_args(spec: DeploymentSpec, artifact: str, options: ServingOptions) -> list[str]:
    args = [
        "--artifact", artifact,
        "--host", "0.0.0.0",  # noqa: S104 - the pod's own network namespace; the Service is the way in
        "--port", str(SERVER_PORT),
        "--max-batch-size", str(spec.max_batch_size),
        "--max-batch-delay-ms", f"{spec.max_batch_delay_ms:g}",
        "--http-workers", str(spec.http_workers),
        "--drain-timeout-s", str(options.drain_s),
        "--work-dir", f"{MODELS_DIR}/work",  # .mar archives unpack here: the root filesystem is read-only
        "--log-format", "json",
    ]
    if spec.digest:
        args += ["--expect-digest", spec.digest]
    if not spec.allow_model_code:
        args.append("--no-model-code")
    return args + spec.record_args(default=True)  # pods record unless a router says it does (RECORDED_BY_HEADER)


def _server_container(spec: DeploymentSpec, artifact: str, options: ServingOptions,
                      mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": SERVER_CONTAINER,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        # `command`, not `args`: the server starts the same whatever entrypoint the image declares.
        "command": ["python", "-m", "handlers.server"],
        "args": _server_args(spec, artifact, options),
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "env": _server_env(spec),
        "resources": _resources(Resources(cpu=spec.cpu, memory=spec.memory,
                                          ephemeral_storage=options.ephemeral_storage),
                                gpus=max(1, spec.gpus) if spec.gpu else 0),
        "securityContext": _container_security(),
        "volumeMounts": mounts,
        # Readiness flips when the model is loaded; liveness only asks whether the process answers.
        "startupProbe": _probe("/v2/health/live", period_s=5,
                               failures=max(1, options.startup_timeout_s // 5)),
        "livenessProbe": _probe("/v2/health/live", period_s=10, failures=3),
        "readinessProbe": _probe("/v2/health/ready", period_s=5, failures=2),
        # The sleep lets kube-proxy and the router drop the endpoint before SIGTERM starts the drain.
        "lifecycle": {"preStop": {"sleep": {"seconds": options.prestop_delay_s}}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _scheduling(spec: DeploymentSpec, options: ServingOptions) -> dict[str, Any]:
    tolerations = [
        {key: value for key, value in (("key", t.key), ("operator", t.operator), ("value", t.value),
                                       ("effect", t.effect)) if value is not None}
        for t in options.tolerations
    ]
    if not spec.gpu:
        return {"tolerations": tolerations} if tolerations else {}
    # The cluster's override, else the policy's; a GPU forced on over `accelerator: none` lands on L4.
    chosen = options.accelerator or spec.accelerator
    return {
        "nodeSelector": {_ACCELERATOR_LABEL: "nvidia-l4" if chosen == "none" else chosen},
        "tolerations": [{"key": _GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}, *tolerations],
    }


def _pod_spec(spec: DeploymentSpec, options: ServingOptions) -> dict[str, Any]:
    source, local = artifact_source(spec.artifact_uri)
    init: list[dict[str, Any]] = []
    artifact, mounts = source, _mounts()
    volumes: list[dict[str, Any]] = [{"name": "models", "emptyDir": {"sizeLimit": options.model_volume_limit}},
                                     {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if options.model_source == "init-container":
        init, artifact = [_fetch_container(source, local, options, spec.generations)], local
    elif options.model_source == "gcsfuse":
        fuse = fuse_mount(source, digest=spec.digest)
        artifact, mounts, volumes = fuse.artifact, [*mounts, fuse.mount], [*volumes, fuse.volume]
    pod: dict[str, Any] = {
        "serviceAccountName": f"{options.service_account_prefix}{spec.model}",
        # One Service per version in the namespace: injected service env vars would grow with every release.
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": options.run_as_user,
            "runAsGroup": options.run_as_user,
            "fsGroup": options.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": options.prestop_delay_s + options.drain_s + 5,
        "containers": [_server_container(spec, artifact, options, mounts)],
        "volumes": volumes,
        **_scheduling(spec, options),
    }
    if init:
        pod["initContainers"] = init
    return pod


# --------------------------------------------------------------------------------------------- objects
def _deployment(spec: DeploymentSpec, *, namespace: str, options: ServingOptions) -> Manifest:
    meta = metadata(spec, namespace=namespace)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        # No `replicas`: the HPA owns it. Applying it here would reset the HPA's count on every deploy.
        "spec": {
            "selector": {"matchLabels": selector_labels(spec.model, spec.version)},
            "progressDeadlineSeconds": options.progress_deadline_s,
            "revisionHistoryLimit": 2,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                # The FUSE annotation has GKE inject the Cloud Storage FUSE sidecar into the pods.
                "metadata": {"labels": meta["labels"], "annotations": {
                    **meta["annotations"], **(GCSFUSE_ANNOTATIONS if options.model_source == "gcsfuse" else {})}},
                "spec": _pod_spec(spec, options),
            },
        },
    }


def _service(spec: DeploymentSpec, *, namespace: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, namespace=namespace),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec.model, spec.version),
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_url(model: str, version: str, *, namespace: str) -> str:
    """The in-cluster URL of a version's Service."""
    return f"http://{object_name(model, version)}.{namespace}.svc.cluster.local:{SERVER_PORT}"


def _quantity(seconds: float) -> str:
    return f"{round(seconds * 1000)}m"


def min_replicas(spec: DeploymentSpec) -> int:
    """The replicas a version always has: ``serving.min_replicas``, else ``rollout.replicas``."""
    return max(1, spec.replicas)


def _hpa(spec: DeploymentSpec, *, namespace: str, options: ServingOptions) -> Manifest:
    minimum = min_replicas(spec)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(spec, namespace=namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": object_name(spec.model, spec.version)},
            "minReplicas": minimum,
            "maxReplicas": max(minimum, spec.max_replicas),
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": options.queue_time_metric},
                    "target": {"type": "AverageValue",
                               "averageValue": _quantity(spec.target_queue_ms / 1000)},
                },
            }],
            # GPU pods are slow to start and costly to flap: add quickly, remove slowly.
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": 300,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
            },
        },
    }


def _pod_monitoring(spec: DeploymentSpec, *, namespace: str) -> Manifest:
    return {
        "apiVersion": "monitoring.googleapis.com/v1",
        "kind": "PodMonitoring",
        "metadata": metadata(spec, namespace=namespace),
        "spec": {
            "selector": {"matchLabels": selector_labels(spec.model, spec.version)},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s", "timeout": "10s"}],
            "targetLabels": {"metadata": ["pod", "container"],
                             "fromPod": [{"from": "modelrelease.dev/model", "to": "release_model"},
                                         {"from": "modelrelease.dev/version", "to": "release_version"}]},
        },
    }


def render_version(spec: DeploymentSpec, *, namespace: str,
                   options: ServingOptions = DEFAULT_OPTIONS) -> list[Manifest]:
    """Every object that serves ``spec`` in ``namespace``, in the order to apply them (reverse to delete)."""
    objects = [
        _deployment(spec, namespace=namespace, options=options),
        _service(spec, namespace=namespace),
        _hpa(spec, namespace=namespace, options=options),
    ]
    if options.pod_monitoring:
        objects.append(_pod_monitoring(spec, namespace=namespace))
    return objects
