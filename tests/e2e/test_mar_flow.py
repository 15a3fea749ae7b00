"""A standard torch-model-archiver ``.mar`` goes LIVE through ``release run --until-idle``, beside folder models.

Issue 14: a ``.mar`` with a custom ``handler.py`` used to crash the run and strand the folder models beside it.
Here a real archive (custom handler, TorchScript weights, ``eval.npz`` and ``reference.npz`` as extra files) is
dropped next to a folder model and a hostile artifact; the run exits 0, the hostile one is rejected, the folder
model goes through its gates, and the ``.mar`` passes the same gates on its own eval set and ends LIVE as PROD.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from release.bootstrap import App
from schemas.states import VersionState
from tests.artifacts import manifest_for, npz_bytes, write_artifact
from tests.e2e.test_embedded_flow import (
    FAST,
    HELD,
    MODEL,
    TRAIN,
    X,
    Y,
    bucket_of,
    cli_json,
    drop,
    embedded_app,
    prod,
    put_policy,
    trained,
    version,
)
from tests.marfiles import build_mar, decoy_pickle, torch_zip

pytestmark = pytest.mark.slow


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """A fresh embedded app for one test."""
    with embedded_app(tmp_path / "home", monkeypatch) as application:
        yield application


def test_a_torch_model_archiver_mar_goes_live_beside_folder_models(app: App, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Folder v1, hostile v0 and a real .mar v2 in one bucket: exit 0, v0 rejected, v1 gated, v2 LIVE as PROD."""
    bucket = bucket_of(app)
    put_policy(app, FAST)
    drop(bucket, "v1", trained("baseline"))
    hostile = {"weights.pt": torch_zip({"data.pkl": decoy_pickle(f"touch {tmp_path / 'pwned'}")})}
    write_artifact(bucket, MODEL, "v0", hostile,
                   manifest_for(MODEL, "v0", hostile, format="state_dict", architecture="mlp"))
    mar = build_mar(tmp_path, name=MODEL, version="2.0", serialized=trained("better"),
                    extra={"eval.npz": npz_bytes(x=X[HELD], y=Y[HELD]), "reference.npz": npz_bytes(x=X[TRAIN][:500])})
    mar.rename(bucket / "models" / MODEL / "v2.mar")

    summary = cli_json(capsys, "run", "--until-idle")

    verdicts = {a["artifact"]: (a["status"], a["reason"]) for a in summary["artifacts"]}
    assert verdicts[f"models/{MODEL}/v0/"] == ("rejected", "unsafe_pickle")
    assert verdicts[f"models/{MODEL}/v2.mar"] == ("registered", None)
    assert not (tmp_path / "pwned").exists()
    assert version(app, "v1").state in (VersionState.LIVE, VersionState.RETIRED, VersionState.REJECTED)
    live = version(app, "v2")
    assert live.state == VersionState.LIVE, live.state_reason
    assert prod(app) == "v2"
    assert live.manifest["eval"] == "eval.npz" and live.manifest["inputs"][0]["shape"] == [-1, 64]
