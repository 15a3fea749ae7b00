"""Drop -> PROD for the demo's digits v2, by step (from the audit log), here and in a baseline tree, same session.

Each run is a fresh home: digits v1 (baseline) then v2 (better) are trained, dropped into the bucket folder and
taken through intake, rollout to local pods, gates and promotion (``bench/router/bench_router.py``'s flow, which
both trees have). v2's row is the one that counts: v1 starts with the backend (a cold pool, a cold machine).

    python bench/release/drop_to_prod.py [--runs 3] [--baseline /work/main] [--json]

``--baseline TREE`` runs the same flow with TREE's code first (e.g. a checkout of main), then this tree's, and
prints both with the ratio of medians. Loopback only; the numbers include whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_tree(tree: Path, runs: int) -> list[dict[str, Any]]:
    """``runs`` releases of v1 then v2 with ``tree``'s code (this script re-run as a child); v2's rows."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, __file__, "--child", str(tree), "--runs", str(runs)], env=env,
                          capture_output=True, text=True, check=False, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"the run with {tree} failed:\n{done.stderr[-3000:]}")
    return list(json.loads(done.stdout.splitlines()[-1]))


def _child(tree: Path, runs: int) -> list[dict[str, Any]]:
    sys.path[:0] = [str(tree), str(tree / "bench" / "router")]
    import bench_router

    rows = []
    for _ in range(runs):
        home = Path(tempfile.mkdtemp(prefix="bench-drop-"))
        try:
            app, release_rows = bench_router.drop_to_prod(home)
            app.close()
        finally:
            shutil.rmtree(home, ignore_errors=True)
        rows.append(release_rows[-1])
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median total and per-step times of v2 over the runs."""
    steps = sorted({name for row in rows for name in row["steps_s"]}, key=list(rows[0]["steps_s"]).index)
    return {"runs": len(rows), "states": sorted({row["state"] for row in rows}),
            "total_s": [row["total_s"] for row in rows],
            "median_total_s": statistics.median(row["total_s"] for row in rows if row["total_s"] is not None),
            "median_steps_s": {name: round(statistics.median(row["steps_s"][name] for row in rows
                                                               if name in row["steps_s"]), 3) for name in steps},
            "gate_timings_s": [row["gate_timings_s"] for row in rows]}


def _print(results: dict[str, dict[str, Any]]) -> None:
    names = list(next(iter(results.values()))["median_steps_s"])
    print("| tree | " + " | ".join(names) + " | drop -> PROD (median) | runs |")
    print("|---|" + "---:|" * (len(names) + 1) + "---|")
    for label, result in results.items():
        cells = " | ".join(f"{result['median_steps_s'].get(n, float('nan')):.2f}" for n in names)
        runs = ", ".join(f"{t:.2f}" for t in result["total_s"])
        print(f"| {label} | {cells} | {result['median_total_s']:.2f} | {runs} |")


def main(argv: list[str] | None = None) -> int:
    """Measure, print a table (or JSON) and the ratio to the baseline."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="releases of v1 + v2 per tree")
    parser.add_argument("--baseline", type=Path, default=None, help="a tree to measure first, e.g. main's checkout")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args.runs)))
        return 0
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    if args.baseline is not None:
        results["baseline"] = summary(run_tree(args.baseline.resolve(), args.runs))
    results["this tree"] = summary(run_tree(REPO, args.runs))
    out: dict[str, Any] = {"date": started, "load_average_before": load_before,
                           "load_average_after": os.getloadavg(), "cpus": os.cpu_count(), "results": results}
    if "baseline" in results:
        out["speedup"] = round(results["baseline"]["median_total_s"] / results["this tree"]["median_total_s"], 2)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        _print(results)
        print(f"\nload average {load_before} before, {out['load_average_after']} after; {out['cpus']} CPUs, {started}"
              + (f"; speedup {out['speedup']}x" if "speedup" in out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
