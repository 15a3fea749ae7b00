"""Stored gate reports on SQLite and PostgreSQL: the JSON in the table is pinned to a golden dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select

from release import registry
from release.db import session_scope
from schemas.reports import GateReport
from schemas.tables import GateReportRow

GOLDEN = Path(__file__).parents[1] / "data" / "reports" / "gate_report.json"


def _golden() -> Any:
    return json.loads(GOLDEN.read_text())


def _version_id(engine: Engine) -> int:
    with session_scope(engine) as s:
        outcome = registry.register_version(s, model="digits", version="2", digest="sha256:bb",
                                            artifact_uri="file:///b/models/digits/2/", format="torchscript",
                                            manifest={"name": "digits"})
        return outcome.version.id


def test_stored_report_json_is_the_golden_shape(engine: Engine) -> None:
    """A typed report lands in the gate_report table as exactly the golden JSON, with `passed` beside it."""
    version_id = _version_id(engine)
    with session_scope(engine) as s:
        registry.add_gate_report(s, version_id=version_id, report=GateReport.model_validate(_golden()))
    with session_scope(engine) as s:
        row = s.exec(select(GateReportRow).where(GateReportRow.version_id == version_id)).one()
        assert row.report == _golden() and row.passed is False


def test_stored_report_reads_back_typed_and_as_wire(engine: Engine) -> None:
    """The newest report comes back validated: as the model, and as the same golden JSON for displays."""
    version_id = _version_id(engine)
    report = GateReport.model_validate(_golden())
    with session_scope(engine) as s:
        assert registry.load_gate_report(s, version_id) is None and registry.latest_gate_report(s, version_id) is None
        registry.add_gate_report(s, version_id=version_id, report=report.model_copy(update={"version": "old"}))
    with session_scope(engine) as s:
        registry.add_gate_report(s, version_id=version_id, report=report)
    with session_scope(engine) as s:
        assert registry.load_gate_report(s, version_id) == report
        assert registry.latest_gate_report(s, version_id) == _golden()
