"""Unsafe artifacts are refused before any of their code or pickles run, each with its stable reason code."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from pod_testkit import REPO, Artifacts

from handlers.archive import ArchiveLimits, extract_zip, inspect_mar
from handlers.artifact import open_artifact
from handlers.dataplane import load_runtime
from handlers.models import load_weights
from handlers.settings import PodSettings
from schemas.errors import ArtifactRejected, Reason


def rejected(reason: Reason, call, *args, **kwargs) -> ArtifactRejected:
    """Run ``call`` and return the ArtifactRejected it raised, checking its reason."""
    with pytest.raises(ArtifactRejected) as caught:
        call(*args, **kwargs)
    assert caught.value.reason is reason, caught.value
    return caught.value


def make_zip(path: Path, entries: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> Path:
    """A zip with the given entries (names used verbatim) and optional symlink entries."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def mar_manifest(**model: str) -> bytes:
    """A MAR-INF/MANIFEST.json body."""
    return json.dumps({"runtime": "python", "model": {"modelName": "m", "handler": "handler.py",
                                                      "modelVersion": "1.0", **model}}).encode()


def copy_dir(source: Path, tmp_path: Path) -> Path:
    """A private copy of a model directory, to tamper with."""
    return Path(shutil.copytree(source, tmp_path / source.name))


# ------------------------------------------------------------------------------------------ zips
def test_zip_slip_entry_is_unsafe_path(tmp_path):
    """An entry with '..' is refused as unsafe_path and nothing is written outside the target."""
    archive = make_zip(tmp_path / "a.mar", {"MAR-INF/MANIFEST.json": mar_manifest(), "../evil.py": b"x"})
    rejected(Reason.UNSAFE_PATH, extract_zip, archive, tmp_path / "out", limits=ArchiveLimits())
    assert not (tmp_path / "evil.py").exists()


def test_absolute_entry_is_unsafe_path(tmp_path):
    """An entry with an absolute path is refused as unsafe_path."""
    archive = make_zip(tmp_path / "a.mar", {"MAR-INF/MANIFEST.json": mar_manifest(), "/tmp/evil.py": b"x"})
    rejected(Reason.UNSAFE_PATH, inspect_mar, archive)


def test_symlink_entry_is_unsafe_symlink(tmp_path):
    """A symbolic-link entry in a zip is refused as unsafe_symlink."""
    archive = make_zip(tmp_path / "a.mar", {"MAR-INF/MANIFEST.json": mar_manifest()}, symlinks=("link",))
    rejected(Reason.UNSAFE_SYMLINK, inspect_mar, archive)


def test_too_many_entries(tmp_path):
    """An archive with more entries than the limit is refused as archive_too_many_entries."""
    archive = make_zip(tmp_path / "a.mar", {f"f{i}": b"" for i in range(6)})
    rejected(Reason.ARCHIVE_TOO_MANY_ENTRIES, inspect_mar, archive, limits=ArchiveLimits(max_entries=5))


def test_declared_total_too_large(tmp_path):
    """An archive whose declared sizes add up past the limit is refused as archive_too_large before unpacking."""
    archive = make_zip(tmp_path / "a.mar", {"a": b"0" * 600, "b": b"0" * 600})
    rejected(Reason.ARCHIVE_TOO_LARGE, extract_zip, archive, tmp_path / "out",
             limits=ArchiveLimits(max_total_bytes=1000))
    assert not (tmp_path / "out" / "a").exists()


def test_declared_file_too_large(tmp_path):
    """One entry larger than the per-file limit is refused as file_too_large."""
    archive = make_zip(tmp_path / "a.mar", {"a": b"0" * 2000})
    rejected(Reason.FILE_TOO_LARGE, inspect_mar, archive, limits=ArchiveLimits(max_file_bytes=1000))


def test_lying_size_header_stops_at_declared_size(tmp_path):
    """A zip bomb whose headers understate its size is cut at the declared size and refused as archive_invalid."""
    archive = make_zip(tmp_path / "bomb.zip", {"bomb": b"\0" * (4 << 20)})
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset:at + offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    rejected(Reason.ARCHIVE_INVALID, extract_zip, archive, tmp_path / "out", limits=ArchiveLimits())
    written = tmp_path / "out" / "bomb"
    assert not written.exists() or written.stat().st_size <= 10


def test_not_a_zip_is_archive_invalid(tmp_path):
    """A file that is not a zip is refused as archive_invalid."""
    path = tmp_path / "a.mar"
    path.write_bytes(b"not a zip at all")
    rejected(Reason.ARCHIVE_INVALID, inspect_mar, path)


def test_mar_without_manifest(tmp_path):
    """A zip without MAR-INF/MANIFEST.json is refused as manifest_missing."""
    rejected(Reason.MANIFEST_MISSING, inspect_mar, make_zip(tmp_path / "a.mar", {"handler.py": b""}))


def test_mar_manifest_not_json(tmp_path):
    """A MAR manifest that is not JSON is refused as manifest_invalid_json."""
    archive = make_zip(tmp_path / "a.mar", {"MAR-INF/MANIFEST.json": b"{nope"})
    rejected(Reason.MANIFEST_INVALID_JSON, inspect_mar, archive)


def test_mar_manifest_names_missing_handler(tmp_path):
    """A MAR manifest naming a handler file the archive lacks is refused as file_missing."""
    archive = make_zip(tmp_path / "a.mar", {"MAR-INF/MANIFEST.json": mar_manifest()})
    rejected(Reason.FILE_MISSING, inspect_mar, archive)


def test_inspect_real_mar(artifacts: Artifacts):
    """inspect_mar describes a torch-model-archiver archive: name, version, handler, files and sha256."""
    info = inspect_mar(artifacts.mar_class)
    assert info["model_name"] == "digits_class"
    assert info["model_version"] == "1.0"
    assert info["handler"] == "handler.py"
    assert info["serialized_file"] == "weights.pt"
    assert info["model_file"] == "model.py"
    assert len(info["sha256"]) == 64


def test_inspect_mar_imports_no_torch(artifacts: Artifacts):
    """Inspecting a .mar loads neither torch nor the archive's code (safe for the control plane)."""
    code = ("import sys; from pathlib import Path; from handlers.archive import inspect_mar; "
            f"inspect_mar(Path({str(artifacts.mar_class)!r})); "
            "assert 'torch' not in sys.modules and 'handler' not in sys.modules; print('clean')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "clean", result.stderr


def test_mar_sha256_mismatch(artifacts: Artifacts, tmp_path):
    """A .mar whose digest differs from the expected one is refused as checksum_mismatch."""
    rejected(Reason.CHECKSUM_MISMATCH, open_artifact, artifacts.mar_function, work_dir=tmp_path,
             allow_model_code=True, expect_sha256="0" * 64)


# ------------------------------------------------------------------------------------------ model directories
def test_symlink_in_model_dir(artifacts: Artifacts, tmp_path):
    """A symbolic link anywhere in a model directory is refused as unsafe_symlink."""
    model_dir = copy_dir(artifacts.digits_ts, tmp_path)
    (model_dir / "extra").symlink_to("/etc/passwd")
    rejected(Reason.UNSAFE_SYMLINK, open_artifact, model_dir, work_dir=tmp_path, allow_model_code=True)


def test_listed_file_is_a_symlink(artifacts: Artifacts, tmp_path):
    """A listed file replaced by a link to a file with the same bytes is still refused as unsafe_symlink."""
    model_dir = copy_dir(artifacts.digits_ts, tmp_path)
    (model_dir / "model.pt").rename(tmp_path / "elsewhere.pt")
    (model_dir / "model.pt").symlink_to(tmp_path / "elsewhere.pt")
    rejected(Reason.UNSAFE_SYMLINK, open_artifact, model_dir, work_dir=tmp_path, allow_model_code=True)


def test_checksum_mismatch(artifacts: Artifacts, tmp_path):
    """A file whose bytes changed but kept its size is refused as checksum_mismatch."""
    model_dir = copy_dir(artifacts.digits_ts, tmp_path)
    data = bytearray((model_dir / "model.pt").read_bytes())
    data[-1] ^= 0xFF
    (model_dir / "model.pt").write_bytes(bytes(data))
    error = rejected(Reason.CHECKSUM_MISMATCH, open_artifact, model_dir, work_dir=tmp_path,
                     allow_model_code=True)
    assert error.file == "model.pt"


def test_size_mismatch(artifacts: Artifacts, tmp_path):
    """A file with another size than declared is refused as size_mismatch."""
    model_dir = copy_dir(artifacts.digits_ts, tmp_path)
    with (model_dir / "model.pt").open("ab") as fh:
        fh.write(b"more")
    rejected(Reason.SIZE_MISMATCH, open_artifact, model_dir, work_dir=tmp_path, allow_model_code=True)


def test_missing_file(artifacts: Artifacts, tmp_path):
    """A listed file that is absent is refused as file_missing."""
    model_dir = copy_dir(artifacts.digits_ts, tmp_path)
    (model_dir / "model.pt").unlink()
    rejected(Reason.FILE_MISSING, open_artifact, model_dir, work_dir=tmp_path, allow_model_code=True)


def test_manifest_path_escape(artifacts: Artifacts, tmp_path):
    """A manifest listing a file outside the directory is refused as unsafe_path."""
    model_dir = copy_dir(artifacts.digits_ts, tmp_path)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "size": 1}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    rejected(Reason.UNSAFE_PATH, open_artifact, model_dir, work_dir=tmp_path, allow_model_code=True)


def test_manifest_not_json(artifacts: Artifacts, tmp_path):
    """A manifest.json that is not JSON is refused as manifest_invalid_json."""
    model_dir = copy_dir(artifacts.digits_ts, tmp_path)
    (model_dir / "manifest.json").write_text("{")
    rejected(Reason.MANIFEST_INVALID_JSON, open_artifact, model_dir, work_dir=tmp_path, allow_model_code=True)


def test_handler_code_forbidden_in_model_dir(artifacts: Artifacts, tmp_path):
    """A model directory with a handler .py is refused as model_code_forbidden when code is not allowed."""
    rejected(Reason.MODEL_CODE_FORBIDDEN, open_artifact, artifacts.slow, work_dir=tmp_path,
             allow_model_code=False)


def test_handler_code_forbidden_in_mar(artifacts: Artifacts, tmp_path):
    """A .mar is refused as model_code_forbidden when code is not allowed, before it is unpacked."""
    rejected(Reason.MODEL_CODE_FORBIDDEN, open_artifact, artifacts.mar_function, work_dir=tmp_path,
             allow_model_code=False)


class Smuggled:
    """An object a malicious state dict would carry (its class would be imported on unpickling)."""


def test_unsafe_pickle(tmp_path):
    """A weights file holding more than tensors is refused as unsafe_pickle, without unpickling the object."""
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "payload": Smuggled()}, path)
    rejected(Reason.UNSAFE_PICKLE, load_weights, path)


def test_state_dict_artifact_with_unsafe_pickle(artifacts: Artifacts, tmp_path):
    """A state_dict artifact whose weights smuggle an object fails to load with unsafe_pickle."""
    model_dir = copy_dir(artifacts.digits_sd, tmp_path)
    torch.save({"payload": Smuggled()}, model_dir / "weights.pt")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    data = (model_dir / "weights.pt").read_bytes()
    import hashlib

    manifest["files"]["weights.pt"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    rejected(Reason.UNSAFE_PICKLE, load_runtime, PodSettings(artifact=model_dir, work_dir=tmp_path))


def test_pod_refuses_code_with_env_flag(artifacts: Artifacts, start_pod):
    """POD_NO_HANDLER_CODE=1 (the older name) makes the pod exit 3 on a .mar, logging model_code_forbidden."""
    pod = start_pod(artifacts.mar_class, "--log-format", "json", env={"POD_NO_HANDLER_CODE": "1"})
    assert pod.wait_exit() == 3
    assert '"reason": "model_code_forbidden"' in pod.log
