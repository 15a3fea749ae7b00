"""Chart geometry for the dashboard's server-drawn SVGs: histogram overlays, class mix, traffic split.

Pure functions from numbers to rectangles, so the charts need no JavaScript and the tests can check them
without a browser. Only PSI over windows is drawn in the browser (uPlot), with a table beside it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT = 320, 120


@dataclass(frozen=True)
class Bar:
    """One bar of an overlay: where it is, how tall, and what it says when hovered."""

    x: float
    y: float
    width: float
    height: float
    label: str


def overlay(reference: list[float] | None, live: list[float] | None, names: list[str]) -> dict[str, Any]:
    """Reference and live shares side by side per bin, scaled to the larger of the two."""
    reference, live = reference or [], live or []
    count = max(len(reference), len(live), 1)
    top = max([*reference, *live, 1e-9])
    slot = WIDTH / count

    def bars(values: list[float], offset: float, who: str) -> list[Bar]:
        out = []
        for i, value in enumerate(values):
            height = HEIGHT * value / top
            name = names[i] if i < len(names) else str(i)
            out.append(Bar(x=i * slot + offset, y=HEIGHT - height, width=slot * 0.42, height=height,
                           label=f"{name}: {who} {value:.3f}"))
        return out

    return {"width": WIDTH, "height": HEIGHT, "reference": bars(reference, slot * 0.06, "reference"),
            "live": bars(live, slot * 0.52, "live")}


def bin_names(edges: list[float]) -> list[str]:
    """Readable names of the bins between interior ``edges`` (outer bins are open-ended)."""
    if not edges:
        return ["all"]
    names = [f"< {edges[0]:.3g}"]
    names += [f"{a:.3g} to {b:.3g}" for a, b in itertools.pairwise(edges)]
    return [*names, f">= {edges[-1]:.3g}"]


def shares(counts: list[int] | None) -> list[float] | None:
    """Counts as shares of their total (None stays None)."""
    if counts is None:
        return None
    total = sum(counts) or 1
    return [c / total for c in counts]


def traffic_split(prod: str | None, canary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The stacked bar across versions: PROD takes what the canary does not."""
    if prod is None:
        return []
    if canary is None or canary["version"] == prod or not canary["weight"]:
        return [{"version": prod, "weight": 100, "role": "PROD"}]
    weight = int(canary["weight"])
    return [{"version": prod, "weight": 100 - weight, "role": "PROD"},
            {"version": canary["version"], "weight": weight, "role": "canary"}]
