"""The versions a scale run drops: N versions across M models, built like uploads (tests/artifacts.py builders).

Each model gets exactly one version that passes its gates (the last one); the others are built to fail the
accuracy gate. That makes the final state independent of the order in which the controller happens to take the
versions (two passing versions evaluated against the same PROD would race for it), so the expected end is known:
the good version LIVE and PROD, every other version REJECTED.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tests.artifacts import DigitsMLP, manifest_for, npz_bytes, torchscript_bytes, write_artifact

#: What the bench releases with: the default gates (accuracy >= 0.5, no regression, latency, smoke), with a
#: shorter latency probe whose p99 bound tolerates a 2-core machine shared with other work, on CPU pods.
BENCH_POLICY = {
    "gates": {"latency": {"requests": 40, "concurrency": 2, "p99_ms": 20000.0}},
    "serving": {"accelerator": "none", "gpus": 0},
    "rollout": {"grace_period_s": 0.0, "ready_timeout_s": 300.0},
}
GOOD, BAD = "LIVE", "REJECTED"


@dataclass(frozen=True)
class Planned:
    """One version of the run and the state it must end in."""

    model: str
    version: str
    expected: str


def plan(versions: int, models: int) -> list[Planned]:
    """``versions`` spread round-robin over ``models``; the last version of each model is the good one."""
    counts = [versions // models + (1 if m < versions % models else 0) for m in range(models)]
    out = []
    for m, count in enumerate(counts):
        for v in range(1, count + 1):
            out.append(Planned(model=f"scale-{m:03d}", version=str(v), expected=GOOD if v == count else BAD))
    return out


def build(item: Planned, *, seed: int, rows: int = 64) -> dict[str, bytes]:
    """A TorchScript model, an eval set labelled so its accuracy is 1.0 (good) or 0.25 (bad), and a reference."""
    torch.manual_seed(seed)
    model = DigitsMLP(hidden=16).eval()
    rng = np.random.default_rng(seed)
    x = rng.random((rows, 64), dtype=np.float32)
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(1).numpy()
    y = predicted.copy()
    if item.expected == BAD:
        wrong = rng.permutation(rows)[: rows * 3 // 4]
        y[wrong] = (predicted[wrong] + 1) % 10
    return {"model.pt": torchscript_bytes(model), "eval.npz": npz_bytes(x=x, y=y.astype(np.int64)),
            "reference.npz": npz_bytes(x=x)}


def prepare(items: list[Planned], staging: Path) -> None:
    """Build every version's files under ``staging`` (slow: TorchScript), so the drop itself is only a copy."""
    for seed, item in enumerate(items):
        files = build(item, seed=seed)
        manifest = manifest_for(item.model, item.version, files, eval="eval.npz", reference="reference.npz")
        write_artifact(staging, item.model, item.version, files, manifest)


def drop(items: list[Planned], staging: Path, bucket: Path) -> dict[tuple[str, str], float]:
    """Copy every prepared version into the bucket folder (files first, manifest last); the wall time of each drop."""
    dropped = {}
    for item in items:
        source = staging / "models" / item.model / item.version
        target = bucket / "models" / item.model / item.version
        target.mkdir(parents=True, exist_ok=True)
        for name in ("model.pt", "eval.npz", "reference.npz", "manifest.json"):
            (target / name).write_bytes((source / name).read_bytes())
        dropped[(item.model, item.version)] = time.time()
    return dropped
