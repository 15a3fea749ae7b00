"""Pods on Kubernetes record predictions by default, at the policy's rate, and setup.sh routes their lines."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from release.adapters.k8s_manifests import SERVER_CONTAINER, render_version
from release.deployment_spec import deployment_spec
from release.registry import VersionView
from schemas.pod_records import POD_RECORDS_KIND
from schemas.states import VersionState

SETUP = Path(__file__).resolve().parents[2] / "deploy" / "gcp" / "setup.sh"


def view(policy: dict[str, Any]) -> VersionView:
    """A registered digits version on Cloud Storage with ``policy``."""
    now = datetime.now(UTC)
    return VersionView(id=1, model="digits", version="1", seq=1, state=VersionState.DEPLOYING, state_reason="",
                       intent="", digest="", artifact_uri="gs://bkt/models/digits/1", format="torchscript",
                       manifest={}, metrics={}, policy=policy, revision=1, created_at=now, updated_at=now)


def server_args(policy: dict[str, Any]) -> list[str]:
    """The model server's arguments in the Deployment rendered for ``policy``."""
    [deployment] = [o for o in render_version(deployment_spec(view(policy)), namespace="ns")
                    if o["kind"] == "Deployment"]
    [server] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == SERVER_CONTAINER]
    return list(server["args"])


@pytest.mark.parametrize(("drift", "expected"), [
    ({}, ["--record-predictions", "--prediction-sample-rate", "1"]),
    ({"sample_rate": 0.25}, ["--record-predictions", "--prediction-sample-rate", "0.25"]),
    ({"sample_rate": 0.25, "pod_records": False}, []),
], ids=["default", "sampled", "turned-off"])
def test_kubernetes_pods_record_at_the_policys_rate(drift: dict[str, Any], expected: list[str]) -> None:
    """Kubernetes pods print records unless the policy says not to, sampled at drift.sample_rate."""
    args = server_args({"drift": drift})
    tail = args[args.index("--record-predictions"):] if "--record-predictions" in args else []
    assert tail == expected


def test_local_pods_leave_recording_to_the_router_unless_the_policy_asks() -> None:
    """The local backend's default is off (the embedded router records); the policy can still turn it on."""
    assert deployment_spec(view({})).record_args(default=False) == []
    assert deployment_spec(view({"drift": {"pod_records": True, "sample_rate": 0.5}})).record_args(
        default=False) == ["--record-predictions", "--prediction-sample-rate", "0.5"]


def test_setup_routes_the_serving_containers_record_lines_to_prediction_logs() -> None:
    """The sink filter names the kind pods print and their container; its writer may publish on the topic."""
    script = SETUP.read_text()
    body = script[script.index("create_prediction_sink() {"):]
    body = body[:body.index("\n}\n")]
    assert f'jsonPayload.kind=\\"{POD_RECORDS_KIND}\\"' in body
    assert f'resource.labels.container_name=\\"{SERVER_CONTAINER}\\"' in body
    assert "topics/prediction-logs" in body and "gcloud logging sinks create" in body
    grant = r"add-iam-policy-binding prediction-logs .*\n.*--member \"\$writer\" --role roles/pubsub.publisher"
    assert re.search(grant, body)
    assert re.search(r"^  create_prediction_sink$", script, re.MULTILINE)
