"""What the Kubernetes objects of a model version are called, and how they are labelled and annotated.

Pure, like ``k8s_manifests`` that renders the objects around these names: no ``kubernetes`` import, no I/O.

Model names and versions allow characters, lengths and leading digits that Kubernetes names and
label values do not (``V1.0_rc``, ``2024.01``, a 64-character version). ``object_name`` maps a
(model, version) pair to a DNS-1035 label (the strictest rule, the one Services need): lowercase, ``-`` for
anything else, a letter first, at most 63 characters, ending in a short hash of the *real* pair so that
``V1`` and ``v1`` or two long versions sharing a prefix never collide. The real values travel in
annotations; labels carry them only when they are valid label values, else a mapped value of the same kind.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from release.ports import DeploymentSpec

PART_OF = "model-release"
APP_NAME = "model-server"

_HASH_LEN = 10
_MAX_NAME = 63  # DNS-1035 label: Service names must be one, and one name serves every object of a version
_MAX_LABEL_VALUE = 63
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")
_NOT_NAME_CHARS = re.compile(r"[^a-z0-9]+")


def _digest(model: str, version: str) -> str:
    return hashlib.sha256(f"{model}\x00{version}".encode()).hexdigest()[:_HASH_LEN]


def _slug(value: str) -> str:
    return _NOT_NAME_CHARS.sub("-", value.lower()).strip("-")


def object_name(model: str, version: str) -> str:
    """The one name of every object of a version: a DNS-1035 label, deterministic, unique per pair."""
    stem = "-".join(part for part in (_slug(model), _slug(version)) if part)
    if not stem[:1].isalpha():
        stem = f"m-{stem}"
    stem = stem[: _MAX_NAME - 1 - _HASH_LEN].rstrip("-")
    return f"{stem}-{_digest(model, version)}"


def label_value(value: str) -> str:
    """``value`` when Kubernetes accepts it as a label value, else a mapped value that it accepts."""
    if len(value) <= _MAX_LABEL_VALUE and _LABEL_VALUE.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_HASH_LEN]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("._-")[: _MAX_LABEL_VALUE - 1 - _HASH_LEN]
    stem = stem.rstrip("._-")
    return f"{stem}-{digest}" if stem else digest


def selector_labels(model: str, version: str) -> dict[str, str]:
    """The labels that pick a version's pods (immutable in a Deployment once created)."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": object_name(model, version)}


def _labels(spec: DeploymentSpec) -> dict[str, str]:
    return {
        **selector_labels(spec.model, spec.version),
        "app.kubernetes.io/version": label_value(spec.version),
        "app.kubernetes.io/component": "serving",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": PART_OF,
        "modelrelease.dev/model": label_value(spec.model),
        "modelrelease.dev/version": label_value(spec.version),
    }


DIGEST_ANNOTATION = "modelrelease.dev/digest"


def _annotations(spec: DeploymentSpec) -> dict[str, str]:
    return {
        "modelrelease.dev/model": spec.model,
        "modelrelease.dev/version": spec.version,
        "modelrelease.dev/artifact-uri": spec.artifact_uri,
        # The registered digest: what the pods verify their files against (--expect-digest).
        **({DIGEST_ANNOTATION: spec.digest} if spec.digest else {}),
    }


def metadata(spec: DeploymentSpec, *, namespace: str) -> dict[str, Any]:
    """The ``metadata`` every object of a version carries: its one name, its labels and its annotations."""
    return {
        "name": object_name(spec.model, spec.version),
        "namespace": namespace,
        "labels": _labels(spec),
        "annotations": _annotations(spec),
    }
