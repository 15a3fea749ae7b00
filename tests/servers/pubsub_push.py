"""Push delivery for the local Pub/Sub server: a subscription whose ``push_config.push_endpoint`` is set gets its
messages POSTed there, as Pub/Sub push subscriptions do, instead of waiting for pulls.

The body is Pub/Sub's push envelope, ``{"message": {"data", "attributes", "messageId", "publishTime"},
"subscription"}``. 102, 200, 201, 202 and 204 acknowledge; any other answer, or none, is a nack, redelivered
after the subscription's minimum retry backoff (1 s without a retry policy), counting towards dead-lettering.
One delivery per subscription is in flight at a time, so ordering keys hold.
"""

from __future__ import annotations

import base64
import threading

import httpx
from google.pubsub_v1 import types

from tests.servers.pubsub_broker import PULL_WAIT_S, Broker

ACK_STATUSES = frozenset({102, 200, 201, 202, 204})


def envelope(subscription: str, received: types.ReceivedMessage) -> dict[str, object]:
    """The JSON body Pub/Sub POSTs for one delivery."""
    message = received.message
    published = message.publish_time.isoformat().replace("+00:00", "Z")
    body: dict[str, object] = {
        "data": base64.b64encode(message.data).decode(), "attributes": dict(message.attributes),
        "messageId": message.message_id, "message_id": message.message_id,
        "publishTime": published, "publish_time": published}
    out: dict[str, object] = {"message": body, "subscription": subscription}
    if received.delivery_attempt:
        out["deliveryAttempt"] = received.delivery_attempt
    return out


class Pusher:
    """One thread per push subscription, started by ``watch`` when a subscription gets an endpoint."""

    def __init__(self, broker: Broker, stopping: threading.Event) -> None:
        self._broker = broker
        self._stopping = stopping
        self._threads: dict[str, threading.Thread] = {}

    def watch(self, name: str) -> None:
        """Start pushing ``name`` if it has an endpoint and no pusher yet (call under ``broker.cond``)."""
        sub = self._broker.subscriptions.get(name)
        running = self._threads.get(name)
        if sub is None or not sub.config.push_config.push_endpoint or (running and running.is_alive()):
            return
        thread = threading.Thread(target=self._run, args=(name,), name=f"pubsub-push-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    def _run(self, name: str) -> None:
        broker = self._broker
        with httpx.Client() as client:
            while not self._stopping.is_set():
                with broker.cond:
                    sub = broker.subscriptions.get(name)
                    if sub is None or not sub.config.push_config.push_endpoint:
                        return
                    endpoint, deadline = sub.config.push_config.push_endpoint, sub.config.ack_deadline_seconds
                    backoff = sub.config.retry_policy.minimum_backoff.total_seconds() or 1.0
                    received = broker.take(sub, limit=1, stream=None, ack_deadline_s=deadline)
                    if not received:
                        broker.cond.wait(min(PULL_WAIT_S, broker.next_deadline() or PULL_WAIT_S))
                        continue
                status = self._post(client, endpoint, envelope(name, received[0]), deadline)
                with broker.cond:
                    if status in ACK_STATUSES:
                        broker.acknowledge(sub, [received[0].ack_id])
                    else:
                        broker.modify_ack_deadline(sub, [received[0].ack_id], backoff)

    @staticmethod
    def _post(client: httpx.Client, endpoint: str, body: dict[str, object], timeout_s: float) -> int | None:
        try:
            return client.post(endpoint, json=body, timeout=timeout_s).status_code
        except httpx.HTTPError:
            return None
