"""Where a serving pod finds its model files: the artifact's source, and the Cloud Storage FUSE mount option.

Pure, like ``k8s_manifests`` which uses it: no ``kubernetes`` import, no I/O.

With ``model_source="gcsfuse"`` the pod mounts the version's prefix read-only through GKE's Cloud Storage FUSE
CSI driver (the ``gke-gcsfuse/volumes`` annotation has GKE inject the FUSE sidecar) instead of copying it in an
init container, so a large model starts without first landing on local disk. The trust boundary holds:

* the server still runs with ``--expect-digest``, so it reads every file and checks the manifest digest and each
  file's size and SHA-256 before it loads anything or reports ready (``handlers.artifact.verify_model_dir``;
  a ``.mar`` is checked whole and unpacked into the pod's own ``emptyDir``); a version without a registered
  digest is refused here rather than served unchecked;
* the mount sees only the version's own prefix (``only-dir``; for a ``.mar``, the folder holding it), read-only;
* object metadata is cached for the mount's life (``metadata-cache:ttl-secs:-1``): gcsfuse reads the object
  generation it first listed, so a swap in the bucket after the digest check makes reads fail instead of
  returning other bytes. The init container goes further (it copies the generations recorded at registration)
  and stays the default and the fallback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from schemas.errors import PermanentError, Reason

GCSFUSE_DRIVER = "gcsfuse.csi.storage.gke.io"
GCSFUSE_ANNOTATIONS = {"gke-gcsfuse/volumes": "true"}
MODELS_DIR = "/models"
_FUSE_DIR = "/gcs"
_FUSE_VOLUME = "model-files"
# Mount options are one comma-separated string: a prefix must not be able to add options of its own, nor
# name a folder above its own through "." or ".." segments (which object names may contain).
_SAFE_PREFIX = re.compile(r"[A-Za-z0-9._~@+=/-]*")


def artifact_source(artifact_uri: str) -> tuple[str, str]:
    """The artifact's ``gs://`` URI without a trailing slash and where the pod finds a copy locally.

    The local path is fixed rather than derived from the version, so a version such as ``..`` can never
    point the server outside the volume.
    """
    if not artifact_uri.startswith("gs://"):
        raise PermanentError(
            f"Kubernetes pods read artifacts from Cloud Storage, not from {artifact_uri!r}",
            reason=Reason.ROLLOUT_FAILED,
            hint="Set RELEASE_BUCKET to gs://BUCKET[/PREFIX] when RELEASE_SERVING=kubernetes.",
        )
    source = artifact_uri.rstrip("/")
    local = f"{MODELS_DIR}/artifact.mar" if source.endswith(".mar") else f"{MODELS_DIR}/artifact"
    return source, local


@dataclass(frozen=True)
class FuseMount:
    """The pod's parts for a Cloud Storage FUSE mount of one version: volume, server mount, artifact path."""

    volume: dict[str, Any]
    mount: dict[str, Any]
    artifact: str


def fuse_mount(source: str, *, digest: str | None) -> FuseMount:
    """A read-only mount of the prefix holding ``source`` (a ``gs://`` URI from ``artifact_source``)."""
    if not digest:
        raise PermanentError(
            f"{source} has no registered digest, so a FUSE-mounted pod could not check its bytes",
            reason=Reason.ROLLOUT_FAILED,
            hint="Serve it with the init-container copy (RELEASE_K8S_MODEL_SOURCE=init-container).")
    bucket, _, path = source.removeprefix("gs://").partition("/")
    folder, name = (path, "")
    if source.endswith(".mar"):
        folder, _, name = path.rpartition("/")
    if not _SAFE_PREFIX.fullmatch(folder) or (folder and {"", ".", ".."} & set(folder.split("/"))):
        raise PermanentError(
            f"{source}: the prefix {folder!r} is not one a FUSE mount option can name safely",
            reason=Reason.ROLLOUT_FAILED,
            hint="Serve it with the init-container copy (RELEASE_K8S_MODEL_SOURCE=init-container).")
    options = ["implicit-dirs", "metadata-cache:ttl-secs:-1", *([f"only-dir={folder}"] if folder else [])]
    return FuseMount(
        volume={"name": _FUSE_VOLUME, "csi": {"driver": GCSFUSE_DRIVER, "readOnly": True,
                                              "volumeAttributes": {"bucketName": bucket,
                                                                   "mountOptions": ",".join(options)}}},
        mount={"name": _FUSE_VOLUME, "mountPath": _FUSE_DIR, "readOnly": True},
        artifact=f"{_FUSE_DIR}/{name}" if name else _FUSE_DIR,
    )
