"""The MLflow half of the registry benchmark; runs in MLflow's own venv and prints one JSON object.

``bench_registry.py`` (our venv) starts this script and the ``mlflow server``; nothing here imports the project.
The same operations as our side, on MLflow's registry, reached two ways through one small adapter:

* ``store``: ``SqlAlchemyStore`` in this process on a SQLite file (each call its own transaction, no HTTP);
* ``seed-http`` / ``query-http``: ``MlflowClient`` against the server's URL (REST over loopback);
* ``store`` also leaves a copy of its seeded file, which the server serves when creating the data set through
  the server would be too slow.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from typing import Any, Protocol

from common import ALIAS, OPS_MODEL, QUERIES, TEXT, WARMUP, Layout, expect, model_name, time_calls

SOURCE = "s3://bench-bucket/{model}/{n}"  # dummy artifact location; nothing is read from it


class Registry(Protocol):
    """The part of MLflow's registry API used here (``MlflowClient`` and ``SqlAlchemyStore`` both have it)."""

    def create_registered_model(self, name: str) -> Any: ...
    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None: ...
    def get_model_version_by_alias(self, name: str, alias: str) -> Any: ...
    def search_model_versions(self, filter_string: str | None = ..., max_results: int = ...,
                              order_by: list[str] | None = ..., page_token: str | None = ...) -> Any: ...
    def search_registered_models(self, filter_string: str | None = ..., max_results: int = ...,
                                 order_by: list[str] | None = ..., page_token: str | None = ...) -> Any: ...


def create_version(reg: Any, model: str, n: int) -> None:
    """One model version with a dummy source (it is READY at once, so the client's wait costs no request)."""
    reg.create_model_version(model, SOURCE.format(model=model, n=n))


def open_store(db: str) -> Any:
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(f"sqlite:///{db}")


def open_client(url: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


# ----------------------------------------------------------------------------------------------- phases
def seed(reg: Any, layout: Layout, *, limit_s: float | None = None) -> dict[str, Any]:
    """Create the models, then the versions round by round. With ``limit_s``, stop after a round once the
    projected time for all versions exceeds it (judged after at least 30 s of versions, not from a cold start)."""
    started = time.perf_counter()
    for i in range(layout.models):
        reg.create_registered_model(model_name(i))
    versions_from, rounds, done = time.perf_counter(), layout.rounds(), 0
    for r, models in enumerate(rounds):
        for model in models:
            create_version(reg, model, r + 1)
        done = r + 1
        elapsed = time.perf_counter() - versions_from
        if limit_s is not None and elapsed >= 30 and elapsed / done * len(rounds) > limit_s:
            break
    versions_s = time.perf_counter() - versions_from
    created = done * layout.models
    return {"created": created, "seconds": round(time.perf_counter() - started, 2),
            "versions_per_s": round(created / versions_s, 1) if versions_s else None}


def backup(db: str, copy: str) -> None:
    """A consistent copy of the SQLite file (SQLite's online backup), for the server to start on."""
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)


def queries(reg: Registry, layout: Layout, *, repeats: int, deadline: float) -> dict[str, Any]:
    """The listing queries, with the same row counts as our side."""
    per, one = layout.per_model, f"name='{model_name(42)}'"
    newest = ["version_number DESC"]

    def walk() -> int:
        rows, token = 0, None
        while True:
            page = reg.search_model_versions(one, max_results=20, order_by=newest, page_token=token)
            rows += len(page)
            token = page.token
            if not token:
                return rows

    calls = {
        "list_one": (lambda: len(reg.search_model_versions(one)), per),
        "page_newest": (lambda: len(reg.search_model_versions(one, max_results=20, order_by=newest)), min(20, per)),
        "walk_pages": (walk, per),
        "search_text": (lambda: len(reg.search_model_versions(f"name LIKE '%{TEXT}%'", max_results=100,
                                                              order_by=["creation_timestamp DESC"])),
                        min(100, 11 * per)),
        "list_models": (lambda: len(reg.search_registered_models(max_results=100)), min(100, layout.models)),
    }

    def checked(key: str) -> Any:
        query, want = calls[key]
        return lambda _: expect(query(), want, key)

    return {key: time_calls(checked(key), repeats, deadline=deadline, warmup=WARMUP) for key, _, _ in QUERIES}


def ops(reg: Any, *, calls: int, resolves: int, deadline: float) -> dict[str, Any]:
    """Register, set-alias and get-by-alias on one model, one call at a time."""
    reg.create_registered_model(OPS_MODEL)
    out = {"register": time_calls(lambda i: create_version(reg, OPS_MODEL, i + 1), calls, deadline=deadline,
                                  warmup=WARMUP)}
    out["alias_move"] = time_calls(lambda i: reg.set_registered_model_alias(OPS_MODEL, ALIAS, str(i % 10 + 1)),
                                   calls, deadline=deadline, warmup=WARMUP)
    out["resolve"] = time_calls(lambda _: reg.get_model_version_by_alias(OPS_MODEL, ALIAS), resolves,
                                deadline=deadline, warmup=WARMUP)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("phase", choices=["store", "seed-http", "query-http"])
    parser.add_argument("--db", help="SQLite file of the store phase")
    parser.add_argument("--seed-copy", help="store phase: copy the seeded file here before the ops")
    parser.add_argument("--url", help="mlflow server URL for the http phases")
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--per-model", type=int, default=100)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--resolves", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--phase-limit", type=float, default=150.0)
    parser.add_argument("--create-limit", type=float, default=240.0)
    args = parser.parse_args()
    layout = Layout(models=args.models, per_model=args.per_model)
    deadline = time.monotonic() + args.phase_limit  # for the timed calls; the seed is bounded by its size

    result: dict[str, Any]
    if args.phase == "store":
        store = open_store(args.db)
        made = seed(store, layout)
        if args.seed_copy:
            backup(args.db, args.seed_copy)
        deadline = time.monotonic() + args.phase_limit
        result = {"seed": {"versions": made["created"], "seconds": made["seconds"],
                           "per_s": round(made["created"] / made["seconds"], 1),
                           "how": "100 create_registered_model + 10,000 create_model_version, one transaction each"},
                  "queries": queries(store, layout, repeats=args.repeats, deadline=deadline),
                  "ops": ops(store, calls=args.calls, resolves=args.resolves, deadline=deadline)}
    elif args.phase == "seed-http":
        result = seed(open_client(args.url), layout, limit_s=args.create_limit)
    else:
        client = open_client(args.url)
        result = {"queries": queries(client, layout, repeats=args.repeats, deadline=deadline),
                  "ops": ops(client, calls=args.calls, resolves=args.resolves, deadline=deadline)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
