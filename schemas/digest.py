"""The content address of a registered artifact, computed the same way by intake and by the serving pods.

A model directory's digest is the sha256 of its canonical manifest, and the manifest pins every file's sha256:
a pod that finds this digest on the manifest it holds, then every file's checksum on that manifest, serves
exactly the bytes that were registered. A ``.mar`` is addressed by the sha256 of the archive itself.
"""

from __future__ import annotations

import hashlib
import json

from schemas.manifest import Manifest

DIGEST_PREFIX = "sha256:"


def manifest_digest(manifest: Manifest) -> str:
    """``sha256:`` + the sha256 of the manifest's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return DIGEST_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()
