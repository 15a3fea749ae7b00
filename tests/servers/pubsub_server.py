"""A local server speaking the Pub/Sub gRPC API, so tests run the real ``google-cloud-pubsub`` client.

The official emulator cannot be installed here, and a mock of the client would test nothing. This module is
the gRPC side: the Publisher and Subscriber services, unary calls and StreamingPull with its reader thread, and
push subscriptions (``tests.servers.pubsub_push``).
What a message goes through (leases, redelivery, dead letters, ordering keys, flow control) is the broker's
job, in ``tests.servers.pubsub_broker``.

Use ``PubSubServer().start()`` in a test process (returns ``host:port`` for ``PUBSUB_EMULATOR_HOST``), or run
it alone: ``python -m tests.servers.pubsub_server --port 8085``.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from google.pubsub_v1 import types

from tests.servers.pubsub_broker import DEFAULT_ACK_DEADLINE_S, PULL_WAIT_S, AbortError, Broker, Stream
from tests.servers.pubsub_push import Pusher

_SWEEP_INTERVAL_S = 0.05


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
        self._broker = Broker()
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._pusher = Pusher(self._broker, self._stopping)

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
            except AbortError as e:
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

        def create_subscription(config: types.Subscription) -> types.Subscription:
            created = broker.create_subscription(config)
            self._pusher.watch(created.name)
            return created

        def modify_push_config(request: types.ModifyPushConfigRequest) -> None:
            broker.subscription(request.subscription).config.push_config = request.push_config
            self._pusher.watch(request.subscription)
            broker.cond.notify_all()

        return grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", {
            "CreateSubscription": _unary(self._call(create_subscription), types.Subscription,
                                         types.Subscription.serialize),
            "ModifyPushConfig": _unary(self._call(modify_push_config), types.ModifyPushConfigRequest, _empty),
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
        give_up = time.monotonic() + PULL_WAIT_S
        with broker.cond:
            while True:
                try:
                    sub = broker.subscription(request.subscription)
                except AbortError as e:
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
            except AbortError as e:
                context.abort(e.code, e.message)
        stream = Stream(max_outstanding=first.max_outstanding_messages,
                        ack_deadline_s=first.stream_ack_deadline_seconds or DEFAULT_ACK_DEADLINE_S)
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
