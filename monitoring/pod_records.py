"""Prediction records that pods printed, as the Cloud Logging sink delivers them: untrusted input.

The sink publishes each matching LogEntry on ``prediction-logs``; the bus hands it over as a
``pod_records.logged`` event whose data is the entry (``schemas.pod_records.log_entry_event``). A pod runs model
code, so the line it printed proves nothing about who printed it. Who did comes from the entry's ``resource``
labels, which GKE's logging agent sets from the container the line came from (a pod can set ``labels`` through
special JSON fields, never ``resource``): the namespace serving pods run in, the server container, and the pod
name, whose stem is the name of its Deployment, ``object_name(model, version)`` of the version it serves. A line
is accepted only when every record names exactly that version; anything else (malformed, too many records,
another version) is refused whole with ``EVENT_INVALID``, settled by the consumer and never retried.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from release.adapters.k8s_manifests import SERVER_CONTAINER
from release.adapters.k8s_names import object_name
from schemas.errors import PermanentError, Reason
from schemas.pod_records import PodRecordsLine
from schemas.predictions import PredictionBatch

_CONTAINER_RESOURCE = "k8s_container"
# A Deployment's pod is named DEPLOYMENT-TEMPLATEHASH-SUFFIX.
_POD_NAME_PARTS = 3


def pod_batch(entry: dict[str, Any], *, namespace: str) -> PredictionBatch:
    """The records of one sink-delivered LogEntry, once they are known to come from the version they name."""
    deployment = _deployment(entry, namespace=namespace)
    try:
        line = PodRecordsLine.model_validate(entry.get("jsonPayload"))
    except ValidationError as error:
        raise PermanentError(f"pod records line from {deployment} is invalid: {error.error_count()} errors",
                             reason=Reason.EVENT_INVALID) from error
    claimed = {(r.model, r.version) for r in line.records}
    if any(object_name(model, version) != deployment for model, version in claimed):
        raise PermanentError(f"pod of {deployment} printed records of another version; refused",
                             reason=Reason.EVENT_INVALID, details={"deployment": deployment})
    return PredictionBatch(records=line.records)


def _deployment(entry: dict[str, Any], *, namespace: str) -> str:
    """The Deployment of the serving container that printed ``entry``, from labels the pod cannot set."""
    resource = entry.get("resource")
    if not isinstance(resource, dict) or resource.get("type") != _CONTAINER_RESOURCE:
        raise PermanentError("log entry is not from a Kubernetes container", reason=Reason.EVENT_INVALID)
    labels = resource.get("labels")
    if not isinstance(labels, dict):
        raise PermanentError("log entry is not from a Kubernetes container", reason=Reason.EVENT_INVALID)
    pod = labels.get("pod_name")
    if (labels.get("namespace_name") != namespace or labels.get("container_name") != SERVER_CONTAINER
            or not isinstance(pod, str) or pod.count("-") < _POD_NAME_PARTS - 1):
        raise PermanentError(f"log entry is not from a serving container in namespace {namespace!r}",
                             reason=Reason.EVENT_INVALID)
    return pod.rsplit("-", _POD_NAME_PARTS - 1)[0]
