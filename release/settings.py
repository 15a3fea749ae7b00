"""The one settings object. Everything configurable is a ``RELEASE_*`` variable; nothing else reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings of every process of the control plane. Chosen by environment, never by code edits."""

    model_config = SettingsConfigDict(env_prefix="RELEASE_", extra="ignore", frozen=True)

    home: Path = Field(default=Path(".release"), description="State folder: SQLite DB, pod logs, artifact cache.")
    bucket: str = Field(default="", description="A local folder path or gs://bucket[/prefix]. Default: HOME/bucket.")
    db_url: str = Field(default="", description="sqlite:///PATH or postgresql://... Default: SQLite under HOME.")
    bus: Literal["local", "pubsub"] = Field(default="local", description="Event transport.")
    gcp_project: str = Field(default="local-project", description="Google Cloud project for Pub/Sub.")
    serving: Literal["local", "kubernetes"] = Field(default="local", description="Where serving pods run.")
    host: str = Field(default="127.0.0.1", description="Address the router and management API listen on.")
    port: int = Field(default=8080, description="Port of the router + management API + dashboard.")
    api_token: str = Field(default="", description="Bearer token for management API writes; empty = writes refused. "
                           "Its audit actor is `api-token`; name each operator with RELEASE_API_TOKENS_FILE.")
    api_tokens_file: Path | None = Field(
        default=None, description="Named API tokens: lines of `NAME sha256:HEX` (the hash of the token); the token's "
                                  "name is the audit actor. Make a line with `release token new NAME`.")
    id_token_audience: str = Field(
        default="", description="On Google Cloud: accept Google-signed ID tokens whose audience is this (the API's "
                                "URL); the token's email is the audit actor.")
    reads_need_token: bool = Field(
        default=False, description="Require the write credentials for reads too (the read API, the event stream "
                                   "and the dashboard); default: reads are open, as on loopback.")
    console_url: str = Field(
        default="", description="The dashboard's address as people reach it (e.g. https://release.example.com); "
                                "drift alert messages link to it. Empty: no link.")
    console_stream_max_s: float = Field(
        default=300.0, description="How long one event-stream connection stays open before the server ends it; "
                                   "browsers reconnect at once from the last event they saw.")
    bucket_policies: bool = Field(
        default=False, description="Single-team setups only: read policies/<name>.json from the uploads bucket "
                                   "when the registry has no operator policy for the model.")
    webhook_allow: str = Field(
        default="", description="Comma-separated URL prefixes drift webhooks may target; empty = no webhooks.")
    max_body_mb: int = Field(
        default=64, gt=0, description="Largest prediction request body the router accepts, in MiB; larger is "
                                      "refused with 413 body_too_large before it is read whole.")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto = console on a terminal, JSON otherwise.")
    log_level: str = Field(default="INFO", description="Minimum log level.")
    policy_json: str = Field(default="", description="Default release policy (JSON) for models without one.")
    poll_interval_s: float = Field(default=0.5, description="How often the local bucket and bus are polled.")
    reconcile_interval_s: float = Field(default=60.0, description="How often `up` lists the bucket for lost events.")
    ack_deadline_s: float = Field(default=600.0, description="Lease on a delivery before it is redelivered.")
    max_attempts: int = Field(default=5, description="Deliveries before an event is dead-lettered.")
    max_rollouts: int = Field(default=4, ge=1, description=(
        "Versions that may hold pods while in flight (DEPLOYING..PROMOTING) at once; the rest wait REGISTERED."))
    tick_interval_s: float = Field(default=10.0, gt=0, description=(
        "How often `up` publishes a tick: the controller's safety net for lost due events and grace periods."))
    gpu: Literal["auto", "on", "off"] = Field(default="auto", description="Run local pods on the GPU.")
    pod_user: str = Field(default="auto", description=(
        "The account local pods run as when the control plane runs as root: 'auto' (nobody, if it can run the pod "
        "runtime, else the control plane's own account with a warning), an account name (required to work), or '' "
        "(the control plane's own account)."))
    pod_root: Path | None = Field(default=None, description=(
        "Where local pods get their own folders; default a folder under the system temp folder (every folder above "
        "it must be traversable by the pod user, which RELEASE_HOME, mode 0700, is not)."))
    warm_pods: int = Field(default=1, ge=0, description=(
        "Local pods kept started with torch imported, each in its own sandbox, so a deployment loads its version "
        "in one instead of starting a pod cold; a used one is replaced in the background. 0 disables."))
    pod_memory_mb: int = Field(default=0, ge=0, description=(
        "Memory budget of all local pods (resident, whole process trees, warm spares included), in MiB; a "
        "deployment that does not fit waits (reason `capacity`) until others retire. 0 = half the machine's."))
    k8s_namespace: str = Field(default="model-release", description="Namespace for Kubernetes serving pods.")
    k8s_image: str = Field(default="ghcr.io/modelrelease/pod:latest", description="Serving pod image.")
    storage_emulator_host: str = Field(default="", validation_alias="STORAGE_EMULATOR_HOST",
                                       description="Google's own variable: a GCS emulator to talk to instead.")
    relay_topics: str = Field(
        default="", description="Pub/Sub bus: comma-separated topics this process relays from the journal (those its "
                                "identity may publish to); empty = every topic.")
    pubsub_emulator_host: str = Field(default="", validation_alias="PUBSUB_EMULATOR_HOST",
                                      description="Google's own variable: a Pub/Sub emulator to talk to instead.")
    fault_crash_at: str = Field(default="", description="Testing only: SIGKILL the process at this controller step.")

    @property
    def webhook_prefixes(self) -> tuple[str, ...]:
        """The allowed webhook URL prefixes, parsed."""
        return tuple(p.strip() for p in self.webhook_allow.split(",") if p.strip())

    @property
    def bucket_location(self) -> str:
        """The bucket, defaulting to a folder under HOME."""
        return self.bucket or str((self.home / "bucket").resolve())

    @property
    def database_url(self) -> str:
        """The metadata store URL, defaulting to SQLite under HOME."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.home / 'release.db').resolve()}"
