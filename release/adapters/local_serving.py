"""Local serving backend: each replica of a version is a ``python -m handlers.server`` process on this machine.

It implements ``release.ports.ServingBackend``. Pods get free ports, log to
``home/pods/<model>/<version>/replica-N.log``, and are watched by a supervisor thread that restarts a crashed
replica with exponential backoff (a pod that exits with the server's "artifact refused / failed to load" or
"checksum mismatch" code is not restarted: retrying cannot help). Each pod runs in the sandbox of
``pod_sandbox``: its own folder and copy of the artifact, an allow-listed environment, an unprivileged account
when this process is root, and ``--expect-digest`` so it serves only the registered bytes. Every running pod
is recorded in ``home/pods/state.json`` so a control plane that restarts adopts the pods of its previous run
(same pid, same command line) instead of leaking or duplicating them. The only knowledge of the pod runtime
here is its command line and its HTTP health endpoint. With ``warm_pods`` N, N spare pods wait with torch
imported (``warm_pool``) and a deployment takes one instead of starting a pod cold; every deployment is first
admitted against the pods' memory budget (``pod_memory``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from release.adapters.local_replica import Replica, free_port, tail
from release.adapters.pod_memory import MemoryBudget
from release.adapters.pod_sandbox import (
    AUTO,
    PodUser,
    default_pod_root,
    empty_pod_folder,
    ensure_pod_root,
    pod_code,
    pod_environment,
    prepare_pod_folder,
    resolve_pod_user,
    secure_home,
    start_pod,
)
from release.adapters.warm_pool import WarmPool, take_over
from release.ports import DeploymentSpec, DeploymentStatus
from schemas import pod_exit
from schemas.errors import PermanentError, Reason

log = structlog.get_logger("release.adapters.local_serving")

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_POLL_S = 0.05  # a warm pod is ready in a fraction of a second: a health GET this often costs next to nothing


@dataclass(kw_only=True)
class _Deployment:
    """The replicas of one version, and the spec fingerprint that makes ``deploy`` idempotent."""

    model: str
    version: str
    fingerprint: str
    env: dict[str, str]
    replicas: list[Replica] = field(default_factory=list)


class LocalServingBackend:
    """``ServingBackend`` that runs pods as local processes."""

    def __init__(self, *, home: Path, python: str = sys.executable, host: str = "127.0.0.1",
                 gpu: bool | None = None, max_restarts: int = 5, restart_backoff_s: float = 0.5,
                 stop_grace_s: float = 10.0, supervise_interval_s: float = 0.2, pod_user: str = AUTO,
                 pod_root: Path | None = None, warm_pods: int = 0, memory_mb: int = 0, prestart: bool = True):
        """``pod_user``: the account pods run as when this process is root (``auto``: ``nobody`` if it can run the
        pod runtime); ``pod_root``: where pod folders live (default: under the system temp folder); ``warm_pods``:
        spares kept started (from the first deploy unless ``prestart``); ``memory_mb``: the pods' memory budget."""
        self.home = home
        secure_home(home)
        self.pod_root = pod_root or default_pod_root(home)
        ensure_pod_root(self.pod_root)
        self._code_copy: Path | None = None
        self._pod_user_setting = pod_user
        self._pod_user: PodUser | str | None = "unresolved"
        self.pods_dir = home / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.pods_dir / "state.json"
        self.python = python
        self.host = host
        self.gpu = gpu
        self.max_restarts = max_restarts
        self.restart_backoff_s = restart_backoff_s
        self.stop_grace_s = stop_grace_s
        self._interval = supervise_interval_s
        self._lock = threading.RLock()
        self._deployments: dict[tuple[str, str], _Deployment] = {}
        self._http = httpx.Client(timeout=1.0)
        self._stopping = threading.Event()
        self.memory = MemoryBudget(memory_mb)
        self.pool = WarmPool(size=warm_pods, python=python, root=self.pod_root / "warm", logs=self.pods_dir / "warm",
                             start=self._start_spare, room=lambda: self.memory.fits(1, running=self._pod_pids()))
        self._adopt_previous_run()
        self._pool_on = prestart  # a one-shot command (bootstrap passes False) never starts a spare
        if prestart:
            self.pool.fill()
        self._supervisor = threading.Thread(target=self._supervise, name="local-serving-supervisor", daemon=True)
        self._supervisor.start()

    @property
    def name(self) -> str:
        """``local``."""
        return "local"

    # ------------------------------------------------------------------------------------------ ports
    def deploy(self, spec: DeploymentSpec) -> DeploymentStatus:
        """Start the version's replicas, or keep them when they already run for the same spec."""
        if spec.local_path is None:
            raise PermanentError(f"{spec.model}:{spec.version}: the local backend needs the artifact's local_path",
                                 reason=Reason.ROLLOUT_FAILED)
        key, fingerprint = (spec.model, spec.version), self._fingerprint(spec)
        self._pool_on = True
        with self._lock:
            current = self._deployments.get(key)
            if current is not None and current.fingerprint == fingerprint:
                return self._status_of(current)
            if current is not None:
                self._stop_deployment(current)
            self.memory.admit(model=spec.model, version=spec.version, replicas=spec.replicas,
                              running=self._pod_pids(taking=0 if spec.env else spec.replicas))
            deployment = _Deployment(model=spec.model, version=spec.version, fingerprint=fingerprint,
                                     env=dict(spec.env))
            self._folder(spec.model, spec.version).mkdir(parents=True, exist_ok=True)
            for index in range(spec.replicas):
                deployment.replicas.append(self._start_replica(spec, index, artifact=spec.local_path))
            self._deployments[key] = deployment
            self._save_state()
            log.info("local_serving.deployed", model=spec.model, version=spec.version, replicas=spec.replicas,
                     ports=[r.port for r in deployment.replicas])
            return self._status_of(deployment)

    def wait_ready(self, spec: DeploymentSpec, *, timeout_s: float) -> DeploymentStatus:
        """Poll until every replica answers ready; fail with the pod log's tail if one cannot load or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not (status := self.check_ready(spec, give_up=time.monotonic() >= deadline)).ready:
            self._stopping.wait(READY_POLL_S)
        return status

    def check_ready(self, spec: DeploymentSpec, *, give_up: bool = False) -> DeploymentStatus:
        """One look at the replicas: a replica that exited for good fails the rollout with its log's tail."""
        with self._lock:
            if (deployment := self._deployments.get((spec.model, spec.version))) is None:
                raise PermanentError(f"{spec.model}:{spec.version} is not deployed", reason=Reason.ROLLOUT_FAILED)
            failed = next((r for r in deployment.replicas if r.gave_up), None)
            status = self._status_of(deployment)
        if failed is not None:
            raise self._rollout_failed(spec, failed, f"replica {failed.index} exited with {failed.exit_code} "
                                       f"after {failed.restarts} restart(s)")
        if not status.ready and give_up:
            raise self._rollout_failed(spec, deployment.replicas[0], f"not ready in time ({status.message})")
        return status

    def status(self, model: str, version: str) -> DeploymentStatus | None:
        """What runs for the version, or None when nothing does."""
        with self._lock:
            deployment = self._deployments.get((model, version))
            return None if deployment is None else self._status_of(deployment)

    def retire(self, model: str, version: str) -> None:
        """Stop the version's pods (SIGTERM, SIGKILL after the grace period) and remove their work folders."""
        with self._lock:
            deployment = self._deployments.pop((model, version), None)
            if deployment is not None:
                self._stop_deployment(deployment)
            self._save_state()

    def close(self) -> None:
        """Stop the supervisor, the spares and every pod this backend runs."""
        self._stopping.set()
        if self._supervisor.is_alive():
            self._supervisor.join(timeout=5)
        with self._lock:
            self.pool.close()
            for key in list(self._deployments):
                self._stop_deployment(self._deployments.pop(key))
            self._save_state()
        self._http.close()

    def restarts(self, model: str, version: str) -> int:
        """How many times the supervisor restarted the version's replicas."""
        with self._lock:
            deployment = self._deployments.get((model, version))
            return 0 if deployment is None else sum(r.restarts for r in deployment.replicas)

    # ------------------------------------------------------------------------------------------ processes
    def _folder(self, model: str, version: str) -> Path:
        return self.pods_dir / model / version

    def _device(self, spec: DeploymentSpec) -> str:
        if not spec.gpu or self.gpu is False:
            return "cpu"
        return "cuda" if self.gpu else "auto"

    def _code(self) -> Path:
        """Where pods import ``handlers`` and ``schemas`` from: a copy under the pod root, made once."""
        if self._code_copy is None:
            self._code_copy = pod_code(self.pod_root, source=REPO_ROOT)
        return self._code_copy

    def _user(self) -> PodUser | None:
        """The pods' account, resolved once (it starts a probe process as that account)."""
        if isinstance(self._pod_user, str):
            self._pod_user = resolve_pod_user(self._pod_user_setting, python=self.python, code=self._code())
        return self._pod_user

    def _command(self, spec: DeploymentSpec, *, port: int, artifact: Path) -> list[str]:
        command = [self.python, "-m", "handlers.server", "--artifact", str(artifact), "--host", self.host,
                   "--port", str(port), "--max-batch-size", str(spec.max_batch_size),
                   "--max-batch-delay-ms", str(spec.max_batch_delay_ms), "--device", self._device(spec),
                   "--http-workers", str(spec.http_workers),
                   "--work-dir", str(artifact.parent / "work"), "--log-format", "json"]
        if spec.digest:
            command += ["--expect-digest", spec.digest]
        if not spec.allow_model_code:
            command.append("--no-model-code")
        return command + spec.record_args(default=False)  # the embedded router records what local pods serve

    def _fingerprint(self, spec: DeploymentSpec) -> str:
        fields = {"artifact": str(spec.local_path), "replicas": spec.replicas, "gpu": spec.gpu,
                  "code": spec.allow_model_code, "batch": spec.max_batch_size, "delay": spec.max_batch_delay_ms,
                  "workers": spec.http_workers,
                  "env": sorted(spec.env.items()), "digest": spec.digest}
        return json.dumps(fields, sort_keys=True)

    def _start_replica(self, spec: DeploymentSpec, index: int, *, artifact: Path) -> Replica:
        """Replica ``index`` of ``spec``: a warm spare given its artifact and command, or a pod started cold."""
        log_path = self._folder(spec.model, spec.version) / f"replica-{index}.log"
        port = free_port(self.host)
        # A spare's environment was fixed when it started: a deployment with its own env starts cold.
        spare = self.pool.take() if not spec.env else None
        if spare is None:
            sandbox = self.pod_root / spec.model / spec.version / f"replica-{index}"
            local = prepare_pod_folder(sandbox, artifact=artifact, user=self._user())
            replica = Replica(index=index, port=port, log_path=log_path, folder=sandbox,
                              command=self._command(spec, port=port, artifact=local))
            self._spawn(replica, env=dict(spec.env))
            return replica
        return take_over(spare, index=index, port=port, log_path=log_path, user=self._user(), artifact=artifact,
                         command=lambda local: self._command(spec, port=port, artifact=local))

    def _start_spare(self, folder: Path, log_path: Path, command: list[str]) -> subprocess.Popen[bytes]:
        """A warm spare, in the same sandbox as any pod: its own empty folder, the allow-listed env, the pod user."""
        empty_pod_folder(folder, user=self._user())
        return start_pod(command, folder=folder, log_path=log_path, stdin=subprocess.PIPE, user=self._user(),
                         env=pod_environment(folder=folder, code=self._code(), extra={}, parent=os.environ))

    def _pod_pids(self, *, taking: int = 0) -> list[int]:
        """Every pod process this backend runs, and the spares but the ``taking`` that a deployment is about to take
        (those count as its new pods)."""
        pods = [r.pid for d in self._deployments.values() for r in d.replicas if r.alive()]
        return pods + self.pool.pids()[taking:]

    def _spawn(self, replica: Replica, *, env: dict[str, str]) -> None:
        assert replica.folder is not None
        pod_env = pod_environment(folder=replica.folder, code=self._code(), extra=env, parent=os.environ)
        replica.process = start_pod(replica.command, folder=replica.folder, log_path=replica.log_path,
                                    stdin=subprocess.DEVNULL, user=self._user(), env=pod_env)
        replica.pid = replica.process.pid
        replica.cmdline = None
        replica.exit_code = None
        replica.restart_at = None

    def _signal(self, replica: Replica, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica.pid, sig)

    def _stop_replicas(self, replicas: list[Replica]) -> None:
        running = [r for r in replicas if r.alive()]
        for replica in running:
            self._signal(replica, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for replica in running:
            if replica.process is not None:
                try:
                    replica.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    replica.process.kill()
                    replica.process.wait(timeout=5)
                continue
            while replica.alive() and time.monotonic() < deadline:
                self._stopping.wait(0.05)
            if replica.alive():
                self._signal(replica, signal.SIGKILL)

    def _stop_deployment(self, deployment: _Deployment) -> None:
        self._stop_replicas(deployment.replicas)
        for replica in deployment.replicas:
            if replica.folder is not None:
                shutil.rmtree(replica.folder, ignore_errors=True)
        log.info("local_serving.retired", model=deployment.model, version=deployment.version)

    def _supervise(self) -> None:
        while not self._stopping.wait(self._interval):
            with self._lock:
                if self._pool_on:
                    self.pool.fill()
                for deployment in self._deployments.values():
                    for replica in deployment.replicas:
                        self._check(deployment, replica)

    def _check(self, deployment: _Deployment, replica: Replica) -> None:
        if replica.gave_up:
            return
        if replica.restart_at is None:
            code = replica.reap()
            if code is None:
                return
            replica.exit_code = code
            if code in pod_exit.FINAL or replica.restarts >= self.max_restarts:
                replica.gave_up = True
                log.error("local_serving.replica_failed", model=deployment.model, version=deployment.version,
                          replica=replica.index, exit_code=code, restarts=replica.restarts)
                return
            replica.restart_at = time.monotonic() + self.restart_backoff_s * 2 ** replica.restarts
            log.warning("local_serving.replica_exited", model=deployment.model, version=deployment.version,
                        replica=replica.index, exit_code=code, restart_in_s=self.restart_backoff_s * 2 **
                        replica.restarts)
        elif time.monotonic() >= replica.restart_at:
            replica.restarts += 1
            self._spawn(replica, env=deployment.env)
            self._save_state()

    def _ready(self, replica: Replica) -> bool:
        if replica.restart_at is not None or replica.gave_up:
            return False
        try:
            return self._http.get(f"http://{self.host}:{replica.port}/v2/health/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def _status_of(self, deployment: _Deployment) -> DeploymentStatus:
        ready = sum(self._ready(r) for r in deployment.replicas)
        total = len(deployment.replicas)
        problems = [f"replica {r.index} exited with {r.exit_code} ({r.restarts} restarts)"
                    for r in deployment.replicas if r.exit_code is not None]
        excerpt = next((tail(r.log_path) for r in deployment.replicas if r.exit_code is not None), "")
        return DeploymentStatus(
            model=deployment.model, version=deployment.version, ready=total > 0 and ready == total,
            endpoints=tuple(f"http://{self.host}:{r.port}" for r in deployment.replicas), ready_replicas=ready,
            replicas=total, message="; ".join([f"{ready}/{total} ready", *problems]), log_excerpt=excerpt)

    def _rollout_failed(self, spec: DeploymentSpec, replica: Replica, why: str) -> PermanentError:
        excerpt = tail(replica.log_path)
        return PermanentError(f"{spec.model}:{spec.version} did not become ready: {why}",
                              reason=pod_exit.reason_for(replica.exit_code), details={"log_excerpt": excerpt,
                                                                     "log_path": str(replica.log_path)})

    def _save_state(self) -> None:
        records: list[dict[str, Any]] = []
        for deployment in self._deployments.values():
            for replica in deployment.replicas:
                records.append({"model": deployment.model, "version": deployment.version,
                                "fingerprint": deployment.fingerprint, "env": deployment.env,
                                "index": replica.index, "port": replica.port, "pid": replica.pid,
                                "command": replica.command, "log_path": str(replica.log_path),
                                "folder": str(replica.folder) if replica.folder else None,
                                "restarts": replica.restarts, "cmdline": replica.cmdline})
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"pods": records}, indent=1))
        temporary.replace(self.state_path)

    def _adopt_previous_run(self) -> None:
        """Adopt pods a previous run left running (same pid and command line); forget the rest."""
        try:
            records = json.loads(self.state_path.read_text())["pods"]
        except (OSError, ValueError, KeyError):
            records = []
        adopted: dict[tuple[str, str], _Deployment] = {}
        for record in records:
            folder = record.get("folder")
            replica = Replica(index=record["index"], port=record["port"], log_path=Path(record["log_path"]),
                              command=list(record["command"]), pid=record["pid"], restarts=record["restarts"],
                              folder=Path(folder) if folder else None, cmdline=record.get("cmdline"))
            key = (record["model"], record["version"])
            deployment = adopted.setdefault(key, _Deployment(model=key[0], version=key[1],
                                                             fingerprint=record["fingerprint"],
                                                             env=dict(record["env"])))
            deployment.replicas.append(replica)
        for key, deployment in adopted.items():
            if all(r.alive() for r in deployment.replicas):
                self._deployments[key] = deployment
                log.info("local_serving.adopted", model=key[0], version=key[1],
                         pids=[r.pid for r in deployment.replicas])
            else:
                # A partial deployment is not worth keeping: stop what is left; deploy() starts it afresh.
                self._stop_replicas([r for r in deployment.replicas if r.alive()])
        self._save_state()

