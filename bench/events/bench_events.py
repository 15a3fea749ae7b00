"""Publish -> handler latency and burst throughput: the Pub/Sub bus (against our local gRPC server) vs the local bus.

Both buses run the same loop through the ``EventBus`` protocol: a producer commits each event in its own
transaction (``session_scope``) and calls ``flush``; a consumer thread pulls, records when the event reached it
and acks. Latency is measured one event at a time (publish, wait for the handler, next), throughput with one
burst committed in a single transaction and drained by the same consumer. Everything stays on 127.0.0.1,
bounded by ``--events``, ``--burst`` and ``--time-limit``.

    python bench/events/bench_events.py --events 300 --burst 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, like the other benches

from release.db import make_engine, migrate, session_factory, session_scope
from release.ports import EventBus, SubscriptionSpec
from schemas.events import EventType, Topic, make_event

SPEC = SubscriptionSpec(name="bench", topic=Topic.MODEL_EVENTS, ack_deadline_s=60, max_attempts=5)
MODELS = [f"model-{i}" for i in range(8)]


class Consumer(threading.Thread):
    """Pulls and acks in the background; remembers when each event id arrived."""

    def __init__(self, bus: EventBus) -> None:
        super().__init__(daemon=True)
        self.bus = bus
        self.arrived: dict[str, float] = {}
        self.changed = threading.Condition()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for message in self.bus.pull(SPEC.name, max_messages=100, wait_s=0.2):
                now = time.perf_counter()
                self.bus.ack(message)
                with self.changed:
                    self.arrived.setdefault(message.event.id, now)
                    self.changed.notify_all()

    def wait_for(self, ids: set[str], deadline: float) -> bool:
        with self.changed:
            while not ids <= self.arrived.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True


def measure(name: str, bus: EventBus, engine: Any, *, events: int, burst: int, deadline: float) -> dict[str, Any]:
    """Latency percentiles (ms) and burst throughput (events/s) of one bus."""
    bus.ensure_subscription(SPEC)
    consumer = Consumer(bus)
    consumer.start()
    latencies: list[float] = []
    try:
        for i in range(events):
            if time.monotonic() > deadline:
                break
            event = make_event(EventType.DRIFT_MEASURED, {"model": MODELS[i % len(MODELS)], "n": i})
            started = time.perf_counter()
            with session_scope(engine) as session:
                bus.publish(event, topic=Topic.MODEL_EVENTS, session=session)
            bus.flush()
            if not consumer.wait_for({event.id}, deadline):
                break
            latencies.append((consumer.arrived[event.id] - started) * 1000)
        batch = [make_event(EventType.DRIFT_MEASURED, {"model": MODELS[i % len(MODELS)], "n": i})
                 for i in range(burst)]
        started = time.perf_counter()
        with session_scope(engine) as session:
            for event in batch:
                bus.publish(event, topic=Topic.MODEL_EVENTS, session=session)
        bus.flush()
        done = consumer.wait_for({e.id for e in batch}, deadline)
        elapsed = max(consumer.arrived.get(e.id, time.perf_counter()) for e in batch) - started
    finally:
        consumer.stop.set()
        consumer.join()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {"bus": name, "n": len(latencies), "p50": quantiles[49], "p99": quantiles[98],
            "burst": burst if done else sum(e.id in consumer.arrived for e in batch),
            "throughput": (burst if done else 0) / elapsed if elapsed > 0 else 0.0}


def _pubsub(factory: Callable[[], Any]) -> tuple[EventBus, Callable[[], None]]:
    from release.adapters.pubsub_bus import PubSubEventBus
    from tests.servers.pubsub_server import PubSubServer

    server = PubSubServer()
    bus = PubSubEventBus(session_factory=factory, project="bench", emulator_host=server.start())

    def close() -> None:
        bus.close()
        server.stop()

    return bus, close


def _local(factory: Callable[[], Any]) -> tuple[EventBus, Callable[[], None]]:
    from release.adapters.local_bus import LocalEventBus

    bus = LocalEventBus(session_factory=factory)
    return bus, bus.close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=300, help="events for the latency run, one at a time")
    parser.add_argument("--burst", type=int, default=2000, help="events committed at once for throughput")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per bus, at most")
    args = parser.parse_args()

    results = []
    for name, build in (("pubsub (local gRPC server)", _pubsub), ("local (SQLite queue tables)", _local)):
        with tempfile.TemporaryDirectory() as tmp:
            engine = make_engine(f"sqlite:///{tmp}/bench.db")
            migrate(engine)
            try:
                bus, close = build(session_factory(engine))
            except ImportError as e:
                print(f"skipping {name}: {e}", file=sys.stderr)
                continue
            try:
                results.append(measure(name, bus, engine, events=args.events, burst=args.burst,
                                       deadline=time.monotonic() + args.time_limit))
            finally:
                close()
                engine.dispose()

    print("| bus | latency runs | p50 ms | p99 ms | burst | throughput events/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['bus']} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['burst']} | {r['throughput']:.0f} |")


if __name__ == "__main__":
    main()
