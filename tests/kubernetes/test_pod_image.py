"""The serving pod image pins the torch the project tests with (at least 2.6, past CVE-2025-32434), and every
other pod dependency at the version the test suite runs."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "deploy" / "docker" / "pod-requirements.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"\[.*\]", "", name).lower()] = version.strip()
    return pins


def test_the_pod_image_pins_the_torch_the_makefile_tests_with():
    """pod-requirements.txt and the Makefile's TORCH name the same torch, and it is at least 2.6."""
    tested = re.search(r"^TORCH\s*\?=\s*torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert tested is not None
    assert _pins()["torch"] == tested.group(1)
    major, minor = (int(p) for p in tested.group(1).split(".")[:2])
    assert (major, minor) >= (2, 6)


def test_the_pod_image_takes_torch_from_its_requirements_not_from_a_base_image():
    """No PyTorch base image with its own torch version hides behind the pin."""
    dockerfile = (ROOT / "deploy" / "docker" / "pod.Dockerfile").read_text()
    assert "pytorch/pytorch" not in dockerfile
    assert "pod-requirements.txt" in dockerfile


def test_every_pod_dependency_is_pinned_at_the_version_tested_here():
    """Each pinned package is the version installed in the environment the suite runs in."""
    for name, version in _pins().items():
        installed = metadata.version(name).split("+")[0]
        assert installed == version, f"{name}: pod image pins {version}, tests run {installed}"
