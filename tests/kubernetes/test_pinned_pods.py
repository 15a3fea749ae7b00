"""Kubernetes pods serve the registered bytes: the digest and object generations recorded at registration reach
the Deployment the backend applies, the copy script fetches exactly those generations, and a pod that finds
other bytes fails the rollout with checksum_mismatch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from app import cli
from release import registry
from release.adapters.k8s_names import object_name
from release.adapters.kubernetes_serving import KubernetesServingBackend
from release.db import make_engine, migrate, session_scope
from release.ports import DeploymentSpec
from schemas.errors import PermanentError, Reason
from tests.kubernetes.conftest import NAMESPACE

DIGEST = "sha256:" + "ab" * 32
GENERATIONS = {"manifest.json": 1712000000000002, "model.pt": 1712000000000001, "sub/vocab.txt": 1712000000000003}
SPEC = DeploymentSpec(model="digits", version="4", artifact_uri="gs://models-bkt/models/digits/4", digest=DIGEST,
                      generations=GENERATIONS)
NAME = object_name(SPEC.model, SPEC.version)


def _applied(api: client.ApiClient) -> dict[str, Any]:
    deployment = client.AppsV1Api(api).read_namespaced_deployment(NAME, NAMESPACE)
    return api.sanitize_for_serialization(deployment)  # type: ignore[no-any-return]


def _run_fetch(command: list[str], tmp_path: Path) -> list[str]:
    """Run the init container's shell script with a ``gcloud`` that records its arguments; what it was asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "gcloud"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    local = tmp_path / "models" / "artifact"
    args = [local.as_posix() if part == "/models/artifact" else part for part in command]
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    subprocess.run(args, env=env, check=True, timeout=30)
    return calls.read_text().splitlines()


def test_the_applied_deployment_pins_digest_and_generations(backend: KubernetesServingBackend,
                                                            api_client: client.ApiClient, tmp_path: Path) -> None:
    """The Deployment carries the registered digest (annotation and --expect-digest), and its init container
    copies each object at its registered generation, never the prefix as it is now."""
    backend.deploy(SPEC)
    deployment = _applied(api_client)
    template = deployment["spec"]["template"]
    server = template["spec"]["containers"][0]
    fetch = template["spec"]["initContainers"][0]

    assert template["metadata"]["annotations"]["modelrelease.dev/digest"] == DIGEST
    assert deployment["metadata"]["annotations"]["modelrelease.dev/digest"] == DIGEST
    assert server["args"][server["args"].index("--expect-digest") + 1] == DIGEST
    assert "rsync" not in " ".join(fetch["command"])
    assert _run_fetch(fetch["command"], tmp_path) == [
        f"storage cp gs://models-bkt/models/digits/4/{path}#{generation} {tmp_path}/models/artifact/{path}"
        for path, generation in sorted(GENERATIONS.items())]
    assert (tmp_path / "models" / "artifact" / "sub").is_dir()


def test_an_archive_is_copied_at_its_registered_generation(backend: KubernetesServingBackend,
                                                           api_client: client.ApiClient, tmp_path: Path) -> None:
    """A .mar version copies the one archive object at its registered generation."""
    spec = DeploymentSpec(model="digits", version="4", artifact_uri="gs://models-bkt/models/digits/4.mar",
                          digest=DIGEST, generations={"4.mar": 99})
    backend.deploy(spec)
    fetch = _applied(api_client)["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert fetch[4:] == ["gs://models-bkt/models/digits/4.mar", "/models/artifact.mar", "4.mar", "99"]
    local = tmp_path / "artifact.mar"
    calls = _run_fetch([local.as_posix() if part == "/models/artifact.mar" else part for part in fetch], tmp_path)
    assert calls == [f"storage cp gs://models-bkt/models/digits/4.mar#99 {local}"]


def test_a_pod_that_exits_checksum_mismatch_fails_the_rollout_with_that_reason(
        backend: KubernetesServingBackend, api_client: client.ApiClient) -> None:
    """A server container that exited 4 (other bytes than registered) makes wait_ready fail checksum_mismatch."""
    backend.deploy(SPEC)
    client.AppsV1Api(api_client).patch_namespaced_deployment_status(
        NAME, NAMESPACE, {"metadata": {"generation": 1},
                          "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                                     "readyReplicas": 0}})
    labels = {"app.kubernetes.io/name": "model-server", "app.kubernetes.io/instance": NAME}
    crashed = {"terminated": {"exitCode": 4, "reason": "Error"}}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{NAME}-abc", "namespace": NAMESPACE, "labels": labels},
           "spec": {"containers": [{"name": "server", "image": "pod"}]},
           "status": {"phase": "Running", "containerStatuses": [
               {"name": "server", "ready": False, "restartCount": 1, "image": "pod", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": crashed}]}}
    client.CoreV1Api(api_client).create_namespaced_pod(NAMESPACE, client.V1Pod.model_validate(pod))

    with pytest.raises(PermanentError) as failure:
        backend.wait_ready(SPEC, timeout_s=1)

    assert failure.value.reason is Reason.CHECKSUM_MISMATCH
    assert failure.value.details["pods"][0]["exit_codes"] == [4]


def test_release_deploy_render_prints_the_pinned_digest_and_generations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`release deploy render` shows what the controller applies: digest annotation and argument, and the
    generation-pinned copy of a version registered with generations."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("RELEASE_HOME", str(home))
    # Logging set up on a captured stream would outlive this test and break the next ones' logs.
    monkeypatch.setattr("release.bootstrap.configure_logging", lambda **_kwargs: None)
    engine = make_engine(f"sqlite:///{home / 'release.db'}")
    migrate(engine)
    with session_scope(engine) as s:
        registry.register_version(s, model="digits", version="4", digest=DIGEST, artifact_uri=SPEC.artifact_uri,
                                  format="torchscript", manifest={}, generations=GENERATIONS)
    engine.dispose()

    assert cli.main(["deploy", "render", "digits", "4", "--json", "--no-gpu"]) == 0
    deployment = json.loads(capsys.readouterr().out)[0]
    template = deployment["spec"]["template"]
    args = template["spec"]["containers"][0]["args"]
    assert template["metadata"]["annotations"]["modelrelease.dev/digest"] == DIGEST
    assert args[args.index("--expect-digest") + 1] == DIGEST
    assert template["spec"]["initContainers"][0]["command"][-6:] == [
        "manifest.json", "1712000000000002", "model.pt", "1712000000000001", "sub/vocab.txt", "1712000000000003"]
