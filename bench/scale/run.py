"""One scale run: prepare N versions, start the control plane, drop them at once, wait until all settle, report.

Shared by ``scale.py`` (undisturbed runs) and ``faults.py`` (the same run with faults injected while it settles).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from bench.scale.cluster import Cluster
from bench.scale.observe import Sampler, database_bytes, table_rows
from bench.scale.workload import BENCH_POLICY, Planned, drop, plan, prepare
from release.db import make_engine, migrate
from schemas.states import SETTLED, VersionState

STATES_SQL = text("SELECT m.name, v.version, v.state, v.updated_at FROM model_version v JOIN model m "
                  "ON m.id = v.model_id")


def _epoch(value: datetime | str) -> float:
    """A stored timestamp (a datetime, or SQLite's text) as epoch seconds; stored times are UTC."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def say(text_: str, *, quiet: bool) -> None:
    """Progress: on stdout, or on stderr when stdout carries the JSON report (``quiet``)."""
    print(text_, file=sys.stderr if quiet else sys.stdout, flush=True)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class ScaleRun:
    """Everything of one run: its folders, store, control plane and measurements."""

    versions: int
    models: int
    db_url: str = ""
    podless: bool = False
    quiet: bool = False
    env_extra: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="release-scale-")))
    items: list[Planned] = field(default_factory=list)
    dropped: dict[tuple[str, str], float] = field(default_factory=dict)
    engine: Engine | None = None
    cluster: Cluster | None = None

    def setup(self) -> None:
        """Build the artifacts, migrate the store and describe the control plane (nothing started yet)."""
        self.root.chmod(0o755)  # pods run as another account: the pod root below must be traversable
        home = self.root / "home"
        (home / "bucket").mkdir(parents=True)
        self.db_url = self.db_url or f"sqlite:///{home / 'release.db'}"
        self.items = plan(self.versions, self.models)
        say(f"building {len(self.items)} versions of {self.models} models ...", quiet=self.quiet)
        prepare(self.items, self.root / "staging")
        self.engine = make_engine(self.db_url)
        migrate(self.engine)
        sampler = Sampler(pod_root=self.root / "pods-root")
        controller = None
        if self.podless:
            from bench.scale.farm import controller_command
            controller = controller_command()
        self.cluster = Cluster(home=home, db_url=self.db_url, policy=BENCH_POLICY, sampler=sampler,
                               env_extra={"RELEASE_POD_ROOT": str(self.root / "pods-root"), **self.env_extra},
                               controller_command=controller)

    def start(self) -> None:
        """Start the roles (the controller first)."""
        assert self.cluster is not None
        say("starting the control plane: controller, monitor, intake, router", quiet=self.quiet)
        self.cluster.start_all()

    def states(self) -> dict[tuple[str, str], tuple[str, float]]:
        """Every version's state and when it last moved; waits out a store that is restarting (fault runs)."""
        assert self.engine is not None
        for _attempt in range(60):
            try:
                with self.engine.connect() as conn:
                    return {(r[0], r[1]): (str(r[2]), _epoch(r[3])) for r in conn.execute(STATES_SQL)}
            except OperationalError:
                self.engine.dispose()
                time.sleep(1.0)
        raise RuntimeError("the store did not come back within a minute")

    def settled(self, states: dict[tuple[str, str], tuple[str, float]]) -> int:
        return sum(1 for i in self.items if (i.model, i.version) in states
                   and VersionState(states[(i.model, i.version)][0]) in SETTLED)

    def execute(self, *, timeout_s: float, during: Callable[[float], bool] | None = None) -> dict[str, Any]:
        """Drop everything, wait until every version settles (or ``timeout_s``), and return the report.

        ``during(seconds since the drop)`` runs between polls and says whether it has more to do (faults still
        to inject): the run ends only once it has not.
        """
        assert self.cluster is not None and self.engine is not None
        sampler = self.cluster.sampler
        before = {"rows": table_rows(self.engine), "bytes": database_bytes(self.engine, self.db_url)}
        sampler.start()
        sampler.sample()
        cpu_before = sampler.control_cpu()
        load_at_drop = os.getloadavg()
        started = time.time()
        self.dropped = drop(self.items, self.root / "staging", self.root / "home" / "bucket")
        say(f"dropped {len(self.items)} versions in {time.time() - started:.1f}s", quiet=self.quiet)
        last_print = 0.0
        while True:
            elapsed = time.time() - started
            states = self.states()
            done = self.settled(states)
            more = during(elapsed) if during is not None else False
            if time.time() - last_print >= 5 or (done == len(self.items) and not more):
                mix: dict[str, int] = {}
                for state, _at in states.values():
                    mix[state] = mix.get(state, 0) + 1
                say(f"  t={elapsed:6.1f}s settled {done}/{len(self.items)} {dict(sorted(mix.items()))} "
                    f"pods now/peak {len(self._pods_now())}/{sampler.peak_pods}",
                    quiet=self.quiet)
                last_print = time.time()
            if (done == len(self.items) and not more) or elapsed > timeout_s:
                break
            time.sleep(1.0)
        self._drain(deadline=time.time() + 60)
        sampler.sample()
        report = self.report(states, cpu_before=cpu_before, before=before, wall_s=time.time() - started)
        report["load_average"] = {"at_drop": [round(x, 2) for x in load_at_drop],
                                  "at_end": [round(x, 2) for x in os.getloadavg()]}
        return report

    def _drain(self, *, deadline: float) -> None:
        """Let the events that follow the last state moves be consumed and relayed, so the outbox check sees the end
        (prediction logs keep coming while traffic flows: a moment with none left to relay is what it waits for)."""
        assert self.engine is not None
        relayed = self.env_extra.get("RELEASE_BUS") == "pubsub"
        query = text("SELECT count(*) FROM event WHERE published_at IS NULL" if relayed else
                     "SELECT count(*) FROM bus_delivery WHERE status = 'pending'")
        while time.time() < deadline:
            with self.engine.connect() as conn:
                if not conn.execute(query).scalar_one():
                    return
            time.sleep(0.2)

    def _pods_now(self) -> list[int]:
        return [pid for pid in self.cluster.sampler.pods_seen if Path(f"/proc/{pid}").exists()] \
            if self.cluster is not None else []

    def report(self, states: dict[tuple[str, str], tuple[str, float]], *, cpu_before: dict[str, float],
               before: dict[str, Any], wall_s: float) -> dict[str, Any]:
        assert self.cluster is not None and self.engine is not None
        from bench.scale.checks import checks

        sampler = self.cluster.sampler
        latencies = [states[k][1] - t for k, t in self.dropped.items()
                     if k in states and VersionState(states[k][0]) in SETTLED]
        cpu_after = sampler.control_cpu()
        cpu = {role: round(cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0), 2) for role in cpu_after}
        after = {"rows": table_rows(self.engine), "bytes": database_bytes(self.engine, self.db_url)}
        return {
            "versions": len(self.items), "models": self.models, "podless": self.podless,
            "store": self.db_url.split(":", 1)[0], "settled": self.settled(states), "wall_s": round(wall_s, 1),
            "drop_to_final_s": {"p50": round(percentile(latencies, 50), 1),
                                "p99": round(percentile(latencies, 99), 1),
                                "max": round(max(latencies, default=0.0), 1)},
            "control_plane_cpu_s": cpu, "cpu_s_per_version": round(sum(cpu.values()) / len(self.items), 3),
            "peak_control_plane_rss_mib": round(sampler.peak_control_rss / 2**20, 1),
            "peak_pods": sampler.peak_pods, "pods_started": len(sampler.pods_seen),
            "peak_pod_rss_mib": round(sampler.peak_pod_rss / 2**20, 1),
            "peak_farm_rss_mib": round(sampler.peak_farm_rss / 2**20, 1),
            "db_growth": {"bytes": after["bytes"] - before["bytes"],
                          "rows": {t: n - before["rows"].get(t, 0) for t, n in after["rows"].items()
                                   if n != before["rows"].get(t, 0)}},
            "final_states": {f"{m}/{v}": s for (m, v), (s, _at) in sorted(states.items())},
            "checks": checks(self.engine, self.items, relayed=self.env_extra.get("RELEASE_BUS") == "pubsub"),
        }

    def close(self, *, keep: bool = False) -> None:
        """Stop the roles, make sure no pod of this run is left, and remove the run folder unless ``keep``."""
        if self.cluster is not None:
            self.cluster.sampler.stop()
            self.cluster.stop()
            for pid in self._pods_now():
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        if self.engine is not None:
            self.engine.dispose()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def summary(report: dict[str, Any]) -> str:
    """A few human lines for a report."""
    lat = report["drop_to_final_s"]
    lines = [f"{report['versions']} versions / {report['models']} models ({report['store']}, "
             f"{'podless farm' if report['podless'] else 'local pods'}): settled {report['settled']} "
             f"in {report['wall_s']}s; drop->final p50 {lat['p50']}s p99 {lat['p99']}s",
             f"  control-plane CPU {sum(report['control_plane_cpu_s'].values()):.1f}s "
             f"({report['cpu_s_per_version']}s/version) {report['control_plane_cpu_s']}; "
             f"peak control-plane RSS {report['peak_control_plane_rss_mib']} MiB",
             f"  pods: peak {report['peak_pods']} at once, {report['pods_started']} started, "
             f"peak RSS of all pods {report['peak_pod_rss_mib']} MiB"
             + (f" (podless: farm process peak RSS {report['peak_farm_rss_mib']} MiB)" if report["podless"] else ""),
             f"  load average (1, 5, 15 min) at drop {report.get('load_average', {}).get('at_drop')}, "
             f"at end {report.get('load_average', {}).get('at_end')}",
             f"  database growth: {report['db_growth']['bytes'] / 1024:.0f} KiB, rows {report['db_growth']['rows']}"]
    lines += [f"  check {'PASS' if ok else 'FAIL'}: {name} {detail}" for name, (ok, detail)
              in report["checks"].items()]
    return "\n".join(lines)
