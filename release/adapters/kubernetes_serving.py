"""The Kubernetes serving backend: each version runs as its own Deployment + Service + HPA (+ PodMonitoring).

It implements ``release.ports.ServingBackend`` with the official ``kubernetes`` client; only it and
``k8s_errors`` (the client's exceptions as ours) import that client. What to run comes from ``k8s_manifests``
(pure); this module only talks to the API server:

* ``deploy`` server-side applies every rendered object (``application/apply-patch+yaml``, one field manager,
  ``force``), so applying the same version again is a no-op and a changed render wins over manual edits.
  A server that answers an apply for a missing object with 404 instead of creating it (API mocks such as
  kmock; a real server only does so when the namespace or the CRD is missing) gets a create, after which
  the next apply updates. If the create fails too, that error is the one reported.
* ``wait_ready`` watches the Deployment (re-opening the watch every ``watch_window_s``) until the rollout is
  complete the way ``kubectl rollout status`` defines it. On timeout, or once the Deployment reports
  ``ProgressDeadlineExceeded``, it raises ``PermanentError(ROLLOUT_FAILED)`` whose details carry the pods'
  phases, conditions, container states and log tails: the excerpt a person reads to see why.
  ``check_ready`` judges the same from one read, for the controller, which never waits.
* Vendor errors never leave this module: every API call runs in ``k8s_errors.api_errors``, which turns
  429, 5xx and connection failures into ``TemporaryError`` (redeliver later), other API refusals (409 field
  conflicts, 422 invalid objects, 403 missing RBAC) into ``PermanentError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from release.adapters.k8s_errors import api_errors
from release.adapters.k8s_manifests import (
    DEFAULT_OPTIONS,
    Manifest,
    ServingOptions,
    min_replicas,
    render_version,
    service_url,
)
from release.adapters.k8s_names import object_name, selector_labels
from release.adapters.k8s_status import conditions, container_state, exit_codes, worth_a_log
from release.ports import DeploymentSpec, DeploymentStatus
from schemas import pod_exit
from schemas.errors import PermanentError, Reason

_APPLY_PATCH = "application/apply-patch+yaml"
_PODMONITORING = ("monitoring.googleapis.com", "v1", "podmonitorings")
_EXCERPT_CHARS = 8000
_MAX_PODS_DESCRIBED = 3


@dataclass(frozen=True)
class _Kind:
    """The three calls the backend makes for one kind of object."""

    apply: Callable[[str, Manifest], Any]
    create: Callable[[Manifest], Any]
    delete: Callable[[str], Any]


def _default_client(*, kubeconfig: str | None, context: str | None) -> client.ApiClient:
    # The config loaders are untyped; each fills `configuration` and returns nothing we use.
    configuration = client.Configuration()
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            pass  # not inside a pod: the default kubeconfig below
        else:
            return client.ApiClient(configuration)
    config.load_kube_config(config_file=kubeconfig, context=context,  # type: ignore[no-untyped-call]
                            client_configuration=configuration, persist_config=False)
    return client.ApiClient(configuration)


def _rollout_complete(deployment: client.V1Deployment, *, want: int) -> bool:
    status = deployment.status
    if status is None:
        return False
    generation = deployment.metadata.generation if deployment.metadata else None
    desired = deployment.spec.replicas if deployment.spec and deployment.spec.replicas is not None else 1
    replicas = status.replicas or 0
    return (
        (status.observed_generation or 0) >= (generation or 0)
        and (status.updated_replicas or 0) == (status.ready_replicas or 0) == replicas
        and replicas >= max(desired, want)
    )


def _deadline_exceeded(deployment: client.V1Deployment) -> bool:
    items = deployment.status.conditions if deployment.status else None
    return any(c.type == "Progressing" and c.status == "False" and c.reason == "ProgressDeadlineExceeded"
               for c in items or [])


class KubernetesServingBackend:
    """Serving pods as Kubernetes Deployments in one namespace, one set of objects per model version."""

    def __init__(
        self,
        *,
        namespace: str,
        api_client: client.ApiClient | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        options: ServingOptions = DEFAULT_OPTIONS,
        field_manager: str = "model-release",
        request_timeout_s: float = 30.0,
        watch_window_s: float = 60.0,
        log_tail_lines: int = 40,
    ) -> None:
        """Use ``api_client`` when given; else in-cluster credentials, else ``kubeconfig``/``context``."""
        self._owns_client = api_client is None
        self._api = api_client or _default_client(kubeconfig=kubeconfig, context=context)
        self._namespace = namespace
        self._options = options
        self._field_manager = field_manager
        self._timeout = request_timeout_s
        self._watch_window_s = watch_window_s
        self._log_tail_lines = log_tail_lines
        self._apps = client.AppsV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._kinds = self._kind_table()

    @property
    def name(self) -> str:
        """Stored with each deployment record."""
        return "kubernetes"

    # ----------------------------------------------------------------------------------------- the port
    def deploy(self, spec: DeploymentSpec) -> DeploymentStatus:
        """Server-side apply the version's objects; returns at once with what the Deployment says now."""
        deployment: Any = None
        for manifest in render_version(spec, namespace=self._namespace, options=self._options):
            applied = self._apply(manifest)
            if manifest["kind"] == "Deployment":
                deployment = applied
        return self._status_of(spec.model, spec.version, deployment, want=1)

    def wait_ready(self, spec: DeploymentSpec, *, timeout_s: float) -> DeploymentStatus:
        """Watch the Deployment until its rollout completes; ROLLOUT_FAILED with diagnostics if not."""
        name = object_name(spec.model, spec.version)
        deadline = time.monotonic() + timeout_s
        last: client.V1Deployment | None = None
        with api_errors(f"watching Deployment {name}"):
            while (remaining := deadline - time.monotonic()) > 0:
                with closing(self._deployment_events(name, window_s=min(remaining, self._watch_window_s))) \
                        as events:
                    for kind, deployment in events:
                        if kind == "DELETED":
                            raise self._rollout_failed(spec, None, why="the Deployment was deleted")
                        last = deployment
                        if (status := self._judge(spec, deployment, give_up=False)).ready:
                            return status
                        if time.monotonic() >= deadline:
                            break
        raise self._rollout_failed(spec, last, why=f"not ready within {timeout_s:g}s")

    def check_ready(self, spec: DeploymentSpec, *, give_up: bool = False) -> DeploymentStatus:
        """Read the Deployment once and judge it as ``wait_ready`` does; ``give_up`` fails it if not ready."""
        name = object_name(spec.model, spec.version)
        with api_errors(f"reading Deployment {name}"):
            try:
                deployment = self._apps.read_namespaced_deployment(
                    name, self._namespace, _request_timeout=self._timeout)
            except ApiException as e:
                if e.status != 404:
                    raise
                raise self._rollout_failed(spec, None, why="the Deployment does not exist") from None
        return self._judge(spec, deployment, give_up=give_up)

    def _judge(self, spec: DeploymentSpec, deployment: client.V1Deployment, *, give_up: bool) -> DeploymentStatus:
        if _rollout_complete(deployment, want=min_replicas(spec)):
            return self._status_of(spec.model, spec.version, deployment, want=min_replicas(spec))
        if _deadline_exceeded(deployment):
            raise self._rollout_failed(spec, deployment, why="its progress deadline passed")
        if give_up:
            raise self._rollout_failed(spec, deployment, why="not ready in time")
        return self._status_of(spec.model, spec.version, deployment, want=min_replicas(spec))

    def status(self, model: str, version: str) -> DeploymentStatus | None:
        """What the Deployment reports, or None when the version has none."""
        name = object_name(model, version)
        with api_errors(f"reading Deployment {name}"):
            try:
                deployment = self._apps.read_namespaced_deployment(
                    name, self._namespace, _request_timeout=self._timeout)
            except ApiException as e:
                if e.status == 404:
                    return None
                raise
        return self._status_of(model, version, deployment, want=1)

    def retire(self, model: str, version: str) -> None:
        """Delete the version's objects, autoscaler first so it cannot scale what is being removed."""
        name = object_name(model, version)
        for kind in ("HorizontalPodAutoscaler", "PodMonitoring", "Service", "Deployment"):
            with api_errors(f"deleting {kind} {name}"):
                try:
                    self._kinds[kind].delete(name)
                except ApiException as e:
                    if e.status != 404:  # already gone, or PodMonitoring's CRD not installed
                        raise

    def close(self) -> None:
        """Close the API client when this backend made it; cluster objects stay."""
        if self._owns_client:
            self._api.close()  # type: ignore[no-untyped-call]

    # ----------------------------------------------------------------------------------------- helpers
    def _kind_table(self) -> dict[str, _Kind]:
        ns, timeout = self._namespace, self._timeout
        apply: dict[str, Any] = {"field_manager": self._field_manager, "force": True,
                                 "_content_type": _APPLY_PATCH, "_request_timeout": timeout}
        create: dict[str, Any] = {"field_manager": self._field_manager, "_request_timeout": timeout}
        hpa, custom = client.AutoscalingV2Api(self._api), client.CustomObjectsApi(self._api)
        return {
            "Deployment": _Kind(
                apply=lambda name, body: self._apps.patch_namespaced_deployment(name, ns, body, **apply),
                create=lambda body: self._apps.create_namespaced_deployment(
                    ns, client.V1Deployment.model_validate(body), **create),
                delete=lambda name: self._apps.delete_namespaced_deployment(
                    name, ns, _request_timeout=timeout),
            ),
            "Service": _Kind(
                apply=lambda name, body: self._core.patch_namespaced_service(name, ns, body, **apply),
                create=lambda body: self._core.create_namespaced_service(
                    ns, client.V1Service.model_validate(body), **create),
                delete=lambda name: self._core.delete_namespaced_service(name, ns, _request_timeout=timeout),
            ),
            "HorizontalPodAutoscaler": _Kind(
                apply=lambda name, body: hpa.patch_namespaced_horizontal_pod_autoscaler(
                    name, ns, body, **apply),
                create=lambda body: hpa.create_namespaced_horizontal_pod_autoscaler(
                    ns, client.V2HorizontalPodAutoscaler.model_validate(body), **create),
                delete=lambda name: hpa.delete_namespaced_horizontal_pod_autoscaler(
                    name, ns, _request_timeout=timeout),
            ),
            "PodMonitoring": _Kind(
                apply=lambda name, body: custom.patch_namespaced_custom_object(
                    *_PODMONITORING[:2], ns, _PODMONITORING[2], name, body, **apply),
                create=lambda body: custom.create_namespaced_custom_object(
                    *_PODMONITORING[:2], ns, _PODMONITORING[2], body, **create),
                delete=lambda name: custom.delete_namespaced_custom_object(
                    *_PODMONITORING[:2], ns, _PODMONITORING[2], name, _request_timeout=timeout),
            ),
        }

    def _apply(self, manifest: Manifest) -> Any:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        calls = self._kinds[kind]
        with api_errors(f"applying {kind} {name}"):
            try:
                return calls.apply(name, manifest)
            except ApiException as e:
                if e.status != 404:  # 404: a server that does not create on apply; see the module docstring
                    raise
            return calls.create(manifest)

    def _deployment_events(self, name: str, *,
                           window_s: float) -> Generator[tuple[str, client.V1Deployment], None, None]:
        """Events of one Deployment for up to ``window_s``; the first ones describe its current state."""
        # The client's watch helper is untyped; events are dicts whose "object" is a V1Deployment.
        watcher = watch.Watch()  # type: ignore[no-untyped-call]
        stream = watcher.stream(  # type: ignore[no-untyped-call]
            self._apps.list_namespaced_deployment, self._namespace,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, math.ceil(window_s)),
            # The read timeout ends the window on servers that ignore timeoutSeconds.
            _request_timeout=(self._timeout, window_s),
        )
        try:
            for event in stream:
                deployment = event["object"]
                if deployment.metadata.name == name:  # servers that ignore the field selector send all
                    yield event["type"], deployment
        except (ReadTimeoutError, ProtocolError):
            return
        except ApiException as e:
            if e.status != 410:  # 410 Gone: the watch expired; the next window starts a fresh one
                raise
        finally:
            watcher.stop()  # type: ignore[no-untyped-call]
            stream.close()

    def _status_of(self, model: str, version: str, deployment: client.V1Deployment | None, *,
                   want: int) -> DeploymentStatus:
        status = deployment.status if deployment is not None else None
        return DeploymentStatus(
            model=model,
            version=version,
            ready=deployment is not None and _rollout_complete(deployment, want=want),
            endpoints=(service_url(model, version, namespace=self._namespace),),
            ready_replicas=(status.ready_replicas or 0) if status else 0,
            replicas=(status.replicas or 0) if status else 0,
            message="; ".join(conditions(self._plain(status.conditions) if status else None)),
        )

    def _plain(self, value: Any) -> Any:
        """Client models as the API's own JSON (camelCase, no nulls), the shape diagnostics are read in."""
        return self._api.sanitize_for_serialization(value)  # type: ignore[no-untyped-call]

    # ----------------------------------------------------------------------------------------- diagnostics
    def _rollout_failed(self, spec: DeploymentSpec, deployment: client.V1Deployment | None, *,
                        why: str) -> PermanentError:
        name = object_name(spec.model, spec.version)
        lines = [f"Deployment {self._namespace}/{name}: {why}"]
        if deployment is None:
            lines.append("  the Deployment was not seen")
        else:
            status = self._plain(deployment.status) or {}
            counts = {key: status.get(key, 0) for key in ("replicas", "updatedReplicas", "readyReplicas")}
            lines.append("  " + ", ".join(f"{key} {value}" for key, value in counts.items()))
            lines += [f"  {c}" for c in conditions(status.get("conditions"))]
        pods = self._describe_pods(spec)
        for pod in pods:
            lines.append(f"pod {pod['name']}: {pod['phase']}")
            lines += [f"  {line}" for line in pod["conditions"] + pod["containers"]]
            for container, log in pod["logs"].items():
                lines.append(f"  log of {container}:")
                lines += [f"    {line}" for line in log.splitlines()]
        excerpt = "\n".join(lines)[-_EXCERPT_CHARS:]
        # A pod that found other bytes than the registered ones says so by its exit code.
        mismatch = any(pod_exit.CHECKSUM_MISMATCH in pod.get("exit_codes", ()) for pod in pods)
        return PermanentError(
            f"Rollout of {spec.model} {spec.version} failed: {why}",
            reason=Reason.CHECKSUM_MISMATCH if mismatch else Reason.ROLLOUT_FAILED,
            hint="Read details.log_excerpt: pod conditions say why pods are not scheduled or not ready.",
            details={"namespace": self._namespace, "deployment": name, "pods": pods, "log_excerpt": excerpt},
        )

    def _describe_pods(self, spec: DeploymentSpec) -> list[dict[str, Any]]:
        wanted = selector_labels(spec.model, spec.version)
        selector = ",".join(f"{key}={value}" for key, value in wanted.items())
        try:
            listed = self._core.list_namespaced_pod(self._namespace, label_selector=selector,
                                                    _request_timeout=self._timeout)
        except (ApiException, HTTPError) as e:
            return [{"name": "?", "phase": f"pods unreadable: {e}", "conditions": [], "containers": [],
                     "logs": {}}]
        described = []
        for pod in self._plain(listed).get("items", []):
            labels = pod.get("metadata", {}).get("labels") or {}
            if any(labels.get(key) != value for key, value in wanted.items()):
                continue  # a server that ignores the label selector sends every pod
            status = pod.get("status") or {}
            containers = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
            name = pod["metadata"]["name"]
            described.append({
                "name": name,
                "exit_codes": sorted({code for c in containers for code in exit_codes(c)}),
                "phase": status.get("phase", "Unknown"),
                "conditions": conditions(status.get("conditions")),
                "containers": [container_state(c) for c in containers],
                "logs": {c["name"]: self._log_tail(name, c) for c in containers if worth_a_log(c)},
            })
            if len(described) == _MAX_PODS_DESCRIBED:
                break
        return described

    def _log_tail(self, pod: str, container: dict[str, Any]) -> str:
        # A restarted container's useful log is the one of the run that crashed.
        previous = bool(container.get("restartCount")) and "running" not in (container.get("state") or {})
        try:
            text = self._core.read_namespaced_pod_log(
                pod, self._namespace, container=container["name"], tail_lines=self._log_tail_lines,
                previous=previous, _request_timeout=self._timeout)
        except (ApiException, HTTPError) as e:
            return f"(log unavailable: {e})"
        return str(text)
