"""Wiring: settings in, a ready ``App`` out. The one place that chooses adapters, through small tables.

Nothing happens at import; ``bootstrap(settings)`` builds everything once per process and caches it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from release.artifacts import materialize
from release.controller import Controller
from release.db import make_engine, migrate, session_factory
from release.identity import Authenticator, IdTokenVerifier, load_tokens
from release.intake import Intake
from release.logconfig import configure_logging
from release.ports import ArtifactStore, EventBus, GateRunner, Promoter, ServingBackend, SubscriptionSpec
from release.registry import VersionView
from release.settings import Settings
from release.worker import Consumer, run_until_idle
from schemas.events import Topic
from schemas.policy import ReleasePolicy

CONTROLLER_SUBSCRIPTION = "controller"
#: On ``alerts``: the rollback requests the drift monitor raises, applied by ``Controller.react_to_alert``.
ROLLBACK_SUBSCRIPTION = "rollbacks"
#: The controller's subscription to ``release-ticks``.
TICKS_SUBSCRIPTION = "controller-ticks"


def _folder_store(settings: Settings) -> ArtifactStore:
    from release.adapters.local_bucket import LocalFolderStore

    return LocalFolderStore(root=Path(settings.bucket_location.removeprefix("file://")))


def _gcs_store(settings: Settings) -> ArtifactStore:
    from release.adapters.gcs_store import GcsArtifactStore

    return GcsArtifactStore(uri=settings.bucket_location, emulator_host=settings.storage_emulator_host or None,
                            project=settings.gcp_project)


def _local_bus(_settings: Settings, engine: Engine) -> EventBus:
    from release.adapters.local_bus import LocalEventBus

    return LocalEventBus(session_factory=session_factory(engine))


def _pubsub_bus(settings: Settings, engine: Engine) -> EventBus:
    from release.adapters.pubsub_bus import PubSubEventBus

    relay = frozenset(t.strip() for t in settings.relay_topics.split(",") if t.strip()) or None
    return PubSubEventBus(session_factory=session_factory(engine), project=settings.gcp_project,
                          emulator_host=settings.pubsub_emulator_host or None, relay_topics=relay)


def _local_serving(settings: Settings) -> ServingBackend:
    from release.adapters.local_serving import LocalServingBackend

    gpu = {"on": True, "off": False, "auto": None}[settings.gpu]
    return LocalServingBackend(home=settings.home.resolve(), gpu=gpu, pod_user=settings.pod_user,
                               pod_root=settings.pod_root, warm_pods=settings.warm_pods,
                               memory_mb=settings.pod_memory_mb, prestart=False)


def _kubernetes_serving(settings: Settings) -> ServingBackend:
    from release.adapters.k8s_manifests import ServingOptions
    from release.adapters.kubernetes_serving import KubernetesServingBackend

    return KubernetesServingBackend(namespace=settings.k8s_namespace,
                                    options=ServingOptions(image=settings.k8s_image,
                                                           model_source=settings.k8s_model_source))


STORES: dict[str, Callable[[Settings], ArtifactStore]] = {"gs": _gcs_store, "file": _folder_store}
BUSES: dict[str, Callable[[Settings, Engine], EventBus]] = {"local": _local_bus, "pubsub": _pubsub_bus}
SERVING: dict[str, Callable[[Settings], ServingBackend]] = {"local": _local_serving,
                                                            "kubernetes": _kubernetes_serving}


def store_scheme(location: str) -> str:
    """``gs`` for Cloud Storage URIs, ``file`` for everything else (a folder path or file:// URI)."""
    return "gs" if location.startswith("gs://") else "file"


@dataclass
class App:
    """Everything a process of the control plane needs, built once."""

    settings: Settings
    engine: Engine
    store: ArtifactStore
    bus: EventBus
    intake: Intake
    _serving: ServingBackend | None = None
    _controller: Controller | None = None

    @property
    def serving(self) -> ServingBackend:
        """The serving backend, started on first use (read-only commands never start one)."""
        if self._serving is None:
            self._serving = SERVING[self.settings.serving](self.settings)
        return self._serving

    @property
    def controller(self) -> Controller:
        """The release controller with the real gates and promoter."""
        if self._controller is None:
            from release.gates import HttpGateRunner
            from release.promotion import RoutePromoter

            gates: GateRunner = HttpGateRunner()
            promoter: Promoter = RoutePromoter()
            cache = self.settings.home.resolve() / "artifacts"

            def local_copy(version: VersionView) -> Path | None:
                return materialize(self.store, version, cache=cache)

            self._controller = Controller(engine=self.engine, bus=self.bus, serving=self.serving, gates=gates,
                                          promoter=promoter, materialize=local_copy,
                                          crash_at=self.settings.fault_crash_at, gpu=wants_gpu(self.settings),
                                          max_rollouts=self.settings.max_rollouts)
        return self._controller

    def ensure_subscriptions(self) -> None:
        """The subscriptions the control plane consumes."""
        for spec in controller_subscriptions(self.settings):
            self.bus.ensure_subscription(spec)

    def release_consumers(self) -> list[Consumer]:
        """The controller's consumers of model events and of the rollback requests on ``alerts``."""
        return [Consumer(bus=self.bus, subscription=CONTROLLER_SUBSCRIPTION, handler=self.controller.handle),
                Consumer(bus=self.bus, subscription=ROLLBACK_SUBSCRIPTION, handler=self.controller.react_to_alert)]

    def drain_controller(self) -> int:
        """Handle model events until the controller's subscription is idle; returns how many were handled."""
        self.ensure_subscriptions()
        return run_until_idle(self.release_consumers(), bus=self.bus)

    def close(self) -> None:
        """Stop local pods and release connections."""
        if self._serving is not None:
            self._serving.close()
        self.bus.close()
        self.engine.dispose()


def controller_subscriptions(settings: Settings) -> list[SubscriptionSpec]:
    """The controller's subscriptions: model events, the ticks that wake what a lost event left waiting, and the
    rollback requests on ``alerts``."""
    return [SubscriptionSpec(name=name, topic=topic, ack_deadline_s=settings.ack_deadline_s,
                             max_attempts=settings.max_attempts)
            for name, topic in ((CONTROLLER_SUBSCRIPTION, Topic.MODEL_EVENTS), (TICKS_SUBSCRIPTION, Topic.TICKS),
                                (ROLLBACK_SUBSCRIPTION, Topic.ALERTS))]


def wants_gpu(settings: Settings) -> bool | None:
    """What versions ask for: ``off`` serves every version on CPU; ``on`` and ``auto`` follow each model's policy
    (``serving.accelerator``, one ``nvidia-l4`` GPU by default; ``none`` is CPU).

    On local pods ``auto`` then means CUDA when present and ``on`` requires it (``LocalServingBackend.gpu``).
    """
    return False if settings.gpu == "off" else None


def default_policy(settings: Settings) -> ReleasePolicy:
    """The policy for models the operator set none for (``release policy set``)."""
    return ReleasePolicy.model_validate_json(settings.policy_json) if settings.policy_json else ReleasePolicy()


def authenticator(settings: Settings) -> Authenticator:
    """Who may write through the management API: named tokens, the single token, Google ID tokens."""
    verifier: IdTokenVerifier | None = None
    if settings.id_token_audience:
        from release.adapters.google_identity import GoogleIdTokenVerifier

        verifier = GoogleIdTokenVerifier(audience=settings.id_token_audience)
    tokens = load_tokens(settings.api_tokens_file) if settings.api_tokens_file else ()
    return Authenticator(tokens=tokens, legacy_token=settings.api_token, id_tokens=verifier)


@functools.cache
def bootstrap(settings: Settings) -> App:
    """Build the app for ``settings``: logging, migrated store, bucket, bus, intake."""
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    migrate(engine)
    store = STORES[store_scheme(settings.bucket_location)](settings)
    bus = BUSES[settings.bus](settings, engine)
    intake = Intake(store=store, bus=bus, engine=engine, default_policy=default_policy(settings),
                    bucket_policies=settings.bucket_policies)
    return App(settings=settings, engine=engine, store=store, bus=bus, intake=intake)
