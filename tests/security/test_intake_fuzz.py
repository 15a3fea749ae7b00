"""Intake fuzzed with random bytes, manifests and zips: it never raises, and each artifact ends with a verdict."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from release.adapters.local_bucket import LocalFolderStore
from release.adapters.local_bus import LocalEventBus
from release.db import session_factory
from release.intake import Intake
from schemas.errors import Reason
from tests.artifacts import manifest_for

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name")  # duplicate entries are one of the fuzzed cases
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_REASONS = {str(r) for r in Reason}
_versions = itertools.count()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
entry_names = st.sampled_from(["MAR-INF/MANIFEST.json", "handler.py", "model.pt", "eval.npz", "reference.npz",
                               "archive/data.pkl", "../up.py", "/abs", "a/./b", "dir/", "requirements.txt"]) \
    | st.text(min_size=1, max_size=30)
mar_manifests = st.fixed_dictionaries({"model": st.fixed_dictionaries({}, optional={
    "modelName": st.sampled_from(["fz", "other"]) | st.text(max_size=8), "modelVersion": st.text(max_size=8),
    "handler": st.sampled_from(["handler.py", "handler.py:handle", "image_classifier"]) | json_values,
    "serializedFile": st.sampled_from(["model.pt", "missing.pt"]) | json_values,
    "requirementsFile": st.sampled_from(["requirements.txt"]) | json_values})})


@st.composite
def zips(draw: st.DrawFn) -> bytes:
    """A zip of random entries, often with a MAR-INF/MANIFEST.json, some flagged as links or stored raw."""
    entries = draw(st.lists(st.tuples(entry_names, st.binary(max_size=200)), max_size=6))
    if draw(st.booleans()):
        entries.append(("MAR-INF/MANIFEST.json", json.dumps(draw(mar_manifests)).encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
            if draw(st.integers(0, 9)) == 0:
                info.external_attr = 0o120777 << 16
            zf.writestr(info, data)
    raw = bytearray(buffer.getvalue())
    if raw and draw(st.integers(0, 4)) == 0:  # flip a byte: corrupt headers and streams
        raw[draw(st.integers(0, len(raw) - 1))] ^= 0xFF
    return bytes(raw)


def _mutated_manifest(draw: st.DrawFn, version: str, files: dict[str, bytes]) -> Any:
    manifest: dict[str, Any] = manifest_for("fz", version, files)
    for key in draw(st.lists(st.sampled_from([*sorted(manifest), "eval", "reference", "architecture", "extra"]),
                             max_size=3)):
        manifest[key] = draw(json_values | st.sampled_from(["state_dict", "mar", "eval.npz", "blob", "handler.py"]))
    return manifest if draw(st.integers(0, 9)) else draw(json_values)


def _intake(engine: Engine, root: Path) -> Intake:
    return Intake(store=LocalFolderStore(root=root), bus=LocalEventBus(session_factory=session_factory(engine)),
                  engine=engine)


def _assert_verdicts(engine: Engine, root: Path, expected: int) -> None:
    results = _intake(engine, root).reconcile(final=True)
    assert len(results) == expected
    for result in results:
        assert result.status in ("registered", "rejected"), result
        assert result.status == "registered" or result.reason in _REASONS, result
        assert result.reason != "inspection_failed", result


def _drop_folder(root: Path, version: str, files: dict[str, bytes], manifest: Any) -> None:
    folder = root / "models" / "fz" / version
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_as_a_mar_get_a_verdict(sqlite_engine: Engine, data: bytes) -> None:
    """Random bytes uploaded as a .mar end rejected with a reason; intake raises nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models/fz").mkdir(parents=True)
        (Path(tmp) / f"models/fz/b{next(_versions)}.mar").write_bytes(data)
        _assert_verdicts(sqlite_engine, Path(tmp), 1)


@FUZZ
@given(data=st.data())
def test_random_manifests_and_files_get_a_verdict(sqlite_engine: Engine, data: st.DataObject) -> None:
    """Folder artifacts with mutated (or random JSON) manifests over random files end registered or rejected."""
    version = f"m{next(_versions)}"
    files = data.draw(st.dictionaries(st.sampled_from(["model.pt", "weights.pkl", "eval.npz", "handler.py", "x.mar"]),
                                      st.binary(max_size=300) | zips(), min_size=1, max_size=3))
    with tempfile.TemporaryDirectory() as tmp:
        _drop_folder(Path(tmp), version, files, _mutated_manifest(data.draw, version, files))
        _assert_verdicts(sqlite_engine, Path(tmp), 1)


@FUZZ
@given(archive=zips(), as_mar=st.booleans())
def test_random_zips_get_a_verdict(sqlite_engine: Engine, archive: bytes, as_mar: bool) -> None:
    """Random zips, uploaded as a .mar or listed in a folder artifact (with valid sizes and digests), get a verdict."""
    version = f"z{next(_versions)}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if as_mar:
            (root / "models/fz").mkdir(parents=True)
            (root / f"models/fz/{version}.mar").write_bytes(archive)
        else:
            files = {"model.mar": archive, "weights.pt": archive}
            manifest = manifest_for("fz", version, files)
            manifest["files"] = {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
                                 for n, b in files.items()}
            _drop_folder(root, version, files, manifest)
        _assert_verdicts(sqlite_engine, root, 1)
