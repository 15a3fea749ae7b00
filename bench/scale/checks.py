"""The checks printed with every scale and fault run, read from the store."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from bench.scale.workload import GOOD, Planned

Check = tuple[bool, str]


def _registered_once(conn: Any, items: list[Planned]) -> Check:
    rows = conn.execute(text("SELECT m.name, v.version, count(*) FROM model_version v JOIN model m "
                             "ON m.id = v.model_id GROUP BY m.name, v.version")).all()
    audits = conn.execute(text("SELECT model, version, count(*) FROM audit_log WHERE action = 'version.registered' "
                               "GROUP BY model, version")).all()
    counts = {(r[0], r[1]): int(r[2]) for r in rows}
    audited = {(r[0], r[1]): int(r[2]) for r in audits}
    wrong = [f"{m}/{v}" for m, v in {(i.model, i.version) for i in items}
             if counts.get((m, v)) != 1 or audited.get((m, v)) != 1]
    extra = set(counts) - {(i.model, i.version) for i in items}
    return not wrong and not extra, f"({len(counts)} rows; wrong: {sorted(wrong)[:5]}, unexpected: {len(extra)})"


def _one_live(conn: Any, items: list[Planned]) -> Check:
    rows = conn.execute(text("SELECT m.name, count(*) FROM model_version v JOIN model m ON m.id = v.model_id "
                             "WHERE v.state = 'LIVE' GROUP BY m.name")).all()
    live = {r[0]: int(r[1]) for r in rows}
    models = sorted({i.model for i in items})
    wrong = [m for m in models if live.get(m, 0) != 1]
    return not wrong, f"({len(models) - len(wrong)}/{len(models)} models; wrong: {wrong[:5]})"


def _prod_expected(conn: Any, items: list[Planned]) -> Check:
    rows = conn.execute(text("SELECT m.name, v.version FROM alias a JOIN model m ON m.id = a.model_id "
                             "JOIN model_version v ON v.id = a.version_id WHERE a.name = 'PROD'")).all()
    prod = {r[0]: r[1] for r in rows}
    expected = {i.model: i.version for i in items if i.expected == GOOD}
    wrong = [f"{m}: {prod.get(m)} != {v}" for m, v in sorted(expected.items()) if prod.get(m) != v]
    return not wrong, f"({len(expected) - len(wrong)}/{len(expected)}; wrong: {wrong[:5]})"


def _states_expected(conn: Any, items: list[Planned]) -> Check:
    rows = conn.execute(text("SELECT m.name, v.version, v.state FROM model_version v JOIN model m "
                             "ON m.id = v.model_id")).all()
    states = {(r[0], r[1]): str(r[2]) for r in rows}
    wrong = [f"{i.model}/{i.version}={states.get((i.model, i.version))}" for i in items
             if states.get((i.model, i.version)) != i.expected]
    return not wrong, f"({len(items) - len(wrong)}/{len(items)}; wrong: {wrong[:5]})"


def _moves_once(conn: Any, _items: list[Planned]) -> Check:
    """No state move applied twice: each (version, from, to) edge appears at most once in the audit log."""
    rows = conn.execute(text("SELECT model, version, details FROM audit_log WHERE action = 'version.state_changed'"))
    seen: dict[tuple[str, str, str, str], int] = {}
    for model, version, details in rows:
        details = details if isinstance(details, dict) else json.loads(details)
        key = (model, version, str(details.get("from")), str(details.get("to")))
        seen[key] = seen.get(key, 0) + 1
    twice = [f"{k[0]}/{k[1]} {k[2]}->{k[3]} x{n}" for k, n in seen.items() if n > 1]
    return not twice, f"({len(seen)} edges; repeated: {twice[:5]})"


def _outbox_delivered(conn: Any, *, relayed: bool) -> Check:
    """Every journal row relayed (Pub/Sub bus), and no local-bus delivery left pending (nothing lost on the way)."""
    unpublished = 0
    if relayed:  # the local bus fans out in the publishing transaction and never marks rows relayed
        unpublished = int(conn.execute(text("SELECT count(*) FROM event WHERE published_at IS NULL")).scalar_one())
    pending = conn.execute(text("SELECT subscription, status, count(*) FROM bus_delivery WHERE status <> 'acked' "
                                "GROUP BY subscription, status")).all()
    open_ = {f"{r[0]}:{r[1]}": int(r[2]) for r in pending}
    return unpublished == 0 and not open_, f"(unpublished journal rows {unpublished}; undelivered {open_})"


def checks(engine: Engine, items: list[Planned], *, relayed: bool) -> dict[str, Check]:
    """Each version registered once, one LIVE per model, PROD on the expected version, the expected end states,
    no state move applied twice, the outbox and deliveries drained."""
    with engine.connect() as conn:
        found = {name: fn(conn, items) for name, fn in (
            ("registered exactly once", _registered_once), ("one LIVE per model", _one_live),
            ("PROD on the expected version", _prod_expected), ("expected final states", _states_expected),
            ("no state move applied twice", _moves_once))}
        found["outbox and deliveries drained"] = _outbox_delivered(conn, relayed=relayed)
        return found
