"""Model registry speed: our ``release.registry`` against MLflow's model registry, in the same run (issue 2).

Why: promotion, rollback and the CLI resolve aliases and register versions all the time, and registries that get
slow at thousands of versions are a known pain. This measures, on the same machine and in the same run:

* register-version, alias-move and alias-resolve latency (p50/p99) and sequential throughput. Ours: library calls,
  each in its own ``session_scope`` transaction as the handlers do, on a SQLite file and on a fresh PostgreSQL
  schema. MLflow: ``SqlAlchemyStore`` in-process on a SQLite file (like for like, no HTTP) and ``MlflowClient``
  against an ``mlflow server`` on a SQLite file over loopback HTTP (how MLflow is used; it has no in-process
  client API with the same semantics). So "ours vs MLflow HTTP" includes MLflow's HTTP + server cost; "ours vs
  MLflow store" does not.
* listing at 10,000 versions across 100 models: bulk creation, then one model's versions, a newest-first page,
  a paged walk, a text search across models and the models summary, with the MLflow equivalents on the same
  layout.

MLflow lives in its own venv (``--mlflow-python``) and runs ``mlflow_side.py`` there, which prints JSON; this
interpreter never imports it. The server is started here on a loopback port (one worker: the client is
sequential) and stopped at the end. When creating the 10,000 versions through the server would take longer than
``--http-create-limit`` seconds (projected from the first rounds of 100), creation stops there and the server is
restarted on a copy of the file ``SqlAlchemyStore`` seeded in-process (same layout, made before any server ran on
it); the report says so and shows the projected time.

    /work/venv/bin/python bench/registry/bench_registry.py --mlflow-python /work/bench-venv-mlflow/bin/python

Several runs (``--out`` each to its own file) are summarised, medians and ranges, by ``combine.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, so `release` imports when run from anywhere

import sqlalchemy as sa  # noqa: E402 - after the path set-up above, like the other benches
from sqlalchemy.engine import Engine  # noqa: E402

from bench.registry.common import ALIAS, OPS_MODEL, QUERIES, TEXT, WARMUP, Layout, expect, time_calls  # noqa: E402
from release import registry  # noqa: E402
from release.db import make_engine, migrate, session_scope  # noqa: E402

PG_URL = os.environ.get("RELEASE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}  # nothing leaves this machine


# ----------------------------------------------------------------------------------------------- our side
def _register(session: Any, model: str, version: str) -> None:
    digest = "sha256:" + hashlib.sha256(f"{model}/{version}".encode()).hexdigest()
    registry.register_version(session, model=model, version=version, digest=digest,
                              artifact_uri=f"gs://bench/{model}/{version}/", format="onnx",
                              manifest={"framework": "sklearn", "inputs": 20})


def ours_ops(engine: Engine, *, calls: int, resolves: int, deadline: float) -> dict[str, Any]:
    """Register, move-alias and resolve on one model, each call its own transaction."""

    def register(i: int) -> None:
        with session_scope(engine) as session:
            _register(session, OPS_MODEL, str(i + 1))

    out = {"register": time_calls(register, calls, deadline=deadline, warmup=WARMUP)}
    revision = 0

    def move(i: int) -> None:
        nonlocal revision
        with session_scope(engine) as session:
            view, _ = registry.move_alias(session, model=OPS_MODEL, alias=ALIAS, version=str(i % 10 + 1),
                                          expected_revision=revision, actor="bench", reason="bench")
        revision = view.revision

    out["alias_move"] = time_calls(move, calls, deadline=deadline, warmup=WARMUP)

    def resolve(_: int) -> None:
        with session_scope(engine) as session:
            registry.resolve(session, OPS_MODEL, ALIAS)

    out["resolve"] = time_calls(resolve, resolves, deadline=deadline, warmup=WARMUP)
    return out


def ours_seed(engine: Engine, layout: Layout) -> dict[str, Any]:
    """Create the listing data set: one transaction per round of 100 versions (one per model)."""
    started = time.perf_counter()
    for r, models in enumerate(layout.rounds()):
        with session_scope(engine) as session:
            for model in models:
                _register(session, model, str(r + 1))
    seconds = time.perf_counter() - started
    return {"versions": layout.total, "seconds": round(seconds, 2), "per_s": round(layout.total / seconds, 1),
            "how": "register_version, 100 per transaction"}


def ours_queries(engine: Engine, layout: Layout, *, repeats: int, deadline: float) -> dict[str, Any]:
    """The listing queries, each in its own read transaction, with row counts checked."""
    per, one = layout.per_model, "m42"

    def in_session(query: Callable[[Any], int], want: int, what: str) -> Callable[[int], None]:
        def call(_: int) -> None:
            with session_scope(engine) as session:
                expect(query(session), want, what)
        return call

    def walk(session: Any) -> int:
        return sum(len(registry.list_versions(session, one, limit=20, offset=o, newest_first=True))
                   for o in range(0, per, 20))

    calls: dict[str, Callable[[int], None]] = {
        "list_one": in_session(lambda s: len(registry.list_versions(s, one)), per, "list_one"),
        "page_newest": in_session(lambda s: len(registry.list_versions(s, one, limit=20, newest_first=True)),
                                  min(20, per), "page_newest"),
        "walk_pages": in_session(walk, per, "walk_pages"),
        "search_text": in_session(lambda s: len(registry.search_versions(s, text=TEXT, limit=100)),
                                  min(100, 11 * per), "search_text"),
        "list_models": in_session(lambda s: len(registry.list_models(s)), layout.models, "list_models"),
    }
    return {key: time_calls(calls[key], repeats, deadline=deadline, warmup=WARMUP) for key, _, _ in QUERIES}


def run_ours(engine: Engine, args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Seed and query first (so the ops model is not in the listings), then the per-call operations."""
    migrate(engine)
    seed = ours_seed(engine, layout)
    deadline = time.monotonic() + args.phase_limit  # for the timed calls; the seed is bounded by its size
    queries = ours_queries(engine, layout, repeats=args.repeats, deadline=deadline)
    ops = ours_ops(engine, calls=args.calls, resolves=args.resolves, deadline=deadline)
    return {"seed": seed, "queries": queries, "ops": ops}


@contextlib.contextmanager
def sqlite_engine(tmp: Path) -> Iterator[Engine]:
    """Our store on a SQLite file (WAL, as in production)."""
    engine = make_engine(f"sqlite:///{tmp / 'ours.db'}")
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_engine(base_url: str) -> Iterator[Engine]:
    """Our store in a fresh PostgreSQL schema, dropped afterwards (as tests/conftest.py does)."""
    schema = "bench_" + uuid.uuid4().hex[:12]
    admin = make_engine(base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"
    engine = make_engine(f"{base_url}{sep}options=-csearch_path%3D{schema}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# ----------------------------------------------------------------------------------------------- MLflow side
def free_port() -> int:
    """A free loopback port (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(mlflow_python: str, db: Path, log: Path, *, timeout: float = 180.0) -> Iterator[str]:
    """``mlflow server`` on a SQLite file, loopback only, one worker; yields its URL once /health answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [mlflow_python, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
            "--default-artifact-root", f"file://{db.parent / 'artifacts'}", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **MLFLOW_ENV})
    try:
        try:
            _wait_healthy(url, proc, timeout)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; server log ends:\n{log.read_text()[-2000:]}") from e
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group we started: the server and its worker
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310 - our http://127.0.0.1
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} did not answer /health within {timeout:.0f}s")


def mlflow_side(mlflow_python: str, *argv: str, timeout: float) -> dict[str, Any]:
    """Run ``mlflow_side.py`` in the MLflow venv and return the JSON it prints last."""
    done = subprocess.run([mlflow_python, str(HERE / "mlflow_side.py"), *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **MLFLOW_ENV}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mlflow_side.py {argv[0]} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_mlflow(args: argparse.Namespace, layout: Layout, tmp: Path) -> dict[str, Any]:
    """MLflow's store in-process, then MLflow's server over HTTP on a SQLite file of its own."""
    shape = ["--models", str(layout.models), "--per-model", str(layout.per_model), "--calls", str(args.calls),
             "--resolves", str(args.resolves), "--repeats", str(args.repeats),
             "--phase-limit", str(args.phase_limit)]
    py, seeded = args.mlflow_python, tmp / "mlflow_seeded.db"
    out: dict[str, Any] = {"store": mlflow_side(py, "store", "--db", str(tmp / "mlflow_store.db"),
                                                "--seed-copy", str(seeded), *shape, timeout=args.phase_limit + 600)}
    if args.no_http:
        return out
    db, log = tmp / "mlflow_http.db", tmp / "mlflow_server.log"
    with mlflow_server(py, db, log) as url:
        made = mlflow_side(py, "seed-http", "--url", url, "--create-limit", str(args.http_create_limit), *shape,
                           timeout=args.http_create_limit + 300)
    rate = made["versions_per_s"]
    seed = {"versions": layout.total, "seconds": made["seconds"], "per_s": rate, "projected": False,
            "created_http": made["created"], "how": "MlflowClient: 100 models + 10,000 versions, one request each"}
    if made["created"] < layout.total:
        # Too slow through the server: serve the data set SqlAlchemyStore created before any server touched it.
        db = seeded
        seed.update(seconds=round(layout.total / rate, 1), projected=True,
                    how=(f"first {made['created']:,} versions over HTTP at {rate:.0f}/s; time shown is projected for "
                         f"{layout.total:,}; the server then ran on the file SqlAlchemyStore had seeded (same layout)"))
    with mlflow_server(py, db, log) as url:
        out["http"] = mlflow_side(py, "query-http", "--url", url, *shape, timeout=args.phase_limit + 300)
    out["http"]["seed"] = seed
    return out


# ----------------------------------------------------------------------------------------------- report
IMPLS = [("ours_sqlite", "ours, SQLite file (library call)"), ("ours_pg", "ours, PostgreSQL (library call)"),
         ("mlflow_store", "MLflow SqlAlchemyStore, SQLite (in-process)"),
         ("mlflow_http", "MLflow client -> mlflow server, SQLite (HTTP)")]
OPS = [("register", "register version"), ("alias_move", "move alias"), ("resolve", "resolve alias")]


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def report(results: dict[str, Any]) -> None:
    """Print the Markdown tables the README section is made of."""
    ops = {k: results[k]["ops"] for k, _ in IMPLS if k in results}
    print("\n| operation | implementation | n | p50 ms | p99 ms | calls/s |\n|---|---|---:|---:|---:|---:|")
    for op, label in OPS:
        for key, name in IMPLS:
            if key in ops and ops[key][op]["n"]:
                r = ops[key][op]
                print(f"| {label} | {name} | {r['n']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['per_s']:,.0f} |")

    print("\n| p50 latency ratio, ours / MLflow (below 1 = ours faster) | SQLite / store | SQLite / HTTP "
          "| PostgreSQL / store | PostgreSQL / HTTP |\n|---|---:|---:|---:|---:|")
    rows = [(label, lambda k, op=op: ops.get(k, {}).get(op, {}).get("p50_ms")) for op, label in OPS]
    qs = {k: results[k]["queries"] for k, _ in IMPLS if k in results}
    rows += [(f"{text} (10k versions)", lambda k, q=q: qs.get(k, {}).get(q, {}).get("p50_ms"))
             for q, text, _ in QUERIES]
    for label, p50 in rows:
        cells = [_ratio(p50(o), p50(m)) for o in ("ours_sqlite", "ours_pg") for m in ("mlflow_store", "mlflow_http")]
        print(f"| {label} | " + " | ".join(cells) + " |")

    print("\n| 10,000 versions / 100 models | " + " | ".join(name for _, name in IMPLS)
          + " |\n|---|" + "---:|" * len(IMPLS))
    seeds = {k: results[k]["seed"] for k, _ in IMPLS if k in results}
    print("| create all, seconds | " + " | ".join(
        f"{'~' if seeds[k].get('projected') else ''}{seeds[k]['seconds']:.1f}" if k in seeds else "-"
        for k, _ in IMPLS) + " |")
    print("| create, versions/s | " + " | ".join(f"{seeds[k]['per_s']:,.0f}" if k in seeds else "-"
                                                 for k, _ in IMPLS) + " |")
    for q, text, mlflow_call in QUERIES:
        timed = [qs.get(k, {}).get(q, {}) for k, _ in IMPLS]
        cells = [f"{t['p50_ms']:.2f} / {t['p99_ms']:.2f}" if t.get("n") else "-" for t in timed]
        print(f"| {text}, p50 / p99 ms (MLflow: `{mlflow_call}`) | " + " | ".join(cells) + " |")
    for key in seeds:
        print(f"  {key} creation: {seeds[key]['how']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mlflow-python", default="/work/bench-venv-mlflow/bin/python",
                        help="python of the venv MLflow is installed in")
    parser.add_argument("--pg-url", default=PG_URL, help="PostgreSQL server; a schema is created and dropped")
    parser.add_argument("--models", type=int, default=100, help="models in the listing data set")
    parser.add_argument("--per-model", type=int, default=100, help="versions per model in the listing data set")
    parser.add_argument("--calls", type=int, default=200, help="timed register and alias-move calls")
    parser.add_argument("--resolves", type=int, default=300, help="timed alias resolves")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of each listing query")
    parser.add_argument("--phase-limit", type=float, default=120.0, help="seconds for the timed calls of a phase")
    parser.add_argument("--http-create-limit", type=float, default=240.0,
                        help="projected seconds above which MLflow's 10k versions are created in-process instead")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours_sqlite", "ours_pg", "mlflow"],
                        help="leave these out")
    parser.add_argument("--no-http", action="store_true",
                        help="leave out MLflow's server (the per-call goals are against its in-process store)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    layout = Layout(models=args.models, per_model=args.per_model)
    started, load_start = time.monotonic(), [round(x, 1) for x in os.getloadavg()]

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as name:
        tmp = Path(name)
        for key, open_engine in (("ours_sqlite", lambda: sqlite_engine(tmp)),
                                 ("ours_pg", lambda: postgres_engine(args.pg_url))):
            if key not in args.skip:
                with open_engine() as engine:
                    results[key] = run_ours(engine, args, layout)
                print(f"{key}: done at {time.monotonic() - started:.0f}s", file=sys.stderr)
        if "mlflow" not in args.skip:
            mlflow = run_mlflow(args, layout, tmp)
            results["mlflow_store"] = mlflow["store"]
            if "http" in mlflow:
                results["mlflow_http"] = mlflow["http"]
            print(f"mlflow: done at {time.monotonic() - started:.0f}s", file=sys.stderr)

    version = subprocess.run([args.mlflow_python, "-c", "import mlflow; print(mlflow.__version__)"],
                             capture_output=True, text=True, check=False).stdout.strip()
    meta = {"date": datetime.now(UTC).date().isoformat(), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
            "python": platform.python_version(), "mlflow": version, "layout": vars(layout) | {"total": layout.total},
            "calls": args.calls, "resolves": args.resolves, "repeats": args.repeats,
            "wall_s": round(time.monotonic() - started, 1), "load_avg_start": load_start,
            "load_avg_end": [round(x, 1) for x in os.getloadavg()]}
    report(results)
    args.out.write_text(json.dumps({"meta": meta, **results}, indent=1) + "\n")
    print(f"\n{json.dumps(meta)}\nwrote {args.out}")


if __name__ == "__main__":
    main()
