"""Prediction records as a serving pod writes them: one JSON line on stdout per batch, for a Cloud Logging sink.

With Gateway API routing, requests reach the pods without passing the Python router, so the pods make the
records themselves (``handlers/prediction_emitter.py``). A pod holds no secrets and publishes nothing: it prints
``PodRecordsLine`` objects as JSON lines. GKE's logging agent turns each line into a LogEntry whose
``jsonPayload`` is the line; a Cloud Logging sink whose filter matches ``POD_RECORDS_KIND`` routes those entries
to the ``prediction-logs`` topic (``deploy/gcp/setup.sh``), where the monitor reads them
(``monitoring/pod_records.py``).

A pod runs model code, so everything in a line is a claim: the monitor bounds its size, validates it, and
accepts a record only for the model and version of the Deployment the line came from.

Who records a request: the router records what it proxies and tells the pod so with ``RECORDED_BY_HEADER``; a
pod records only requests without that header. So a request is recorded once whether it came through the
router, through a Gateway, or (in-cluster router behind a Gateway) through both.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import PermanentError, Reason
from schemas.events import CloudEvent, EventType
from schemas.predictions import PredictionRecord

#: The ``kind`` of every line; the sink's log filter selects entries by it.
POD_RECORDS_KIND: Literal["modelrelease.dev/prediction-records.v1"] = "modelrelease.dev/prediction-records.v1"
#: The request header by which the router says it records the request itself.
RECORDED_BY_HEADER = "x-prediction-recorded-by"
#: The most a pod writes in one line. The container runtime splits longer lines into partial ones (containerd's
#: default line limit is 16 KiB), which would no longer parse as JSON; a record alone larger than this (wide
#: inputs, a thousand values and more) is dropped and counted rather than cut.
MAX_LINE_BYTES = 16_000
#: The largest sink message read: a LogEntry is at most 256 KiB; anything larger is not one.
MAX_ENTRY_BYTES = 300_000
LOGGING_SOURCE = "//logging.googleapis.com"
#: The most records one line carries.
MAX_RECORDS_PER_LINE = 500


class PodRecordsLine(BaseModel):
    """One line a pod prints: a batch of records of the one version it serves."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # the logging agent adds fields (severity, time)

    kind: Literal["modelrelease.dev/prediction-records.v1"]
    records: Annotated[list[PredictionRecord], Field(min_length=1, max_length=MAX_RECORDS_PER_LINE)]


def log_entry_event(data: bytes) -> CloudEvent | None:
    """The event for a message the logging sink delivered (data: a LogEntry's JSON), or None when it is not one.

    The entry is only wrapped here, size-checked and unparsed beyond its top level; the monitor validates it
    (``monitoring.pod_records``). The entry's ``insertId``, unique per entry, is the event id, so a redelivered
    message is counted once.
    """
    if len(data) > MAX_ENTRY_BYTES:
        raise PermanentError(f"message of {len(data)} bytes is larger than a log entry may be ({MAX_ENTRY_BYTES})",
                             reason=Reason.EVENT_INVALID)
    try:
        entry: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("jsonPayload"), dict):
        return None
    insert_id = entry.get("insertId")
    if not isinstance(insert_id, str) or not insert_id:
        raise PermanentError("log entry without an insertId", reason=Reason.EVENT_INVALID)
    return CloudEvent(id="log:" + hashlib.sha256(insert_id.encode()).hexdigest()[:60], source=LOGGING_SOURCE,
                      type=EventType.POD_RECORDS_LOGGED, data=entry)
