"""The drift monitor built from an ``App``: one recipe for the ``monitor`` role of ``release up`` and for the
drift function targets."""

from __future__ import annotations

from monitoring.metrics import DriftMetrics
from monitoring.monitor import DriftMonitor, subscriptions
from release.bootstrap import App, default_policy


def drift_monitor(app: App, *, metrics: DriftMetrics | None = None) -> DriftMonitor:
    """A monitor on the app's store and bus with the operator's default drift policy and webhook allow-list;
    its subscriptions exist once this returns."""
    for spec in subscriptions(ack_deadline_s=app.settings.ack_deadline_s, max_attempts=app.settings.max_attempts):
        app.bus.ensure_subscription(spec)
    return DriftMonitor(engine=app.engine, bus=app.bus, store=app.store,
                        cache_dir=app.settings.home.resolve() / "artifacts",
                        default_policy=default_policy(app.settings).drift, metrics=metrics,
                        webhook_prefixes=app.settings.webhook_prefixes, console_url=app.settings.console_url,
                        pod_namespace=app.settings.k8s_namespace)
