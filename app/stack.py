"""``release up [--only ROLE]``: the whole embedded stack, or one role of the control plane, until stopped.

Roles (``ROLES``), each a set of threads plus routes served on ``RELEASE_PORT`` by uvicorn in the main thread:

* ``controller``: the controller's consumers of ``model-events`` (which also relays the outbox) and of
  ``release-ticks``, and a timer publishing a tick every ``RELEASE_TICK_INTERVAL_S`` (the safety net that wakes
  versions whose due event was lost and retires superseded versions after their grace period);
* ``router``: the prediction router, its prediction-log publisher and an outbox relay;
* ``api``: the token-protected management API, the read API and dashboard (``app.console``) and an outbox relay;
* ``monitor``: the drift monitor's consumer of ``prediction-logs`` and its window flush;
* ``intake``: the local bucket watcher (folder buckets only), the periodic bucket reconcile and an outbox relay;
* ``all`` (default): every role in one process, the embedded shape.

Every role answers ``GET /healthz`` (200 while its threads run, 503 naming the ones that stopped) and
``GET /metrics`` (Prometheus text), so Kubernetes probes and Managed Prometheus work for each Deployment of
``deploy/k8s/control-plane.yaml``. ``all`` and ``api`` also serve the read API under ``/api/v1`` (with its
event stream and OpenAPI document) and the dashboard under ``/ui/``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import structlog
import uvicorn
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from app.console import console_routes
from app.management_api import management_routes
from monitoring.monitor import MONITOR_SUBSCRIPTION, PROFILE_SUBSCRIPTION, DriftMonitor, subscriptions
from release.adapters.local_bucket import LocalBucketWatcher, LocalFolderStore
from release.bootstrap import CONTROLLER_SUBSCRIPTION, TICKS_SUBSCRIPTION, App, default_policy
from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, build_router_app
from release.waits import publish_tick
from release.worker import Consumer
from schemas.errors import ReleaseError
from schemas.events import CloudEvent, EventType
from schemas.tables import utcnow

log = structlog.get_logger(__name__)


ROLES = ("all", "controller", "router", "api", "monitor", "intake")


def _loop(stop: threading.Event, interval_s: float, body: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread (not started) running ``body`` every ``interval_s`` until ``stop``; errors are logged."""
    def run() -> None:
        while not stop.is_set():
            try:
                body()
            except ReleaseError as error:
                log.warning(f"{name}.failed", error=str(error))
            except Exception:
                log.exception(f"{name}.crashed")
            stop.wait(interval_s)

    return threading.Thread(target=run, name=name, daemon=True)


def _consume(stop: threading.Event, consumer: Consumer, name: str, *, retry_s: float) -> threading.Thread:
    """A daemon thread (not started) running ``consumer`` until ``stop``; a failed pull or relay is retried."""
    return _loop(stop, retry_s, lambda: consumer.run(stop), name)


@dataclass
class _Parts:
    """What the selected roles run: threads, HTTP routes, a router when one serves, and what to close."""

    threads: list[threading.Thread] = field(default_factory=list)
    routes: list[BaseRoute] = field(default_factory=list)
    router: Router | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    relays: bool = False


def _controller(app: App, stop: threading.Event, parts: _Parts, *,
                on_alias_moved: Callable[[str | None], None] | None) -> None:
    app.ensure_subscriptions()
    controller = app.controller

    def handle(event: CloudEvent) -> object:
        result = controller.handle(event)
        if on_alias_moved is not None and event.type == EventType.ALIAS_MOVED:
            on_alias_moved(event.model)
        return result

    consumer = Consumer(bus=app.bus, subscription=CONTROLLER_SUBSCRIPTION, handler=handle)
    parts.threads.append(_consume(stop, consumer, "controller", retry_s=app.settings.poll_interval_s))
    ticks = Consumer(bus=app.bus, subscription=TICKS_SUBSCRIPTION, handler=controller.handle_tick)
    parts.threads.append(_consume(stop, ticks, "controller-ticks", retry_s=app.settings.poll_interval_s))
    # The timer only publishes: whichever controller consumes the tick does the work, as with a cloud scheduler.
    parts.threads.append(_loop(stop, app.settings.tick_interval_s,
                               lambda: publish_tick(app.engine, app.bus, utcnow()), "ticker"))
    parts.relays = True  # Consumer.run relays the outbox before every pull
    for model, version in controller.resume_all():
        try:
            controller.reconcile(model, version)
        except ReleaseError as error:
            log.warning("resume.failed", model=model, version=version, error=str(error))


def _monitor(app: App, stop: threading.Event, parts: _Parts, registry: CollectorRegistry) -> None:
    from monitoring.metrics import DriftMetrics

    monitor = DriftMonitor(engine=app.engine, bus=app.bus, store=app.store,
                           cache_dir=app.settings.home.resolve() / "artifacts",
                           default_policy=default_policy(app.settings).drift, metrics=DriftMetrics(registry),
                           webhook_prefixes=app.settings.webhook_prefixes, console_url=app.settings.console_url)
    for spec in subscriptions(ack_deadline_s=app.settings.ack_deadline_s, max_attempts=app.settings.max_attempts):
        app.bus.ensure_subscription(spec)
    drift = Consumer(bus=app.bus, subscription=MONITOR_SUBSCRIPTION, handler=monitor.handle)
    parts.threads.append(_consume(stop, drift, "drift-monitor", retry_s=app.settings.poll_interval_s))
    profiles = Consumer(bus=app.bus, subscription=PROFILE_SUBSCRIPTION, handler=monitor.handle_registration)
    parts.threads.append(_consume(stop, profiles, "drift-profiles", retry_s=app.settings.poll_interval_s))
    parts.relays = True
    parts.threads.append(_loop(stop, 5.0, lambda: monitor.flush(datetime.now(UTC)), "drift-flush"))


def _intake(app: App, stop: threading.Event, parts: _Parts) -> None:
    if isinstance(app.store, LocalFolderStore):
        watcher = LocalBucketWatcher(store=app.store)

        def watch() -> None:
            for _attrs, data in watcher.scan():
                app.intake.handle_object(data)

        parts.threads.append(_loop(stop, app.settings.poll_interval_s, watch, "bucket-watcher"))


def _router(app: App, parts: _Parts, registry: CollectorRegistry) -> RouteTable:
    table = RouteTable(engine=app.engine)
    metrics = RouterMetrics(registry)
    logger = PredictionLogger(engine=app.engine, bus=app.bus, dropped=metrics.dropped)
    logger.start()
    parts.closers.append(logger.close)
    parts.router = Router(table=table, logger=logger, metrics=metrics,
                          max_body_bytes=app.settings.max_body_mb * 2**20)
    return table


def _all(app: App, stop: threading.Event, parts: _Parts, registry: CollectorRegistry) -> None:
    table = _router(app, parts, registry)
    _controller(app, stop, parts, on_alias_moved=table.invalidate)
    _monitor(app, stop, parts, registry)
    _intake(app, stop, parts)
    parts.routes += [*management_routes(app), *console_routes(app)]


def _assemble(app: App, role: str, stop: threading.Event, registry: CollectorRegistry) -> _Parts:
    parts = _Parts()
    every = app.settings.reconcile_interval_s
    if role == "all":
        _all(app, stop, parts, registry)
        parts.threads.append(_loop(stop, every, app.intake.reconcile, "reconcile"))
    elif role == "controller":
        _controller(app, stop, parts, on_alias_moved=None)
    elif role == "monitor":
        _monitor(app, stop, parts, registry)
    elif role == "intake":
        _intake(app, stop, parts)
        parts.threads.append(_loop(stop, every, app.intake.reconcile, "reconcile"))
    elif role == "router":
        _router(app, parts, registry)
    elif role == "api":
        parts.routes += [*management_routes(app), *console_routes(app)]
    else:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if not parts.relays:
        # What this role journals (intake's registrations, prediction logs, API promotions) reaches the
        # transport through this relay; roles with a consumer relay before every pull already.
        parts.threads.append(_loop(stop, app.settings.poll_interval_s, app.bus.flush, "outbox-relay"))
    return parts


def health_routes(role: str, threads: list[threading.Thread], registry: CollectorRegistry) -> list[Route]:
    """``/healthz`` (503 when a thread of the role stopped) and ``/metrics`` of the role's registry."""

    async def healthz(_request: Request) -> Response:
        state = {t.name: t.is_alive() for t in threads}
        ok = all(state.values())
        return JSONResponse({"role": role, "ok": ok, "threads": state}, status_code=200 if ok else 503)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]


@dataclass
class Stack:
    """A role assembled and its threads started: the ASGI app to serve, and how to stop everything."""

    web: ASGIApp
    stop: threading.Event
    parts: _Parts

    def close(self) -> None:
        """Stop the threads and run the role's closers (the caller closes the ``App``)."""
        self.stop.set()
        for close in self.parts.closers:
            close()


def start_stack(app: App, *, role: str = "all") -> Stack:
    """Assemble ``role``, start its threads and build its web app, without serving it (tests serve it too)."""
    stop = threading.Event()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    parts = _assemble(app, role, stop, registry)
    for thread in parts.threads:
        thread.start()
    health = health_routes(role, parts.threads, registry)
    web: ASGIApp
    if parts.router is not None:
        # The router keeps its own /metrics (the same registry); /healthz is added beside it.
        # Starlette takes any BaseRoute (the dashboard's static Mount among them); the helper is typed narrower.
        web = build_router_app(parts.router, extra_routes=cast("list[Route]", [health[0], *parts.routes]))
    else:
        web = Starlette(routes=[*health, *parts.routes])
    return Stack(web=web, stop=stop, parts=parts)


def run_stack(app: App, *, role: str = "all") -> int:
    """Run ``role`` (see ``ROLES``) until interrupted (SIGINT or SIGTERM)."""
    stack = start_stack(app, role=role)
    stop = stack.stop
    log.info("stack.up", role=role, port=app.settings.port, bucket=app.store.uri,
             home=str(Path(app.settings.home).resolve()))
    if threading.current_thread() is threading.main_thread():
        # uvicorn drains on SIGTERM, then raises the signal again once its own handler is gone; with the
        # default handler that would kill the process before the cleanup below (nacking held deliveries,
        # publishing the last prediction logs). This handler lets it return instead: Kubernetes' stop is a
        # clean exit 0.
        signal.signal(signal.SIGTERM, lambda _sig, _frame: stop.set())
    try:
        uvicorn.run(stack.web, host=app.settings.host, port=app.settings.port, log_level="warning")
    finally:
        stack.close()
        app.close()
    return 0
