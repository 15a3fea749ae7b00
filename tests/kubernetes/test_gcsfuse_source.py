"""Model files through a read-only Cloud Storage FUSE mount: GKE's CSI volume, and the digest check kept."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from release.adapters.k8s_manifests import ServingOptions, render_version
from release.ports import DeploymentSpec
from schemas.errors import PermanentError
from tests.kubernetes.test_manifests import ODD_VERSIONS, validate

DIGEST = "sha256:" + "ab" * 32
FUSE = ServingOptions(model_source="gcsfuse")


def _spec(version: str = "3", *, mar: bool = False, digest: str = DIGEST) -> DeploymentSpec:
    uri = f"gs://models-bkt/models/digits/{version}" + (".mar" if mar else "/")
    return DeploymentSpec(model="digits", version=version, artifact_uri=uri, gpu=True, digest=digest,
                          generations={"manifest.json": 7})


def _pod(spec: DeploymentSpec) -> dict[str, Any]:
    (deployment,) = [o for o in render_version(spec, namespace="ns", options=FUSE) if o["kind"] == "Deployment"]
    validate(deployment)
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


@pytest.mark.parametrize("version", [v for v in ODD_VERSIONS if v != ".."])
def test_fuse_variant_mounts_the_version_prefix_read_only(version: str) -> None:
    """A CSI volume of the version's own prefix, read-only, the sidecar annotation, and no init container."""
    template = _pod(_spec(version))
    pod = template["spec"]
    (volume,) = [v for v in pod["volumes"] if "csi" in v]
    server = pod["containers"][0]
    args = server["args"]

    assert template["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    assert volume["csi"]["driver"] == "gcsfuse.csi.storage.gke.io" and volume["csi"]["readOnly"] is True
    assert volume["csi"]["volumeAttributes"] == {
        "bucketName": "models-bkt",
        "mountOptions": f"implicit-dirs,metadata-cache:ttl-secs:-1,only-dir=models/digits/{version}"}
    assert {"name": volume["name"], "mountPath": "/gcs", "readOnly": True} in server["volumeMounts"]
    assert "initContainers" not in pod
    assert args[args.index("--artifact") + 1] == "/gcs"


def test_fuse_pod_still_checks_the_registered_digest_before_serving() -> None:
    """--expect-digest stays, and a .mar unpacks to the pod's own disk, not into the read-only mount."""
    args = _pod(_spec())["spec"]["containers"][0]["args"]

    assert args[args.index("--expect-digest") + 1] == DIGEST
    assert args[args.index("--work-dir") + 1] == "/models/work"


def test_fuse_mar_mounts_its_folder_and_serves_the_archive() -> None:
    """A .mar is one object: the mount shows the model's folder and the server reads the archive in it."""
    pod = _pod(_spec("m4", mar=True))["spec"]
    (volume,) = [v for v in pod["volumes"] if "csi" in v]
    args = pod["containers"][0]["args"]

    assert volume["csi"]["volumeAttributes"]["mountOptions"].endswith("only-dir=models/digits")
    assert args[args.index("--artifact") + 1] == "/gcs/m4.mar"


def test_fuse_refuses_a_version_without_a_digest() -> None:
    """No registered digest means nothing to check mounted bytes against: refused, with the fallback named."""
    with pytest.raises(PermanentError, match="no registered digest") as caught:
        render_version(_spec(digest=""), namespace="ns", options=FUSE)
    assert "init-container" in caught.value.hint


@pytest.mark.parametrize("prefix", ["models/digits/3,uid=0", "models/digits/..", "models//digits/3"])
def test_fuse_refuses_a_prefix_that_could_widen_the_mount(prefix: str) -> None:
    """A comma would add gcsfuse options of the uploader's choosing, a '..' would mount a parent: refused."""
    spec = replace(_spec(), artifact_uri=f"gs://models-bkt/{prefix}/")
    with pytest.raises(PermanentError, match="mount option"):
        render_version(spec, namespace="ns", options=FUSE)


def test_init_container_copy_stays_the_default() -> None:
    """Without the option, pods copy the pinned generations in an init container and mount no bucket."""
    (deployment, *_) = render_version(_spec(), namespace="ns")
    pod = deployment["spec"]["template"]["spec"]

    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]
    assert not any("csi" in v for v in pod["volumes"])
    assert "gke-gcsfuse/volumes" not in deployment["spec"]["template"]["metadata"]["annotations"]
