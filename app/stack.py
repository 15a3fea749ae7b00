"""``release up [--only ROLE]``: the whole embedded stack, or one role of the control plane, until stopped.

Roles (``ROLES``), each a set of threads plus routes served on ``RELEASE_PORT`` by uvicorn in the main thread:

* ``controller``: the controller's consumers of ``model-events`` (which also relays the outbox) and of
  ``release-ticks``, and a timer publishing a tick every ``RELEASE_TICK_INTERVAL_S`` (the safety net that wakes
  versions whose due event was lost and retires superseded versions after their grace period); with
  Kubernetes serving and ``RELEASE_GATEWAY``, the Gateway route sync (``release.route_sync``: HTTPRoutes per
  alias, its own ``gateway-routes`` subscription);
* ``router``: the prediction router, its prediction-log publisher and an outbox relay;
* ``api``: the token-protected management API, the read API and dashboard (``app.console``) and an outbox relay;
* ``monitor``: the drift monitor's consumer of ``prediction-logs`` and its window flush;
* ``intake``: the local bucket watcher (folder buckets only), the periodic bucket reconcile and an outbox relay;
* ``all`` (default): every role in one process, the embedded shape.

``release up --functions`` keeps the router, API and dashboard here and runs the release path as function targets
instead of consumer threads: one functions-framework process per target (``app.function_processes``), fed by HTTP
push from the bus's subscriptions and the bucket watcher (``app.push_delivery``), as Eventarc feeds them on Google
Cloud.

Every role answers ``GET /healthz`` (200 while its threads run, 503 naming the ones that stopped) and
``GET /metrics`` (Prometheus text), so Kubernetes probes and Managed Prometheus work for each Deployment of
``deploy/k8s/control-plane.yaml``. ``all`` and ``api`` also serve the read API under ``/api/v1`` (with its
event stream and OpenAPI document) and the dashboard under ``/ui/``.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
import uvicorn
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from app.console import console_routes
from app.function_processes import FunctionSupervisor
from app.management_api import management_routes
from app.push_delivery import BucketPusher, PushDispatcher
from functions.release_path import DRIFT_TICKS_SUBSCRIPTION
from monitoring.monitor import MONITOR_SUBSCRIPTION, PROFILE_SUBSCRIPTION
from monitoring.service import drift_monitor
from release.adapters.local_bucket import LocalBucketWatcher, LocalFolderStore
from release.bootstrap import CONTROLLER_SUBSCRIPTION, ROLLBACK_SUBSCRIPTION, TICKS_SUBSCRIPTION, App
from release.ports import SubscriptionSpec
from release.route_sync import ROUTE_SUBSCRIPTION, RouteSync
from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, build_router_app
from release.waits import publish_tick
from release.worker import Consumer
from schemas.errors import ReleaseError
from schemas.events import CloudEvent, EventType, Topic
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
    supervisor: FunctionSupervisor | None = None


def _controller(app: App, stop: threading.Event, parts: _Parts, registry: CollectorRegistry, *,
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
    rollbacks = Consumer(bus=app.bus, subscription=ROLLBACK_SUBSCRIPTION, handler=controller.react_to_alert)
    parts.threads.append(_consume(stop, rollbacks, "rollbacks", retry_s=app.settings.poll_interval_s))
    ticks = Consumer(bus=app.bus, subscription=TICKS_SUBSCRIPTION, handler=controller.handle_tick)
    parts.threads.append(_consume(stop, ticks, "controller-ticks", retry_s=app.settings.poll_interval_s))
    # The timer only publishes: whichever controller consumes the tick does the work, as with a cloud scheduler.
    parts.threads.append(_loop(stop, app.settings.tick_interval_s,
                               lambda: publish_tick(app.engine, app.bus, utcnow()), "ticker"))
    parts.relays = True  # Consumer.run relays the outbox before every pull
    _gateway_routes(app, stop, parts, registry)
    for model, version in controller.resume_all():
        try:
            controller.reconcile(model, version)
        except ReleaseError as error:
            log.warning("resume.failed", model=model, version=version, error=str(error))


def _gateway_routes(app: App, stop: threading.Event, parts: _Parts, registry: CollectorRegistry) -> None:
    """With Kubernetes serving and ``RELEASE_GATEWAY``: keep the HTTPRoutes level with aliases and canary weights.

    A subscription of its own, so a failed apply is retried without redelivering the controller's events; a
    periodic pass (at once, then every reconcile interval) mends whatever an event never reported. Otherwise
    nothing runs: the Python router reads the registry itself.
    """
    settings = app.settings
    if settings.serving != "kubernetes" or not settings.gateway:
        return
    from release.adapters.gateway_routes import GatewayRouteWriter
    from release.adapters.k8s_routes import GatewayRef

    writer = GatewayRouteWriter(namespace=settings.k8s_namespace,
                                gateway=GatewayRef.parse(settings.gateway, hostnames=settings.gateway_hostnames))
    parts.closers.append(writer.close)
    sync = RouteSync(engine=app.engine, writer=writer, registry=registry)
    app.bus.ensure_subscription(SubscriptionSpec(name=ROUTE_SUBSCRIPTION, topic=Topic.MODEL_EVENTS,
                                                 ack_deadline_s=settings.ack_deadline_s,
                                                 max_attempts=settings.max_attempts))
    consumer = Consumer(bus=app.bus, subscription=ROUTE_SUBSCRIPTION, handler=sync.handle)
    parts.threads.append(_consume(stop, consumer, "gateway-routes", retry_s=settings.poll_interval_s))
    parts.threads.append(_loop(stop, settings.reconcile_interval_s, sync.sync_all, "gateway-resync"))


def _monitor(app: App, stop: threading.Event, parts: _Parts, registry: CollectorRegistry) -> None:
    from monitoring.metrics import DriftMetrics

    monitor = drift_monitor(app, metrics=DriftMetrics(registry))
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
    _controller(app, stop, parts, registry, on_alias_moved=table.invalidate)
    _monitor(app, stop, parts, registry)
    _intake(app, stop, parts)
    parts.routes += [*management_routes(app), *console_routes(app)]


#: ``release up --functions``: each subscription of the release path and the target it is pushed to.
#: The drift monitor keeps open windows in its process, so the ticks that close aged ones go to that process too.
PUSH_ROUTES = ((CONTROLLER_SUBSCRIPTION, Topic.MODEL_EVENTS, "on_model_event"),
               (TICKS_SUBSCRIPTION, Topic.TICKS, "on_tick"),
               (PROFILE_SUBSCRIPTION, Topic.MODEL_EVENTS, "on_registration"),
               (MONITOR_SUBSCRIPTION, Topic.PREDICTION_LOGS, "on_prediction_logs"),
               (DRIFT_TICKS_SUBSCRIPTION, Topic.TICKS, "on_prediction_logs"),
               (ROLLBACK_SUBSCRIPTION, Topic.ALERTS, "on_alert"))
#: The targets ``release up --functions`` serves (``on_bucket_notification`` is the alternative to Eventarc's
#: storage trigger on Google Cloud; locally the bucket watcher delivers as Eventarc does).
FUNCTION_TARGETS = tuple(dict.fromkeys(("on_storage_event", *(target for _sub, _topic, target in PUSH_ROUTES))))


def _functions(app: App, stop: threading.Event, parts: _Parts, registry: CollectorRegistry) -> None:
    """The router, API and dashboard in this process; the release path in function processes fed by push."""
    table = _router(app, parts, registry)
    parts.routes += [*management_routes(app), *console_routes(app)]
    app.ensure_subscriptions()
    drift_monitor(app)  # creates the monitor's subscriptions; its work happens in the function processes
    supervisor = FunctionSupervisor.for_targets(FUNCTION_TARGETS, app.settings)
    parts.closers.append(supervisor.stop)
    supervisor.start()
    parts.supervisor = supervisor
    parts.threads.append(_loop(stop, 1.0, supervisor.check, "function-supervisor"))

    def invalidate(event: CloudEvent) -> None:
        if event.type == EventType.ALIAS_MOVED:
            table.invalidate(event.model)

    # A tick every RELEASE_TICK_INTERVAL_S, as Cloud Scheduler publishes one on Google Cloud.
    parts.threads.append(_loop(stop, app.settings.tick_interval_s,
                               lambda: publish_tick(app.engine, app.bus, utcnow()), "ticker"))
    for subscription, topic, target in PUSH_ROUTES:
        pubsub = app.settings.bus == "pubsub"
        # On Pub/Sub, a real push subscription: Pub/Sub itself POSTs to the function.
        app.bus.ensure_subscription(SubscriptionSpec(
            name=subscription, topic=topic, ack_deadline_s=app.settings.ack_deadline_s,
            max_attempts=app.settings.max_attempts, push_endpoint=supervisor.url(target) if pubsub else ""))
        if pubsub:
            continue
        dispatcher = PushDispatcher(bus=app.bus, subscription=subscription, topic=topic,
                                    locate=functools.partial(supervisor.url, target), project=app.settings.gcp_project,
                                    timeout_s=app.settings.ack_deadline_s,
                                    on_delivered=invalidate if target == "on_model_event" else None)
        parts.threads.append(_loop(stop, app.settings.poll_interval_s, functools.partial(dispatcher.run, stop),
                                   f"push-{subscription}"))
    if isinstance(app.store, LocalFolderStore):
        pusher = BucketPusher(watcher=LocalBucketWatcher(store=app.store),
                              locate=functools.partial(supervisor.url, "on_storage_event"),
                              timeout_s=app.settings.ack_deadline_s)
        parts.threads.append(_loop(stop, app.settings.poll_interval_s, pusher.scan, "bucket-push"))


def _assemble(app: App, role: str, stop: threading.Event, registry: CollectorRegistry, *,
              functions: bool = False) -> _Parts:
    parts = _Parts()
    every = app.settings.reconcile_interval_s
    if functions:
        if role != "all":
            raise ValueError("--functions runs the whole stack; it does not combine with --only")
        _functions(app, stop, parts, registry)
    elif role == "all":
        _all(app, stop, parts, registry)
        parts.threads.append(_loop(stop, every, app.intake.reconcile, "reconcile"))
    elif role == "controller":
        _controller(app, stop, parts, registry, on_alias_moved=None)
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


def health_routes(role: str, threads: list[threading.Thread], registry: CollectorRegistry,
                  supervisor: FunctionSupervisor | None = None) -> list[Route]:
    """``/healthz`` (503 when a thread of the role stopped, or a function process is down) and ``/metrics`` of
    the role's registry. Under ``--functions`` it also lists each target's process and its restarts."""

    async def healthz(_request: Request) -> Response:
        state = {t.name: t.is_alive() for t in threads}
        body: dict[str, object] = {"role": role, "threads": state}
        ok = all(state.values())
        if supervisor is not None:
            functions = supervisor.health()
            body["functions"] = functions
            ok = ok and all(f["alive"] for f in functions.values())
        return JSONResponse({**body, "ok": ok}, status_code=200 if ok else 503)

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


def start_stack(app: App, *, role: str = "all", functions: bool = False) -> Stack:
    """Assemble ``role``, start its threads and build its web app, without serving it (tests serve it too).

    ``functions``: the release path runs in function processes fed by push delivery (``release up --functions``).
    """
    stop = threading.Event()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    parts = _assemble(app, role, stop, registry, functions=functions)
    for thread in parts.threads:
        thread.start()
    health = health_routes(role, parts.threads, registry, parts.supervisor)
    web: ASGIApp
    if parts.router is not None:
        # The router keeps its own /metrics (the same registry); /healthz is added beside it.
        web = build_router_app(parts.router, extra_routes=[health[0], *parts.routes])
    else:
        web = Starlette(routes=[*health, *parts.routes])
    return Stack(web=web, stop=stop, parts=parts)


def run_stack(app: App, *, role: str = "all", functions: bool = False) -> int:
    """Run ``role`` (see ``ROLES``) until interrupted (SIGINT or SIGTERM); ``functions`` as in ``start_stack``."""
    stack = start_stack(app, role=role, functions=functions)
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
