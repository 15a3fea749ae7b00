"""Router benchmarks (issue 4): router overhead against calling the pod directly, and drop -> PROD time by step.

(a) One real pod of the demo's digits model; a closed loop of single-row OIP requests at concurrency 1, 8 and 32,
    first straight to the pod, then through the router (its own process, uvicorn, prediction logging on, as
    ``release up`` runs it), in the same run: throughput ratio and the added p50/p99.
(b) The demo flow (``app/demo.py``): digits v1 (baseline) and v2 (better) dropped into the bucket folder,
    then intake and the controller run until idle. Step times come from the audit log and the event journal.

    .venv/bin/python bench/router/bench_router.py [--seconds 4] [--rounds 3] [--out bench/router/results.json]

Loopback only; every process shares the machine's cores, which is part of what is measured. On a shared machine
one point swings with what else runs, so (a) is measured in ``--rounds`` rounds, each direct then routed at every
concurrency, and the summary gives the median ratio and added p50 over the rounds (each ratio from one round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from release import journal, registry  # noqa: E402  (the repository root goes on the path first)
from release.bootstrap import App, bootstrap  # noqa: E402
from release.db import session_scope  # noqa: E402
from release.settings import Settings  # noqa: E402

MODEL = "digits"
CONCURRENCY = (1, 8, 32)
STEPS = (("intake + registration", "dropped", "registered"),
         ("queued -> deploy starts", "registered", "DEPLOYING"),
         ("deploy -> pods ready", "DEPLOYING", "STAGED"),
         ("gates", "STAGED", "PROMOTING"),
         ("promotion (PROD moved)", "PROMOTING", "LIVE"))


# ---------------------------------------------------------------------------------------------- (b) drop -> PROD
def _settings(home: Path) -> Settings:
    return Settings(home=home, log_format="console", log_level="WARNING")


def _marks(app: App, version: str, dropped: datetime) -> dict[str, datetime]:
    """When each step of one version's release happened, from the audit log (and the journal's events)."""
    marks = {"dropped": dropped}
    with session_scope(app.engine) as s:
        for entry in registry.audit_log(s, model=MODEL, limit=1000):
            if entry.version == version and entry.action == "version.registered":
                marks["registered"] = entry.at
            elif entry.version == version and entry.action == "version.state_changed":
                marks.setdefault(str(entry.details.get("to")), entry.at)
            elif entry.action == "alias.moved" and entry.alias == registry.PROD and entry.to_version == version:
                marks.setdefault("prod", entry.at)
        for event in journal.recent(s, limit=1000, model=MODEL):
            data = event.envelope.get("data", {})
            if data.get("version") == version and event.type.endswith("model.registered.v1"):
                marks.setdefault("event:model.registered", event.created_at)
    return marks


def drop_to_prod(home: Path) -> tuple[App, list[dict[str, Any]]]:
    """Train and release demo digits v1 and v2; return the app (pods still up) and the per-step timings."""
    from sklearn.datasets import load_digits

    from app.demo import drop_version, train_classifier

    app = bootstrap(_settings(home))
    bucket = Path(app.settings.bucket_location)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, held = order[:1200], order[1200:]
    rows = []
    for version, params in (("1", dict(hidden=16, epochs=60, seed=1)), ("2", dict(hidden=64, epochs=150, seed=2))):
        model = train_classifier(x[train], y[train], **params)
        drop_version(bucket, version, model, x[held], y[held], x[train][:500], 0.0)
        dropped = datetime.now(UTC)
        app.ensure_subscriptions()
        app.intake.reconcile(final=True)
        app.drain_controller()
        marks = _marks(app, version, dropped)
        with session_scope(app.engine) as s:
            state = str(registry.get_version(s, MODEL, version).state)
            report = registry.latest_gate_report(s, registry.get_version(s, MODEL, version).id) or {}
        steps = {name: round((marks[b] - marks[a]).total_seconds(), 3) for name, a, b in STEPS
                 if a in marks and b in marks}
        rows.append({"version": version, "state": state, "steps_s": steps,
                     "gate_timings_s": report.get("timings", {}),
                     "total_s": round((marks["prod"] - dropped).total_seconds(), 3) if "prod" in marks else None})
    return app, rows


# ---------------------------------------------------------------------------------------------- (a) overhead
BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                               "data": [0.25] * 64}]}).encode()


async def _closed_loop(url: str, concurrency: int, seconds: float, warmup_s: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = warmup = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"content-type": "application/json"}) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

        async def client() -> None:
            nonlocal errors, warmup
            while (now := time.perf_counter()) < stop_at:
                async with session.post(url, data=BODY) as response:
                    await response.read()
                    ok = response.status == 200
                if now >= measure_from:
                    latencies.append(time.perf_counter() - now)
                    errors += not ok
                else:
                    warmup += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "warmup_requests": warmup, "errors": errors, "rps": len(latencies) / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _start_router(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, "--serve-router", str(home), "--port", str(port)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    import httpx

    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("router did not start")


def serve_router(home: Path, port: int) -> None:
    """The router as ``release up`` serves it (route cache, prediction logger), in this process."""
    import uvicorn
    from prometheus_client import CollectorRegistry

    from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, build_router_app

    app = bootstrap(_settings(home))
    metrics = RouterMetrics(CollectorRegistry())
    logger = PredictionLogger(engine=app.engine, bus=app.bus, dropped=metrics.dropped)
    logger.start()
    router = Router(table=RouteTable(engine=app.engine), logger=logger, metrics=metrics)
    uvicorn.run(build_router_app(router), host="127.0.0.1", port=port, log_level="warning")


def overhead(app: App, seconds: float, rounds: int) -> list[dict[str, Any]]:
    """Direct vs routed closed-loop runs against PROD's pod, ``rounds`` times over every concurrency."""
    with session_scope(app.engine) as s:
        prod = registry.get_alias(s, MODEL, registry.PROD)
        endpoint = registry.get_deployment(s, prod.version_id or 0).endpoints[0]  # type: ignore[union-attr]
    router, router_url = _start_router(app.settings.home)
    rows = []
    try:
        for round_ in range(1, rounds + 1):
            for concurrency in CONCURRENCY:
                direct = asyncio.run(_closed_loop(f"{endpoint}/v2/models/{MODEL}/infer", concurrency, seconds, 1.0))
                cpu_before = _cpu_s(router.pid)
                routed = asyncio.run(_closed_loop(f"{router_url}/v2/models/{MODEL}/infer", concurrency, seconds, 1.0))
                # CPU the router process spent per request (warm-up included in both): steadier than req/s on a
                # shared machine, since it does not depend on how much of the cores the router got.
                routed["router_cpu_us_per_request"] = ((_cpu_s(router.pid) - cpu_before) * 1e6
                                                       / max(1, routed["requests"] + routed["warmup_requests"]))
                rows.append({"round": round_, "concurrency": concurrency, "direct": direct, "router": routed,
                             "throughput_ratio": routed["rps"] / direct["rps"],
                             "added_p50_ms": routed["p50_ms"] - direct["p50_ms"],
                             "added_p99_ms": routed["p99_ms"] - direct["p99_ms"],
                             "load_average_1m": os.getloadavg()[0]})
    finally:
        router.terminate()
        router.wait(timeout=20)
    return rows


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency: the median over the rounds of the throughput ratio and of the added p50 and p99."""
    out = []
    for concurrency in CONCURRENCY:
        mine = [r for r in rows if r["concurrency"] == concurrency]
        out.append({"concurrency": concurrency, "rounds": len(mine),
                    **{f"median_{key}": float(np.median([r[key] for r in mine]))
                       for key in ("throughput_ratio", "added_p50_ms", "added_p99_ms")},
                    "median_router_cpu_us_per_request": float(np.median(
                        [r["router"]["router_cpu_us_per_request"] for r in mine]))})
    return out


# ---------------------------------------------------------------------------------------------- output
def _print(overhead_rows: list[dict[str, Any]], release_rows: list[dict[str, Any]]) -> None:
    print("\n| concurrency | rounds | median router/direct | median added p50 ms | median added p99 ms | "
          "median router CPU us/request |")
    print("|---:|---:|---:|---:|---:|---:|")
    for m in summary(overhead_rows):
        print(f"| {m['concurrency']} | {m['rounds']} | {m['median_throughput_ratio']:.2f} | "
              f"{m['median_added_p50_ms']:.2f} | {m['median_added_p99_ms']:.2f} | "
              f"{m['median_router_cpu_us_per_request']:.0f} |")
    print("\n| round | concurrency | direct req/s | router req/s | router/direct | direct p50 / p99 ms | "
          "router p50 / p99 ms | added p50 ms | added p99 ms | errors | load 1m |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in overhead_rows:
        d, t = r["direct"], r["router"]
        print(f"| {r['round']} | {r['concurrency']} | {d['rps']:,.0f} | {t['rps']:,.0f} | "
              f"{r['throughput_ratio']:.2f} | "
              f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f} | {t['p50_ms']:.2f} / {t['p99_ms']:.2f} | "
              f"{r['added_p50_ms']:.2f} | {r['added_p99_ms']:.2f} | {d['errors'] + t['errors']} | "
              f"{r['load_average_1m']:.1f} |")
    names = [name for name, _, _ in STEPS]
    print("\n| version | " + " | ".join(names) + " | drop -> PROD | end state |")
    print("|---|" + "---:|" * (len(names) + 1) + "---|")
    for r in release_rows:
        cells = " | ".join(f"{r['steps_s'].get(n, float('nan')):.2f}" for n in names)
        total = f"{r['total_s']:.2f}" if r["total_s"] is not None else "-"
        print(f"| v{r['version']} | {cells} | {total} | {r['state']} |")
    for r in release_rows:
        print(f"gate timings v{r['version']}: {r['gate_timings_s']}")


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks, print tables and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per closed-loop point")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the overhead benchmark (a)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--serve-router", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_router is not None:
        serve_router(args.serve_router, args.port)
        return 0
    home = Path(tempfile.mkdtemp(prefix="bench-router-"))
    try:
        app, release_rows = drop_to_prod(home)
        try:
            overhead_rows = overhead(app, args.seconds, args.rounds)
        finally:
            app.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    _print(overhead_rows, release_rows)
    results = {"date": datetime.now(UTC).date().isoformat(), "seconds_per_point": args.seconds,
               "overhead_summary": summary(overhead_rows), "overhead": overhead_rows, "drop_to_prod": release_rows}
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
