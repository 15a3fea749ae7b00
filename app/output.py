"""How every command prints: a plain table for people, or JSON (``--json``) for scripts."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses, pydantic models and datetimes become dicts and strings."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` as an aligned text table of ``columns``, upper-case headers; ``(none)`` when empty."""
    if not rows:
        return "(none)"
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def cell(value: Any) -> str:
    """One table cell: ``-`` for nothing, seconds-precision times, ``k=v`` pairs for dicts."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def emit(args: argparse.Namespace, payload: Any, render: Callable[[Any], str]) -> None:
    """Print ``payload`` as JSON with ``--json``, else as ``render`` draws it."""
    if args.json:
        print(json.dumps(plain(payload), indent=2, sort_keys=True))
    else:
        print(render(payload))
