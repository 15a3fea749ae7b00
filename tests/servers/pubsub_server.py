"""A local server speaking the Pub/Sub gRPC API, so tests run the real ``google-cloud-pubsub`` client.

The official emulator cannot be installed here, and a mock of the client would test nothing. This server keeps
the semantics our adapter relies on: at-least-once delivery with ack deadlines and redelivery, per-delivery
``delivery_attempt`` counting, dead-letter forwarding after ``max_delivery_attempts`` (with the attributes
real Pub/Sub adds), ordering keys (with ``enable_message_ordering``, no message of a key is delivered while an
earlier one of that key is unacknowledged), fan-out to every subscription of a topic, and the per-stream flow
control a StreamingPull client asks for. It does not implement retry-policy backoff, filters, push, snapshots
or seek.

Use ``PubSubServer().start()`` in a test process (returns ``host:port`` for ``PUBSUB_EMULATOR_HOST``), or run
it alone: ``python -m tests.servers.pubsub_server --port 8085``.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.pubsub_v1 import types

_DEFAULT_ACK_DEADLINE_S = 10
_DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
_SWEEP_INTERVAL_S = 0.05
_PULL_WAIT_S = 1.0


class _AbortError(Exception):
    """A gRPC error status to return to the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Stream:
    """One StreamingPull connection and the deliveries it holds (its flow control counts them)."""

    max_outstanding: int
    ack_deadline_s: float
    outstanding: int = 0


@dataclass
class _Entry:
    """One message in one subscription until it is acknowledged or dead-lettered."""

    seq: int
    message: types.PubsubMessage
    attempts: int = 0
    ack_id: str | None = None
    deadline: float = 0.0
    stream: _Stream | None = None


@dataclass
class _Subscription:
    config: types.Subscription
    entries: dict[int, _Entry] = field(default_factory=dict)
    leased: dict[str, _Entry] = field(default_factory=dict)

    @property
    def max_attempts(self) -> int | None:
        policy = self.config.dead_letter_policy
        return policy.max_delivery_attempts if policy.dead_letter_topic else None


class _Broker:
    """Topics, subscriptions and deliveries; every method runs under ``self.cond``'s lock."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.topics: dict[str, types.Topic] = {}
        self.subscriptions: dict[str, _Subscription] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------------------------ admin
    def create_topic(self, topic: types.Topic) -> types.Topic:
        if not topic.name.startswith("projects/") or "/topics/" not in topic.name:
            raise _AbortError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid topic name {topic.name!r}")
        if topic.name in self.topics:
            raise _AbortError(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
        self.topics[topic.name] = topic
        return topic

    def topic(self, name: str) -> types.Topic:
        if name not in self.topics:
            raise _AbortError(grpc.StatusCode.NOT_FOUND, f"Topic not found: {name}")
        return self.topics[name]

    def delete_topic(self, name: str) -> None:
        self.topic(name)
        del self.topics[name]
        for sub in self.subscriptions.values():
            if sub.config.topic == name:
                sub.config.topic = "_deleted-topic_"

    def create_subscription(self, config: types.Subscription) -> types.Subscription:
        if config.name in self.subscriptions:
            raise _AbortError(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
        self.topic(config.topic)
        if not config.ack_deadline_seconds:
            config.ack_deadline_seconds = _DEFAULT_ACK_DEADLINE_S
        if not 10 <= config.ack_deadline_seconds <= 600:
            raise _AbortError(grpc.StatusCode.INVALID_ARGUMENT, "ack_deadline_seconds must be in 10..600")
        policy = config.dead_letter_policy
        if policy.dead_letter_topic:
            if not policy.max_delivery_attempts:
                policy.max_delivery_attempts = _DEFAULT_MAX_DELIVERY_ATTEMPTS
            if not 5 <= policy.max_delivery_attempts <= 100:
                raise _AbortError(grpc.StatusCode.INVALID_ARGUMENT, "max_delivery_attempts must be in 5..100")
        self.subscriptions[config.name] = _Subscription(config=config)
        return config

    def subscription(self, name: str) -> _Subscription:
        if name not in self.subscriptions:
            raise _AbortError(grpc.StatusCode.NOT_FOUND, f"Subscription does not exist: {name}")
        return self.subscriptions[name]

    def delete_subscription(self, name: str) -> None:
        self.subscription(name)
        del self.subscriptions[name]
        self.cond.notify_all()

    # ------------------------------------------------------------------------------------ data
    def publish(self, topic_name: str, messages: list[types.PubsubMessage]) -> list[str]:
        self.topic(topic_name)
        ids = []
        for message in messages:
            seq = next(self._ids)
            stored = types.PubsubMessage(data=message.data, attributes=dict(message.attributes),
                                         ordering_key=message.ordering_key, message_id=str(seq),
                                         publish_time=datetime.now(UTC))
            for sub in self.subscriptions.values():
                if sub.config.topic == topic_name:
                    sub.entries[seq] = _Entry(seq=seq, message=stored)
            ids.append(str(seq))
        self.cond.notify_all()
        return ids

    def take(self, sub: _Subscription, *, limit: int, stream: _Stream | None,
             ack_deadline_s: float) -> list[types.ReceivedMessage]:
        """Lease up to ``limit`` deliverable messages, oldest first, honouring ordering keys."""
        self._sweep(sub, time.monotonic())
        if stream is not None and stream.max_outstanding:
            limit = min(limit, stream.max_outstanding - stream.outstanding)
        received: list[types.ReceivedMessage] = []
        blocked: set[str] = set()
        ordered = sub.config.enable_message_ordering
        for entry in list(sub.entries.values()):
            if len(received) >= limit:
                break
            key = entry.message.ordering_key if ordered else ""
            if key:
                if key in blocked:
                    continue
                # Whether this one is leased or about to be: later messages of its key wait for its ack.
                blocked.add(key)
            if entry.ack_id is not None:
                continue
            entry.attempts += 1
            entry.ack_id = f"{sub.config.name}#{entry.seq}#{entry.attempts}"
            entry.deadline = time.monotonic() + ack_deadline_s
            entry.stream = stream
            if stream is not None:
                stream.outstanding += 1
            sub.leased[entry.ack_id] = entry
            attempt = entry.attempts if sub.max_attempts is not None else 0
            received.append(types.ReceivedMessage(ack_id=entry.ack_id, message=entry.message,
                                                  delivery_attempt=attempt))
        return received

    def acknowledge(self, sub: _Subscription, ack_ids: list[str]) -> None:
        for ack_id in ack_ids:
            entry = sub.leased.get(ack_id)
            if entry is not None:
                self._release(sub, entry)
                del sub.entries[entry.seq]
        self.cond.notify_all()

    def modify_ack_deadline(self, sub: _Subscription, ack_ids: list[str], seconds: float) -> None:
        now = time.monotonic()
        for ack_id in ack_ids:
            entry = sub.leased.get(ack_id)
            if entry is None:
                continue
            if seconds <= 0:
                self._release(sub, entry)
            else:
                entry.deadline = now + seconds
        self._sweep(sub, now)
        self.cond.notify_all()

    def sweep(self) -> None:
        """Expire leases and dead-letter what ran out of attempts, in every subscription."""
        now = time.monotonic()
        changed = False
        for sub in list(self.subscriptions.values()):
            changed = self._sweep(sub, now) or changed
        if changed:
            self.cond.notify_all()

    def next_deadline(self) -> float:
        """Seconds until the next lease expires (bounded), so waiting streams wake up for redeliveries."""
        now = time.monotonic()
        deadlines = [e.deadline for s in self.subscriptions.values() for e in s.leased.values()]
        return max(0.0, min([*deadlines, now + _PULL_WAIT_S]) - now)

    def _sweep(self, sub: _Subscription, now: float) -> bool:
        changed = False
        for entry in [e for e in sub.leased.values() if e.deadline <= now]:
            self._release(sub, entry)
            changed = True
        max_attempts = sub.max_attempts
        if max_attempts is None:
            return changed
        for entry in [e for e in sub.entries.values() if e.ack_id is None and e.attempts >= max_attempts]:
            if self._dead_letter(sub, entry):
                del sub.entries[entry.seq]
                changed = True
        return changed

    def _release(self, sub: _Subscription, entry: _Entry) -> None:
        assert entry.ack_id is not None
        del sub.leased[entry.ack_id]
        if entry.stream is not None:
            entry.stream.outstanding -= 1
        entry.ack_id, entry.stream = None, None

    def _dead_letter(self, sub: _Subscription, entry: _Entry) -> bool:
        target = sub.config.dead_letter_policy.dead_letter_topic
        if target not in self.topics:
            return False  # Real Pub/Sub keeps the message when it cannot forward it; so do we.
        project, _, name = sub.config.name.removeprefix("projects/").partition("/subscriptions/")
        attributes = dict(entry.message.attributes)
        attributes.update({
            "CloudPubSubDeadLetterSourceDeliveryCount": str(entry.attempts),
            "CloudPubSubDeadLetterSourceSubscription": name,
            "CloudPubSubDeadLetterSourceSubscriptionProject": project,
            "CloudPubSubDeadLetterSourceTopicPublishTime": entry.message.publish_time.isoformat(),
        })
        self.publish(target, [types.PubsubMessage(data=entry.message.data, attributes=attributes,
                                                  ordering_key=entry.message.ordering_key)])
        return True


def _empty(_: object) -> bytes:
    return b""  # google.protobuf.Empty serializes to no bytes


def _unary(fn: Callable[[Any, grpc.ServicerContext], Any], request_type: Any,
           response_serializer: Callable[[Any], bytes]) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=request_type.deserialize,
                                               response_serializer=response_serializer)


class PubSubServer:
    """The Publisher and Subscriber services on a loopback port, served from threads of this process."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, max_workers: int = 32) -> None:
        self._host = host
        self._port = port
        self._max_workers = max_workers
        self._broker = _Broker()
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None

    def start(self) -> str:
        """Start serving; returns ``host:port`` (what ``PUBSUB_EMULATOR_HOST`` expects)."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers,
                                                        thread_name_prefix="pubsub-server"))
        server.add_generic_rpc_handlers((self._publisher_handler(), self._subscriber_handler()))
        self._port = server.add_insecure_port(f"{self._host}:{self._port}")
        server.start()
        self._server = server
        self._sweeper = threading.Thread(target=self._sweep_forever, name="pubsub-server-sweeper",
                                         daemon=True)
        self._sweeper.start()
        return self.address

    @property
    def address(self) -> str:
        """``host:port`` of the running server."""
        return f"{self._host}:{self._port}"

    def stop(self, *, grace_s: float = 1.0) -> None:
        """Stop serving; open streams end, so clients shut down without waiting."""
        self._stopping.set()
        with self._broker.cond:
            self._broker.cond.notify_all()
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        if self._sweeper is not None:
            self._sweeper.join()
            self._sweeper = None

    def _sweep_forever(self) -> None:
        while not self._stopping.wait(_SWEEP_INTERVAL_S):
            with self._broker.cond:
                self._broker.sweep()

    def _call(self, fn: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                with self._broker.cond:
                    return fn(request)
            except _AbortError as e:
                context.abort(e.code, e.message)

        return handler

    # ------------------------------------------------------------------------------------ Publisher
    def _publisher_handler(self) -> grpc.GenericRpcHandler:
        broker = self._broker

        def list_topics(request: types.ListTopicsRequest) -> types.ListTopicsResponse:
            prefix = request.project + "/topics/"
            topics = [t for n, t in broker.topics.items() if n.startswith(prefix)]
            return types.ListTopicsResponse(topics=topics)

        def list_topic_subscriptions(request: types.ListTopicSubscriptionsRequest,
                                     ) -> types.ListTopicSubscriptionsResponse:
            broker.topic(request.topic)
            names = [n for n, s in broker.subscriptions.items() if s.config.topic == request.topic]
            return types.ListTopicSubscriptionsResponse(subscriptions=names)

        def publish(request: types.PublishRequest) -> types.PublishResponse:
            return types.PublishResponse(message_ids=broker.publish(request.topic, list(request.messages)))

        return grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", {
            "CreateTopic": _unary(self._call(broker.create_topic), types.Topic, types.Topic.serialize),
            "GetTopic": _unary(self._call(lambda r: broker.topic(r.topic)), types.GetTopicRequest,
                               types.Topic.serialize),
            "DeleteTopic": _unary(self._call(lambda r: broker.delete_topic(r.topic)),
                                  types.DeleteTopicRequest, _empty),
            "ListTopics": _unary(self._call(list_topics), types.ListTopicsRequest,
                                 types.ListTopicsResponse.serialize),
            "ListTopicSubscriptions": _unary(self._call(list_topic_subscriptions),
                                             types.ListTopicSubscriptionsRequest,
                                             types.ListTopicSubscriptionsResponse.serialize),
            "Publish": _unary(self._call(publish), types.PublishRequest, types.PublishResponse.serialize),
        })

    # ------------------------------------------------------------------------------------ Subscriber
    def _subscriber_handler(self) -> grpc.GenericRpcHandler:
        broker = self._broker

        def acknowledge(request: types.AcknowledgeRequest) -> None:
            broker.acknowledge(broker.subscription(request.subscription), list(request.ack_ids))

        def modify_ack_deadline(request: types.ModifyAckDeadlineRequest) -> None:
            broker.modify_ack_deadline(broker.subscription(request.subscription), list(request.ack_ids),
                                       request.ack_deadline_seconds)

        return grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", {
            "CreateSubscription": _unary(self._call(broker.create_subscription), types.Subscription,
                                         types.Subscription.serialize),
            "GetSubscription": _unary(self._call(lambda r: broker.subscription(r.subscription).config),
                                      types.GetSubscriptionRequest, types.Subscription.serialize),
            "DeleteSubscription": _unary(self._call(lambda r: broker.delete_subscription(r.subscription)),
                                         types.DeleteSubscriptionRequest, _empty),
            "Acknowledge": _unary(self._call(acknowledge), types.AcknowledgeRequest, _empty),
            "ModifyAckDeadline": _unary(self._call(modify_ack_deadline), types.ModifyAckDeadlineRequest,
                                        _empty),
            "Pull": _unary(self._pull, types.PullRequest, types.PullResponse.serialize),
            "StreamingPull": grpc.stream_stream_rpc_method_handler(
                self._streaming_pull, request_deserializer=types.StreamingPullRequest.deserialize,
                response_serializer=types.StreamingPullResponse.serialize),
        })

    def _pull(self, request: types.PullRequest, context: grpc.ServicerContext) -> types.PullResponse:
        broker = self._broker
        give_up = time.monotonic() + _PULL_WAIT_S
        with broker.cond:
            while True:
                try:
                    sub = broker.subscription(request.subscription)
                except _AbortError as e:
                    context.abort(e.code, e.message)
                received = broker.take(sub, limit=request.max_messages or 1, stream=None,
                                       ack_deadline_s=sub.config.ack_deadline_seconds)
                left = give_up - time.monotonic()
                if received or left <= 0 or self._stopping.is_set():
                    return types.PullResponse(received_messages=received)
                broker.cond.wait(min(left, broker.next_deadline()))

    def _streaming_pull(self, requests: Iterator[types.StreamingPullRequest],
                        context: grpc.ServicerContext) -> Iterator[types.StreamingPullResponse]:
        broker = self._broker
        first = next(requests, None)
        if first is None:
            return
        name = first.subscription
        with broker.cond:
            try:
                broker.subscription(name)
            except _AbortError as e:
                context.abort(e.code, e.message)
        stream = _Stream(max_outstanding=first.max_outstanding_messages,
                         ack_deadline_s=first.stream_ack_deadline_seconds or _DEFAULT_ACK_DEADLINE_S)
        closed = threading.Event()
        self._apply_stream_request(name, first)
        # The client half of the stream is read on its own thread: acks and heartbeats arrive there while this
        # generator waits for messages, and its end is how we learn that the client is gone.
        reader = threading.Thread(target=self._read_stream, args=(name, requests, closed),
                                  name="pubsub-server-stream-reader", daemon=True)
        reader.start()
        while not closed.is_set() and not self._stopping.is_set() and context.is_active():
            with broker.cond:
                sub = broker.subscriptions.get(name)
                if sub is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"Subscription does not exist: {name}")
                    return
                received = broker.take(sub, limit=1000, stream=stream, ack_deadline_s=stream.ack_deadline_s)
                if not received:
                    broker.cond.wait(broker.next_deadline())
                    continue
            yield types.StreamingPullResponse(received_messages=received)

    def _read_stream(self, name: str, requests: Iterator[types.StreamingPullRequest],
                     closed: threading.Event) -> None:
        try:
            for request in requests:
                self._apply_stream_request(name, request)
        except (grpc.RpcError, ValueError):
            pass  # the client went away; ending the response stream below is all there is to do
        finally:
            closed.set()
            with self._broker.cond:
                self._broker.cond.notify_all()

    def _apply_stream_request(self, name: str, request: types.StreamingPullRequest) -> None:
        broker = self._broker
        with broker.cond:
            sub = broker.subscriptions.get(name)
            if sub is None:
                return
            if request.ack_ids:
                broker.acknowledge(sub, list(request.ack_ids))
            for ack_id, seconds in zip(request.modify_deadline_ack_ids, request.modify_deadline_seconds,
                                       strict=False):
                broker.modify_ack_deadline(sub, [ack_id], seconds)


def main() -> None:
    """Serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    args = parser.parse_args()
    server = PubSubServer(host=args.host, port=args.port)
    print(server.start(), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
