"""Materialising a registered artifact for the serving pods: a verified local copy under ``RELEASE_HOME``.

The copy is keyed by the version's digest and completed atomically (download to a temp folder, verify every
sha256, rename), so a pod never starts from a half-copied or tampered artifact, and a second call is free.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from release.ports import ArtifactStore
from release.registry import VersionView
from schemas.errors import ArtifactRejected, Reason
from schemas.manifest import MANIFEST_FILENAME, Manifest, ModelFormat


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def bucket_prefix(version: VersionView, store: ArtifactStore) -> str:
    """The version's object prefix inside ``store`` (its URI minus the store's own URI)."""
    base = store.uri.rstrip("/") + "/"
    if not version.artifact_uri.startswith(base):
        raise ArtifactRejected(f"{version.artifact_uri} is not in bucket {store.uri}", reason=Reason.UNSAFE_PATH)
    return version.artifact_uri[len(base):]


def materialize(store: ArtifactStore, version: VersionView, *, cache: Path) -> Path:
    """A local, verified copy of the version's artifact: the model folder, or the ``.mar`` file."""
    manifest = Manifest.model_validate(version.manifest)
    key = version.digest.removeprefix("sha256:")[:32]
    target = cache / version.model / version.version / key
    prefix = bucket_prefix(version, store)
    if manifest.format is ModelFormat.MAR:
        filename = next(iter(manifest.files))
        final = target / filename
        if final.exists():
            return final
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target) as tmp:
            part = Path(tmp) / filename
            store.download(prefix, part)
            _verify(part, manifest.files[filename].sha256, filename)
            part.replace(final)
        return final
    done = target / ".complete"
    if done.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        for path, entry in manifest.files.items():
            local = staging / path
            store.download(prefix + path, local)
            _verify(local, entry.sha256, path)
        (staging / MANIFEST_FILENAME).write_text(json.dumps(version.manifest, indent=2))
        (staging / ".complete").write_text(version.digest)
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _verify(path: Path, expected: str, label: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise ArtifactRejected(f"{label} changed in the bucket after registration (sha256 {actual})",
                               reason=Reason.CHECKSUM_MISMATCH, file=label,
                               hint="Versions are immutable: upload the new model under a new version.")
