"""What a Cloud Logging sink publishes on prediction-logs reaches the monitor's subscription as an event."""

from __future__ import annotations

import json

from release.ports import SubscriptionSpec
from schemas.events import EventType, Topic
from schemas.pod_records import POD_RECORDS_KIND
from tests.cloud.conftest import pull_until

MONITOR = SubscriptionSpec(name="drift-monitor", topic=Topic.PREDICTION_LOGS, ack_deadline_s=60, max_attempts=3)


def test_a_sink_log_entry_is_pulled_as_a_pod_records_event(bus, raw_publisher):
    """A LogEntry published raw (no CloudEvent envelope) is pulled as pod_records.logged carrying the entry."""
    bus.ensure_subscription(MONITOR)
    entry = {"insertId": "abc", "logName": "projects/p/logs/stdout",
             "resource": {"type": "k8s_container", "labels": {"container_name": "server"}},
             "jsonPayload": {"kind": POD_RECORDS_KIND, "records": []}}
    raw_publisher.publish(bus.topic_path(Topic.PREDICTION_LOGS), json.dumps(entry).encode()).result(timeout=10)
    [message] = pull_until(bus, "drift-monitor", count=1)
    assert message.event.type == EventType.POD_RECORDS_LOGGED
    assert message.event.data == entry
    bus.ack(message)
