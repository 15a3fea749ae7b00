"""Rendered per-version objects: valid for the Kubernetes 1.37 OpenAPI schemas, safe names, GPU, security."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs installed; used in one call
import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from release.adapters.k8s_manifests import ServingOptions, Toleration, render_version
from release.adapters.k8s_names import label_value, object_name
from release.ports import DeploymentSpec
from schemas.errors import PermanentError
from tests.kubernetes.gateway_schemas import CRD_SCHEMAS

K8S_VERSION = "1.37.0"
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
ODD_VERSIONS = ["1", "V1.0_rc", "..", "-", "_x_", "2024.01.15-build_7", "A" * 64, "v" + "9." * 31 + "9"]
MODELS = ["digits", "7segment", "a-", "m" * 63]

# The part of the PodMonitoring CRD (monitoring.googleapis.com/v1, Google Managed Prometheus) we use, strict.
# kubernetes-validate bundles only built-in kinds, so this CRD is checked against this schema instead.
_DURATION = {"type": "string", "pattern": r"^((([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?|0)$"}
PODMONITORING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.googleapis.com/v1"},
        "kind": {"const": "PodMonitoring"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {
                        "port": {"type": ["string", "integer"]},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "timeout": _DURATION,
                    }}},
                "targetLabels": {"type": "object", "additionalProperties": False, "properties": {
                    "metadata": {"type": "array", "items": {"enum": [
                        "pod", "container", "node", "top_level_controller_name",
                        "top_level_controller_type"]}},
                    "fromPod": {"type": "array", "items": {
                        "type": "object", "required": ["from"], "additionalProperties": False,
                        "properties": {"from": {"type": "string"}, "to": {"type": "string"}}}},
                }},
            },
        },
    },
}


def _spec(*, model: str = "digits", version: str = "1", gpu: bool = False,
          replicas: int = 1) -> DeploymentSpec:
    suffix = f"{version}.mar" if version.startswith("m") else version
    return DeploymentSpec(model=model, version=version, artifact_uri=f"gs://bkt/models/{model}/{suffix}",
                          gpu=gpu, replicas=replicas, env={"EXTRA": "1"})


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def _pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    return spec


def validate(obj: dict[str, Any]) -> None:
    """Validate one rendered object, raising with only the schema's message (its full dump is pages long)."""
    if obj["kind"] == "PodMonitoring":
        jsonschema.validate(obj, PODMONITORING_SCHEMA)
        return
    if obj["kind"] in CRD_SCHEMAS:
        jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {e.message} at {list(e.absolute_path)}")


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("source", ["init-container", "gcs-direct"])
@pytest.mark.parametrize("version", ODD_VERSIONS)
def test_every_rendered_object_validates(gpu: bool, source: str, version: str) -> None:
    """Deployment, Service, HPA (OpenAPI 1.37, strict) and PodMonitoring (its CRD schema) validate."""
    options = ServingOptions(model_source=source,  # type: ignore[arg-type]
                             tolerations=(Toleration(key="dedicated", operator="Equal", value="ml",
                                                     effect="NoSchedule"),))
    objects = render_version(_spec(version=version, gpu=gpu), namespace="model-release", options=options)

    kinds = [o["kind"] for o in objects]
    assert kinds == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodMonitoring"]
    for obj in objects:
        validate(obj)
        assert DNS_1035_LABEL.fullmatch(obj["metadata"]["name"])
        assert all(LABEL_VALUE.fullmatch(v) and len(v) <= 63 for v in obj["metadata"]["labels"].values())
        assert obj["metadata"]["annotations"]["modelrelease.dev/version"] == version


@pytest.mark.parametrize("model", MODELS)
def test_model_names_render_valid_objects(model: str) -> None:
    """Model names starting with a digit, ending in a dash or 63 long still give valid objects."""
    for obj in render_version(_spec(model=model, version="A" * 64, gpu=True), namespace="ns"):
        validate(obj)
        assert DNS_1035_LABEL.fullmatch(obj["metadata"]["name"])


def test_gpu_version_requests_gpus_on_the_accelerator_nodes() -> None:
    """A GPU version asks for nvidia.com/gpu, selects the accelerator and tolerates the GPU taint."""
    spec_ = replace(_spec(gpu=True), gpus=2, accelerator="nvidia-h100-80gb")
    pod = _by_kind(render_version(spec_, namespace="ns"))["Deployment"]
    spec = pod["spec"]["template"]["spec"]
    resources = spec["containers"][0]["resources"]

    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "2"
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_cpu_version_has_no_gpu_scheduling() -> None:
    """A CPU version neither asks for GPUs nor lands on (or tolerates) GPU nodes."""
    spec = _by_kind(render_version(_spec(), namespace="ns"))["Deployment"]["spec"]["template"]["spec"]

    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in spec
    assert "tolerations" not in spec


def test_pods_are_locked_down_and_drain_before_the_grace_period_ends() -> None:
    """Non-root, read-only root, no escalation or capabilities, RuntimeDefault seccomp, a timed drain."""
    options = ServingOptions(drain_s=30, prestop_delay_s=5)
    pod = _by_kind(render_version(_spec(), namespace="ns", options=options))["Deployment"]["spec"]["template"]
    spec = pod["spec"]

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"] + spec["initContainers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/models", "/tmp"}
    server = spec["containers"][0]
    assert server["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert server["args"][server["args"].index("--drain-timeout-s") + 1] == "30"
    assert spec["terminationGracePeriodSeconds"] > 5 + 30
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_init_container_copies_the_artifact_and_the_server_reads_it_locally() -> None:
    """init-container mode copies gs:// into the emptyDir, passing the URI as an argument, never as script."""
    spec = _pod_spec(render_version(_spec(version="7"), namespace="ns"))
    fetch, server = spec["initContainers"][0], spec["containers"][0]

    assert fetch["command"][-2:] == ["gs://bkt/models/digits/7", "/models/artifact"]
    assert "gs://" not in fetch["command"][2]
    assert server["command"] == ["python", "-m", "handlers.server"]
    assert server["args"][:6] == ["--artifact", "/models/artifact", "--host", "0.0.0.0", "--port", "8080"]
    assert server["args"][server["args"].index("--max-batch-size") + 1] == "32"
    assert "--no-model-code" not in server["args"]


def test_a_policy_without_model_code_reaches_the_server() -> None:
    """allow_model_code=False becomes the server's --no-model-code flag."""
    spec = DeploymentSpec(model="digits", version="1", artifact_uri="gs://b/models/digits/1",
                          allow_model_code=False)
    server = _pod_spec(render_version(spec, namespace="ns"))["containers"][0]

    assert "--no-model-code" in server["args"]


def test_archives_and_direct_reads_pass_the_right_artifact() -> None:
    """A .mar lands as /models/artifact.mar; gcs-direct hands the server the gs:// URI, no init container."""
    mar = _by_kind(render_version(_spec(version="m1"), namespace="ns"))["Deployment"]
    direct = _by_kind(render_version(_spec(version="7"), namespace="ns",
                                     options=ServingOptions(model_source="gcs-direct")))["Deployment"]

    assert mar["spec"]["template"]["spec"]["containers"][0]["args"][1] == "/models/artifact.mar"
    assert "initContainers" not in direct["spec"]["template"]["spec"]
    assert direct["spec"]["template"]["spec"]["containers"][0]["args"][1] == "gs://bkt/models/digits/7"


def test_non_gcs_artifacts_are_refused() -> None:
    """Pods cannot read a local folder: rendering a file:// artifact is a PermanentError, not a broken pod."""
    spec = DeploymentSpec(model="digits", version="1", artifact_uri="file:///srv/bucket/models/digits/1")

    with pytest.raises(PermanentError):
        render_version(spec, namespace="ns")


def test_hpa_scales_on_queue_time_and_owns_the_replica_count() -> None:
    """The HPA targets average queue time per pod; the Deployment leaves `replicas` to it."""
    spec = replace(_spec(replicas=3), target_queue_ms=100, max_replicas=6)
    objects = _by_kind(render_version(spec, namespace="ns"))
    hpa = objects["HorizontalPodAutoscaler"]["spec"]

    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 6)
    assert hpa["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "pod_queue_time_seconds"},
        "target": {"type": "AverageValue", "averageValue": "100m"}}}]
    assert "replicas" not in objects["Deployment"]["spec"]


def test_pod_monitoring_can_be_left_out() -> None:
    """Clusters without Google Managed Prometheus get no PodMonitoring."""
    options = ServingOptions(pod_monitoring=False)
    kinds = [o["kind"] for o in render_version(_spec(), namespace="ns", options=options)]

    assert "PodMonitoring" not in kinds


VERSIONS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1,
                   max_size=64)
MODEL_NAMES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(model=MODEL_NAMES, version=VERSIONS)
def test_object_names_are_dns_safe_for_any_valid_model_and_version(model: str, version: str) -> None:
    """Every valid (model, version) maps to a DNS-1035 label of at most 63 characters, the same every time."""
    name = object_name(model, version)

    assert len(name) <= 63
    assert DNS_1035_LABEL.fullmatch(name)
    assert name == object_name(model, version)


@settings(max_examples=200, deadline=None)
@given(model=MODEL_NAMES, first=VERSIONS, second=VERSIONS)
def test_different_versions_never_share_a_name(model: str, first: str, second: str) -> None:
    """Versions that differ only in case or past the truncation point still get different names."""
    if first != second:
        assert object_name(model, first) != object_name(model, second)


def test_case_and_separator_variants_get_distinct_names() -> None:
    """V1, v1, v-1 and v.1 map to the same readable stem but distinct names."""
    names = {object_name("digits", v) for v in ("V1", "v1", "v-1", "v.1", "v_1")}

    assert len(names) == 5


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=80))
def test_label_values_are_always_valid(value: str) -> None:
    """Any text becomes a valid label value; valid ones stay as they are."""
    mapped = label_value(value)

    assert len(mapped) <= 63
    assert LABEL_VALUE.fullmatch(mapped)
    if len(value) <= 63 and LABEL_VALUE.fullmatch(value):
        assert mapped == value
