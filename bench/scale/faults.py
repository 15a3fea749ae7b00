"""The fault matrix under load: 50 versions in flight, traffic through the router, and one of each fault.

The store is a private PostgreSQL cluster (never the shared one on :5432) and the bus is Pub/Sub, served by
``tests/servers/pubsub_server.py`` as its own process (``RELEASE_BUS=pubsub``). While the versions settle and a
load thread sends predictions to ``PROD`` of every model through the router, the schedule below SIGKILLs the
controller, the monitor, a pod and the router (each role restarted at once), restarts PostgreSQL (immediate stop,
so it recovers from its WAL) and restarts the Pub/Sub server (then ``release setup`` recreates its topics and
subscriptions, as an operator would for the in-memory emulator). Everything stays on 127.0.0.1; one fault of
each kind, bounded by ``--timeout``.

Printed: the scale report and checks (each version in the state the undisturbed run reaches, no state move
applied twice, every journal row relayed) and the traffic outcome: every request answered, except those in
flight at the killed router (counted).

    PYTHONPATH=. python bench/scale/faults.py --versions 50 --models 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, like the other benches

import httpx

from bench.scale.cluster import ROOT, Cluster, free_port
from bench.scale.private_pg import PrivatePostgres
from bench.scale.run import ScaleRun, say, summary

#: The faults, in this order: the first ``--spacing`` seconds after the drop, each next one ``--spacing`` seconds
#: after the previous one's recovery (a restarted role answering ``/healthz`` again).
SCHEDULE = ("controller", "monitor", "pod", "router", "postgres", "pubsub")
ROW = [0.5] * 64


class PubSubProcess:
    """``python -m tests.servers.pubsub_server`` on a fixed loopback port; restartable."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.servers.pubsub_server", "--port", str(self.port)],
                                     cwd=ROOT, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        time.sleep(1.0)  # the gRPC server binds at once; the first client call retries if it has not yet

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Load:
    """One thread sending predictions to PROD of each model in turn, counting outcomes."""

    def __init__(self, url: str, models: list[str]) -> None:
        self.url, self.models = url, models
        self.counts: dict[str, int] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _run(self) -> None:
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}
        with httpx.Client(timeout=60.0) as client:
            i = 0
            while not self.stop_event.is_set():
                model = self.models[i % len(self.models)]
                i += 1
                self._one(client, f"{self.url()}/v2/models/{model}/infer", body)
                self.stop_event.wait(0.05)

    def _one(self, client: httpx.Client, url: str, body: dict[str, Any]) -> None:
        while not self.stop_event.is_set():
            try:
                status = client.post(url, json=body).status_code
            except httpx.ConnectError:
                self._count("refused while the router was down (retried, nothing sent)")
                self.stop_event.wait(0.2)
                continue
            except (httpx.RemoteProtocolError, httpx.ReadError):
                self._count("in flight at the killed router (no answer)")
                return
            except httpx.TimeoutException:
                self._count("unanswered (timeout)")
                return
            self._count(f"answered {status}")
            return


class Faults:
    """Injects each fault of ``SCHEDULE`` once its time has come."""

    def __init__(self, cluster: Cluster, pg: PrivatePostgres, pubsub: PubSubProcess, *, spacing_s: float,
                 schedule: tuple[str, ...], quiet: bool) -> None:
        self.cluster, self.pg, self.pubsub, self.quiet = cluster, pg, pubsub, quiet
        self.spacing_s = spacing_s
        self.pending = list(schedule)
        self.next_at = spacing_s
        self.done: list[dict[str, Any]] = []

    def __call__(self, elapsed: float) -> bool:
        """Inject the next fault when its time has come (the next one is due ``spacing_s`` after recovery);
        True while faults remain."""
        if not self.pending or elapsed < self.next_at:
            return bool(self.pending)
        kind = self.pending.pop(0)
        started = time.monotonic()
        detail = self._inject(kind)
        took = time.monotonic() - started
        self.done.append({"fault": kind, "at_s": round(elapsed, 1), "detail": detail,
                          "recovered_in_s": round(took, 1)})
        say(f"  FAULT {kind} at t={elapsed:.1f}s: {detail} (back in {took:.1f}s)", quiet=self.quiet)
        self.next_at = elapsed + took + self.spacing_s
        return bool(self.pending)

    def _inject(self, kind: str) -> str:
        if kind in ("controller", "monitor", "router"):
            self.cluster.restart(kind)
            return f"SIGKILL {kind}, restarted (pid {self.cluster.procs[kind].pid})"
        if kind == "pod":
            alive = sorted(p for p in self.cluster.sampler.pods_seen if Path(f"/proc/{p}").exists())
            if not alive:
                return "no pod running to kill"
            os.kill(alive[-1], signal.SIGKILL)
            return f"SIGKILL pod pid {alive[-1]} (the serving backend restarts it)"
        if kind == "postgres":
            self.pg.restart()
            return "pg_ctl stop -m immediate, start"
        self.pubsub.stop()
        self.pubsub.start()
        setup_bus(self.cluster)
        return "SIGKILL pubsub server, started empty, `release setup` recreated topics and subscriptions"


def setup_bus(cluster: Cluster) -> None:
    """``release setup``: topics, dead-letter topics and subscriptions on the (fresh) Pub/Sub server."""
    cluster.ports.setdefault("setup", free_port())
    subprocess.run([sys.executable, "-m", "app.cli", "setup"], cwd=ROOT, env=cluster.env("setup"), check=True,
                   capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    """Run the matrix once; exit 0 when every check passed and every request was answered."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--spacing", type=float, default=10.0, help="seconds between faults (the first after one)")
    parser.add_argument("--no-faults", action="store_true",
                        help="the same run (store, bus, traffic) undisturbed: the reference for the faulted one")
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = parser.parse_args(argv)
    pg = PrivatePostgres()
    pubsub: PubSubProcess | None = None
    run = ScaleRun(versions=args.versions, models=args.models, db_url=pg.url, quiet=args.json)
    try:
        pubsub = PubSubProcess(run.root / "pubsub.log")
        run.env_extra = {"RELEASE_BUS": "pubsub", "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{pubsub.port}"}
        run.setup()
        assert run.cluster is not None
        setup_bus(run.cluster)
        run.start()
        cluster = run.cluster
        load = Load(cluster.router_url, sorted({i.model for i in run.items}))
        load.thread.start()
        faults = Faults(cluster, pg, pubsub, spacing_s=args.spacing, schedule=() if args.no_faults else SCHEDULE,
                        quiet=args.json)
        report = run.execute(timeout_s=args.timeout, during=faults)
        load.stop_event.set()
        load.thread.join()
        report["faults"] = faults.done
        report["traffic"] = load.counts
    finally:
        run.close()
        if pubsub is not None:
            pubsub.stop()
        pg.close()
    lost = sum(n for k, n in report["traffic"].items() if k.startswith("unanswered"))
    report["checks"]["every request answered (except in flight at the killed router)"] = (
        lost == 0, f"({report['traffic']})")
    print(json.dumps(report, indent=2) if args.json else summary(report) + "\n  faults: " + json.dumps(faults.done),
          flush=True)
    ok = report["settled"] == report["versions"] and all(ok for ok, _ in report["checks"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
