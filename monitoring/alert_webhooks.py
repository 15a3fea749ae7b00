"""Best-effort delivery of drift alerts to the webhook URL a version's drift policy names.

The monitor hands each alert over after its transaction commits; one daemon thread posts them, so a slow or
dead receiver never stalls the monitor. Nothing here is retried or persisted: the alert is already on the
``alerts`` topic, and the webhook is only a convenience on top of it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog

log = structlog.get_logger(__name__)

WEBHOOK_TIMEOUT_S = 2.0
# Alerts are rare; a full queue means the receiver is down, and dropping beats growing without bound.
WEBHOOK_QUEUE_SIZE = 100

WebhookSender = Callable[[str, dict[str, Any]], None]


def post_json(url: str, payload: dict[str, Any]) -> None:
    """POST ``payload`` as JSON with a short timeout; raises on a transport error or non-2xx answer."""
    httpx.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_S).raise_for_status()


class WebhookQueue:
    """Posts alerts from one daemon thread, so a slow or dead receiver never stalls the monitor."""

    def __init__(self, send: WebhookSender) -> None:
        self._send = send
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=WEBHOOK_QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, url: str, payload: dict[str, Any]) -> None:
        """Queue one POST; dropped with a log line when the queue is full."""
        try:
            self._queue.put_nowait((url, payload))
        except queue.Full:
            log.warning("drift.webhook_dropped", url=url, event_id=payload.get("id"))
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="drift-webhook", daemon=True)
                self._thread.start()

    def wait(self, timeout_s: float) -> bool:
        """True once every queued POST has been attempted."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _run(self) -> None:
        while True:
            url, payload = self._queue.get()
            try:
                self._send(url, payload)
            except Exception as error:  # best effort: logged, never raised
                log.warning("drift.webhook_failed", url=url, event_id=payload.get("id"), error=str(error))
            finally:
                self._queue.task_done()
