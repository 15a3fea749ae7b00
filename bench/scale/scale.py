"""Drop N versions across M models into a bucket folder at once and measure how the control plane settles them.

The control plane runs as ``release up --only ROLE`` processes (controller, monitor, intake, router) on one
store (SQLite by default, or ``--db-url postgresql://...``). Measured: drop -> final state per version (p50, p99),
control-plane CPU seconds per version (/proc of the role processes, not the pods), peak pods at once and peak
RSS of all pods, database growth (rows per table, bytes). Checks: each version registered exactly once, exactly
one LIVE per model, PROD on the expected version, every version in its expected final state.

    PYTHONPATH=. python bench/scale/scale.py --versions 50 --models 10
    PYTHONPATH=. python bench/scale/scale.py --versions 200 --models 20 --podless   # see farm.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, like the other benches

from bench.scale.run import ScaleRun, summary


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--versions", type=int, default=10, help="versions dropped at once")
    parser.add_argument("--models", type=int, default=0, help="models they spread over (default versions / 5)")
    parser.add_argument("--db-url", default="", help="the store (default: SQLite in the run folder)")
    parser.add_argument("--podless", action="store_true",
                        help="serve versions from one bench-only farm process instead of a pod each (farm.py)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs, store) afterwards")
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run once; exit 0 when every version settled and every check passed."""
    args = parse(argv)
    models = args.models or max(1, args.versions // 5)
    run = ScaleRun(versions=args.versions, models=models, db_url=args.db_url, podless=args.podless,
                   quiet=args.json)
    try:
        run.setup()
        run.start()
        report = run.execute(timeout_s=args.timeout)
    finally:
        run.close(keep=args.keep)
    report["run_folder"] = str(run.root) if args.keep else None
    print(json.dumps(report, indent=2) if args.json else summary(report), flush=True)
    ok = report["settled"] == report["versions"] and all(ok for ok, _ in report["checks"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
