"""Every function target, where functions-framework looks for them (``--source functions/main.py``).

Intake (``functions.intake``): ``on_storage_event`` (Eventarc storage CloudEvent) and ``on_bucket_notification``
(Pub/Sub push of a bucket notification). The release path (``functions.release_path``): ``on_model_event``,
``on_registration``, ``on_prediction_logs``, ``on_alert`` and ``on_tick``, each on a Pub/Sub topic through
Eventarc.
"""

from functions.intake import on_bucket_notification, on_storage_event
from functions.release_path import on_alert, on_model_event, on_prediction_logs, on_registration, on_tick

#: Each target and its functions-framework signature type; ``release up --functions`` serves one process each.
TARGETS = {"on_storage_event": "cloudevent", "on_bucket_notification": "http", "on_model_event": "cloudevent",
           "on_registration": "cloudevent", "on_prediction_logs": "cloudevent", "on_alert": "cloudevent",
           "on_tick": "cloudevent"}

__all__ = ["TARGETS", "on_alert", "on_bucket_notification", "on_model_event", "on_prediction_logs",
           "on_registration", "on_storage_event", "on_tick"]
