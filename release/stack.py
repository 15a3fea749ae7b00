"""``release up``: the whole embedded stack in one process until stopped.

Threads: the bucket watcher feeding intake, a periodic reconcile pass (lost events), the controller's consumer,
the drift monitor when present; the main thread serves the router and management API with uvicorn.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import structlog
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from monitoring.monitor import MONITOR_SUBSCRIPTION, DriftMonitor, subscriptions
from release.adapters.local_bucket import LocalBucketWatcher, LocalFolderStore
from release.bootstrap import CONTROLLER_SUBSCRIPTION, App, default_policy
from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, build_router_app
from release.worker import Consumer
from schemas.errors import ReleaseError, Unauthorized
from schemas.events import EventType

log = structlog.get_logger(__name__)


def _loop(stop: threading.Event, interval_s: float, body: object, name: str) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            try:
                body()  # type: ignore[operator]
            except ReleaseError as error:
                log.warning(f"{name}.failed", error=str(error))
            except Exception:
                log.exception(f"{name}.crashed")
            stop.wait(interval_s)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def management_routes(app: App) -> list[Route]:
    """Token-protected writes (promote, rollback) beside the router."""

    def authorise(request: Request) -> str:
        token = app.settings.api_token
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token or given != token:
            raise Unauthorized("management API writes need a valid token")
        return request.headers.get("x-actor", "api")

    async def promote(request: Request) -> Response:
        try:
            actor = authorise(request)
            body = await request.json() if await request.body() else {}
            step = app.controller.promote(request.path_params["model"], request.path_params["version"],
                                          actor=actor, reason=str(body.get("reason", "api")))
        except ReleaseError as error:
            return JSONResponse(error.to_dict(), status_code=401 if isinstance(error, Unauthorized) else 409)
        return JSONResponse({"model": step.model, "version": step.version, "state": str(step.after)})

    async def rollback(request: Request) -> Response:
        try:
            actor = authorise(request)
            body = await request.json() if await request.body() else {}
            step = app.controller.rollback(request.path_params["model"], actor=actor,
                                           reason=str(body.get("reason", "api")))
        except ReleaseError as error:
            return JSONResponse(error.to_dict(), status_code=401 if isinstance(error, Unauthorized) else 409)
        return JSONResponse({"state": str(step.after) if step else None})

    return [Route("/api/v1/models/{model}/versions/{version}/promote", promote, methods=["POST"]),
            Route("/api/v1/models/{model}/rollback", rollback, methods=["POST"])]


def run_stack(app: App) -> int:
    """Run until interrupted."""
    stop = threading.Event()
    app.ensure_subscriptions()
    controller = app.controller
    table = RouteTable(engine=app.engine)
    metrics = RouterMetrics(CollectorRegistry())
    logger = PredictionLogger(engine=app.engine, bus=app.bus, dropped=metrics.dropped)

    def handle(event: object) -> object:
        result = controller.handle(event)  # type: ignore[arg-type]
        if getattr(event, "type", "") == EventType.ALIAS_MOVED:
            table.invalidate(getattr(event, "model", None))
        return result

    consumer = Consumer(bus=app.bus, subscription=CONTROLLER_SUBSCRIPTION, handler=handle)
    monitor = DriftMonitor(engine=app.engine, bus=app.bus, store=app.store,
                           cache_dir=app.settings.home.resolve() / "artifacts",
                           default_policy=default_policy(app.settings).drift)
    for spec in subscriptions(ack_deadline_s=app.settings.ack_deadline_s, max_attempts=app.settings.max_attempts):
        app.bus.ensure_subscription(spec)
    drift = Consumer(bus=app.bus, subscription=MONITOR_SUBSCRIPTION, handler=monitor.handle)
    threads = [threading.Thread(target=consumer.run, args=(stop,), name="controller", daemon=True),
               threading.Thread(target=drift.run, args=(stop,), name="drift-monitor", daemon=True),
               _loop(stop, 5.0, lambda: monitor.flush(datetime.now(UTC)), "drift-flush")]
    for model, version in controller.resume_all():
        try:
            controller.reconcile(model, version)
        except ReleaseError as error:
            log.warning("resume.failed", model=model, version=version, error=str(error))
    if isinstance(app.store, LocalFolderStore):
        watcher = LocalBucketWatcher(store=app.store)

        def watch() -> None:
            for _attrs, data in watcher.scan():
                app.intake.handle_object(data)

        threads.append(_loop(stop, app.settings.poll_interval_s, watch, "bucket-watcher"))
    threads.append(_loop(stop, app.settings.reconcile_interval_s,
                         lambda: (app.intake.reconcile(), controller.retire_superseded()), "reconcile"))
    for thread in threads:
        if not thread.is_alive():
            thread.start()
    logger.start()
    router = Router(table=table, logger=logger, metrics=metrics)
    web = build_router_app(router, extra_routes=management_routes(app))
    log.info("stack.up", port=app.settings.port, bucket=app.store.uri, home=str(Path(app.settings.home).resolve()))
    try:
        uvicorn.run(web, host=app.settings.host, port=app.settings.port, log_level="warning")
    finally:
        stop.set()
        logger.close()
        app.close()
    return 0
