"""Function targets for the release path after intake, one per subscription of the control plane. Each takes
our event out of the Pub/Sub message Eventarc delivers and calls one service; every service is idempotent
under duplicates and reordering (level-triggered controller, de-duplicated drift batches, conditional
rollbacks), so a redelivered message changes nothing.

========================  ====================  ==========================================================
target                    topic                 service
========================  ====================  ==========================================================
``on_model_event``        ``model-events``      ``Controller.handle``: the one step the version's state calls for
``on_registration``       ``model-events``      ``DriftMonitor.handle_registration``: the reference profile
``on_prediction_logs``    ``prediction-logs``   ``DriftMonitor.handle``: windows, drift, alerts
``on_alert``              ``alerts``            ``Controller.react_to_alert``: rollback by policy
``on_tick``               ``release-ticks``     ``Controller.handle_tick``: wake versions whose due event was lost
``on_prediction_logs``    ``release-ticks``     ``DriftMonitor.flush``: close windows that aged
========================  ====================  ==========================================================

The drift monitor keeps its open windows in memory, so ``on_prediction_logs`` runs as one instance (Cloud Run
``--max-instances 1``; one functions-framework process locally), and the ticks that close aged windows reach that
same instance through a second subscription (``DRIFT_TICKS_SUBSCRIPTION``).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from functions.runtime import current_app, pubsub_target
from monitoring.monitor import DriftMonitor
from monitoring.service import drift_monitor
from schemas.events import CloudEvent, EventType

#: On ``release-ticks``, pushed to ``on_prediction_logs``: the ticks that close the monitor's aged windows.
DRIFT_TICKS_SUBSCRIPTION = "drift-ticks"


@functools.cache
def _monitor() -> DriftMonitor:
    return drift_monitor(current_app())


@pubsub_target
def on_model_event(event: CloudEvent) -> object:
    """A model event -> the controller's step for the version it names."""
    return current_app().controller.handle(event)


@pubsub_target
def on_registration(event: CloudEvent) -> None:
    """``model.registered`` -> the version's drift reference profile."""
    _monitor().handle_registration(event)


@pubsub_target
def on_prediction_logs(event: CloudEvent) -> None:
    """A batch of prediction records -> drift windows; a window that closes is measured and may alert. A tick
    closes the windows that aged."""
    if event.type == EventType.TICK:
        _monitor().flush(datetime.now(UTC))
    else:
        _monitor().handle(event)


@pubsub_target
def on_tick(event: CloudEvent) -> object:
    """A tick -> the controller's safety net: versions whose due event was lost are woken."""
    return current_app().controller.handle_tick(event)


@pubsub_target
def on_alert(event: CloudEvent) -> object:
    """An alert -> the rollback its policy asked for, if any."""
    return current_app().controller.react_to_alert(event)
