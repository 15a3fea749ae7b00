"""``python -m app.console.assets``: fetch the dashboard's third-party files at install time, verified.

No third-party code is committed: each asset is a file inside a pinned npm package, fetched with the npm client
(``npm pack``), checked against the sha512 integrity pinned here (the registry's own ``dist.integrity``) before
anything is extracted, and written into ``app/console/static/`` (git-ignored). Without npm the dashboard still
works, without charts; a tarball whose digest differs is refused. ``static/ASSETS.md`` lists the licences.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Asset:
    """Files taken from one pinned npm package."""

    package: str
    version: str
    integrity: str
    files: tuple[str, ...]


ASSETS = (
    Asset(package="uplot", version="1.6.32",
          integrity="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
          files=("dist/uPlot.iife.min.js", "dist/uPlot.min.css")),
)


def verify(data: bytes, integrity: str) -> None:
    """Raise ``ValueError`` unless ``data`` has the Subresource-Integrity digest ``integrity``."""
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise ValueError(f"integrity mismatch: expected {integrity}, got {algorithm}-{actual}")


def extract(tarball: bytes, asset: Asset, dest: Path) -> list[Path]:
    """Write the asset's files from a verified tarball into ``dest`` (flat, by file name)."""
    verify(tarball, asset.integrity)
    written = []
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for name in asset.files:
            member = archive.extractfile(f"package/{name}")
            if member is None:
                raise ValueError(f"{asset.package}@{asset.version} has no {name}")
            target = dest / Path(name).name
            target.write_bytes(member.read())
            written.append(target)
    return written


def fetch(asset: Asset) -> bytes:
    """The package tarball, through the npm client."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["npm", "pack", f"{asset.package}@{asset.version}", "--silent"], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)
        (tarball,) = Path(folder).glob("*.tgz")
        return tarball.read_bytes()


def main() -> int:
    """Fetch every asset not already present; 0 when done or when npm is missing (charts are optional)."""
    if all((STATIC / Path(f).name).is_file() for a in ASSETS for f in a.files):
        return 0
    if shutil.which("npm") is None:
        print("npm not found: the dashboard will work without charts", file=sys.stderr)
        return 0
    for asset in ASSETS:
        for path in extract(fetch(asset), asset, STATIC):
            print(f"{asset.package}@{asset.version}: {path.relative_to(STATIC.parent.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
