"""Wiring choices made by bootstrap from the settings."""

from __future__ import annotations

import pytest

from release.bootstrap import store_scheme, wants_gpu
from release.settings import Settings


@pytest.mark.parametrize(("gpu", "serving", "expected"), [
    ("on", "local", None), ("on", "kubernetes", None), ("off", "local", False), ("off", "kubernetes", False),
    ("auto", "local", None), ("auto", "kubernetes", None),
])
def test_gpu_setting_decides_what_versions_ask_for(gpu: str, serving: str, expected: bool | None) -> None:
    """off serves every version on CPU; on and auto leave it to each model's serving policy."""
    assert wants_gpu(Settings(gpu=gpu, serving=serving)) is expected


def test_bucket_scheme_picks_the_store() -> None:
    """gs:// URIs go to Cloud Storage, anything else is a folder."""
    assert store_scheme("gs://b/prefix") == "gs"
    assert store_scheme("/tmp/bucket") == "file"
    assert store_scheme("file:///tmp/bucket") == "file"
