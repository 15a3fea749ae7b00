"""`release demo --serve` and `make demo SERVE=1` reach the demo's serving mode."""

from __future__ import annotations

from pathlib import Path

from app.cli import build_parser
from app.demo import wants_serving

ROOT = Path(__file__).resolve().parents[2]


def test_release_demo_takes_serve() -> None:
    """The CLI has `demo --serve`, and the demo's own parser reads the flag."""
    args = build_parser().parse_args(["demo", "--serve"])
    assert args.serve and args.func.__name__ == "cmd_demo"
    assert wants_serving(["--serve"]) and not wants_serving([])


def test_make_demo_serve_passes_the_flag() -> None:
    """`make demo SERVE=1` runs `python -m app.demo --serve`."""
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/python -m app.demo $(if $(SERVE),--serve,)" in makefile
