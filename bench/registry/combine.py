"""Medians and ranges over several ``bench_registry.py`` result files (each one run, ours and MLflow together).

    python3 bench/registry/combine.py run1.json run2.json run3.json

Per-call operations and listing queries: p50 ms per implementation, and per run the ratio MLflow store p50 / ours
p50 (above 1 = ours faster), whose median and range across runs is what the README reports.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

OPS = [("register", "register version"), ("alias_move", "move alias (ours: CAS + audit)"),
       ("resolve", "resolve alias")]
OURS = [("ours_sqlite", "ours SQLite"), ("ours_pg", "ours PostgreSQL")]
QUERIES = [("list_one", "all 100 versions of one model"), ("page_newest", "newest-first page of 20"),
           ("walk_pages", "walk 5 pages of 20"), ("search_text", "text search across models, newest 100"),
           ("list_models", "every model with count / latest / aliases")]


def _cell(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    runs = [json.loads(Path(p).read_text()) for p in sys.argv[1:]]
    print(f"{len(runs)} runs: " + ", ".join(f"{r['meta']['date']} load {r['meta']['load_avg_start'][0]}-"
                                             f"{r['meta']['load_avg_end'][0]}" for r in runs))
    print("\n| p50 ms, median (range) over runs | " + " | ".join(n for _, n in OURS)
          + " | MLflow store (SQLite) | MLflow store / ours SQLite | MLflow store / ours PostgreSQL |")
    print("|---|" + "---:|" * (len(OURS) + 3))
    rows = [("ops", op, label) for op, label in OPS] + [("queries", q, f"{label} (10k versions)")
                                                         for q, label in QUERIES]
    for part, op, label in rows:
        p50 = {k: [r[k][part][op]["p50_ms"] for r in runs] for k in ("ours_sqlite", "ours_pg", "mlflow_store")}
        ratios = [[r["mlflow_store"][part][op]["p50_ms"] / r[k][part][op]["p50_ms"] for r in runs]
                  for k, _ in OURS]
        print(f"| {label} | " + " | ".join(_cell(p50[k]) for k in ("ours_sqlite", "ours_pg", "mlflow_store"))
              + " | " + " | ".join(_cell(x) for x in ratios) + " |")


if __name__ == "__main__":
    main()
