"""Issue 14's attacks on intake, each refused with its exact reason code: nothing ran and nothing registered."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch
from sqlalchemy.engine import Engine
from sqlmodel import select

from handlers.archive import ArchiveLimits, extract_zip
from release import policies
from release.adapters.local_bus import LocalEventBus
from release.db import session_factory, session_scope
from release.intake import Intake
from release.samples import read_sample
from release.testing import MemoryStore
from schemas.errors import ArtifactRejected, Reason, TemporaryError
from schemas.policy import ReleasePolicy, RolloutPolicy
from schemas.tables import Model, ModelVersion
from tests.artifacts import manifest_for, npz_bytes, torchscript_bytes, write_artifact
from tests.marfiles import build_mar, decoy_pickle, raw_zip, torch_zip


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A file that any exploit here would create: it must never exist."""
    return tmp_path / "pwned"


def _registered(engine: Engine) -> list[str]:
    with session_scope(engine) as s:
        return sorted(f"{m.name}/{v.version}" for v, m in s.exec(
            select(ModelVersion, Model).where(ModelVersion.model_id == Model.id)).all())


def _verdicts(intake: Intake) -> dict[str, tuple[str, str | None]]:
    return {r.artifact: (r.status, r.reason) for r in intake.reconcile(final=True)}


def _state_dict_dir(bucket: Path, version: str, weights: bytes, name: str = "weights.pt") -> None:
    files = {name: weights}
    write_artifact(bucket, "bad", version, files,
                   manifest_for("bad", version, files, format="state_dict", architecture="mlp"))


def _plain_state_dict() -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(64, 10).state_dict(), buffer)
    return buffer.getvalue()


def test_decoy_strings_do_not_hide_stack_global_os_system(bucket: Path, engine: Engine, intake: Intake,
                                                          canary: Path) -> None:
    """Two harmless names pushed and POPped before STACK_GLOBAL do not hide os.system: unsafe_pickle."""
    _state_dict_dir(bucket, "1", torch_zip({"data.pkl": decoy_pickle(f"touch {canary}")}))
    assert _verdicts(intake) == {"models/bad/1/": ("rejected", "unsafe_pickle")}
    assert not canary.exists() and _registered(engine) == []


def test_an_exploit_in_a_second_pickle_member_is_found(bucket: Path, engine: Engine, intake: Intake,
                                                       canary: Path) -> None:
    """A torch zip whose data.pkl is clean but whose other .pkl member imports os.system is refused."""
    clean = zipfile.ZipFile(io.BytesIO(_plain_state_dict()))
    members = {n.split("/", 1)[1]: clean.read(n) for n in clean.namelist() if n.endswith(".pkl") or "/data/" in n}
    members["extra.pkl"] = decoy_pickle(f"touch {canary}")
    _state_dict_dir(bucket, "1", torch_zip(members))
    assert _verdicts(intake) == {"models/bad/1/": ("rejected", "unsafe_pickle")}
    assert not canary.exists() and _registered(engine) == []


def test_an_exploit_in_a_concatenated_pickle_is_found(bucket: Path, engine: Engine, intake: Intake,
                                                      canary: Path) -> None:
    """A raw file of two pickles, the first harmless, the second os.system: unsafe_pickle."""
    _state_dict_dir(bucket, "1", pickle.dumps({"w": [1.0]}) + decoy_pickle(f"touch {canary}"), name="weights.pth")
    assert _verdicts(intake) == {"models/bad/1/": ("rejected", "unsafe_pickle")}
    assert not canary.exists() and _registered(engine) == []


def test_a_pickle_beside_a_torchscript_model_is_scanned(bucket: Path, engine: Engine, intake: Intake,
                                                        canary: Path) -> None:
    """A .pkl extra file in a torchscript folder is a pickle like any other: unsafe_pickle."""
    files = {"model.pt": torchscript_bytes(), "tokenizer.pkl": decoy_pickle(f"touch {canary}")}
    write_artifact(bucket, "bad", "1", files, manifest_for("bad", "1", files))
    assert _verdicts(intake) == {"models/bad/1/": ("rejected", "unsafe_pickle")}
    assert not canary.exists() and _registered(engine) == []


def test_a_pickle_inside_a_mar_is_scanned(bucket: Path, engine: Engine, intake: Intake, tmp_path: Path,
                                          canary: Path) -> None:
    """A .mar whose serialized file is a hostile state dict is refused unsafe_pickle before any pod sees it."""
    mar = build_mar(tmp_path, name="bad", version="1.0", serialized=torch_zip({"data.pkl": decoy_pickle(
        f"touch {canary}")}))
    (bucket / "models/bad").mkdir(parents=True)
    mar.rename(bucket / "models/bad/1.mar")
    assert _verdicts(intake) == {"models/bad/1.mar": ("rejected", "unsafe_pickle")}
    assert not canary.exists() and _registered(engine) == []


ZIP_ATTACKS = {
    "zip_slip": (lambda: raw_zip([("ok.txt", b"x"), ("../../escape.py", b"x")]), "unsafe_path"),
    "symlink": (lambda: raw_zip([("ok.txt", b"x"), ("link", b"/etc/passwd")], symlink="link"), "unsafe_symlink"),
    "encrypted": (lambda: raw_zip([("ok.txt", b"x"), ("secret.bin", b"x")], encrypted="secret.bin"),
                  "archive_invalid"),
    "duplicate": (lambda: raw_zip([("model.pt", b"a"), ("model.pt", b"b")]), "archive_invalid"),
    "bomb": (lambda: raw_zip([("zeros.bin", b"\0" * (8 << 20))]), "archive_too_large"),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("attack", sorted(ZIP_ATTACKS))
def test_a_zip_inside_a_folder_artifact_gets_the_pods_rules(attack: str, bucket: Path, engine: Engine,
                                                            intake: Intake) -> None:
    """A .mar or any zip listed in a folder artifact is vetted with the rules the pod applies."""
    make, reason = ZIP_ATTACKS[attack]
    files = {"model.pt": torchscript_bytes(), "assets.zip": make(), "nested.mar": make()}
    write_artifact(bucket, "bad", "1", files, manifest_for("bad", "1", files))
    assert _verdicts(intake) == {"models/bad/1/": ("rejected", reason)}
    assert _registered(engine) == []


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("attack", sorted(ZIP_ATTACKS))
def test_a_bare_mar_gets_the_pods_rules(attack: str, bucket: Path, engine: Engine, intake: Intake) -> None:
    """The same archives uploaded as models/<name>/<version>.mar get the same reason codes."""
    (bucket / "models/bad").mkdir(parents=True)
    (bucket / "models/bad/1.mar").write_bytes(ZIP_ATTACKS[attack][0]())
    assert _verdicts(intake) == {"models/bad/1.mar": ("rejected", ZIP_ATTACKS[attack][1])}
    assert _registered(engine) == []


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("attack", sorted(ZIP_ATTACKS))
def test_the_pod_refuses_the_same_archives_with_the_same_reason(attack: str, tmp_path: Path) -> None:
    """The pod's unpacking applies the very rules intake applied: same archive, same reason code."""
    make, reason = ZIP_ATTACKS[attack]
    (tmp_path / "a.mar").write_bytes(make())
    with pytest.raises(ArtifactRejected) as refused:
        extract_zip(tmp_path / "a.mar", tmp_path / "out", limits=ArchiveLimits())
    assert refused.value.reason == Reason(reason)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def _huge_header_npy() -> bytes:
    """An .npy whose header declares 10**10 float64 elements over a few bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**10,)})
    return buffer.getvalue() + b"\0" * 64


NPZ_ATTACKS = {
    "inflates": (lambda: raw_zip([("x.npy", np.lib.format.MAGIC_PREFIX), ("y.npy", b"\0" * (50 << 20))]),
                 "archive_too_large"),
    "elements": (lambda: raw_zip([("x.npy", _huge_header_npy()), ("y.npy", _huge_header_npy())], compress=False),
                 "sample_too_large"),
    "objects": (lambda: npz_bytes(x=np.array([{"a": 1}], dtype=object), y=np.zeros(1)), "sample_invalid"),
    "no_arrays": (lambda: npz_bytes(z=np.zeros(3)), "sample_invalid"),
}


@pytest.mark.parametrize("attack", sorted(NPZ_ATTACKS))
def test_an_eval_sample_beyond_the_caps_is_rejected(attack: str, bucket: Path, engine: Engine,
                                                    intake: Intake) -> None:
    """Eval npz files that inflate, declare huge arrays, hold objects or lack x/y are refused at intake."""
    make, reason = NPZ_ATTACKS[attack]
    files = {"model.pt": torchscript_bytes(), "eval.npz": make()}
    write_artifact(bucket, "bad", "1", files, manifest_for("bad", "1", files, eval="eval.npz"))
    assert _verdicts(intake) == {"models/bad/1/": ("rejected", reason)}
    assert _registered(engine) == []


@pytest.mark.parametrize("attack", ["inflates", "elements"])
def test_the_control_plane_loader_caps_samples_too(attack: str, tmp_path: Path) -> None:
    """The gates' and monitor's loader refuses the same npz files, whatever intake let through."""
    (tmp_path / "eval.npz").write_bytes(NPZ_ATTACKS[attack][0]())
    with pytest.raises(ArtifactRejected) as refused:
        read_sample(tmp_path, "eval.npz")
    assert refused.value.reason == Reason(NPZ_ATTACKS[attack][1])


def test_mar_requirements_are_refused_unless_the_policy_allows(bucket: Path, engine: Engine, intake: Intake,
                                                               tmp_path: Path) -> None:
    """A .mar with --requirements-file is rejected requirements_forbidden; allowed by policy, it registers."""
    for name in ("strict", "lenient"):
        mar = build_mar(tmp_path, name=name, version="1", serialized=torchscript_bytes(), requirements="evil==1\n")
        (bucket / "models" / name).mkdir(parents=True)
        mar.rename(bucket / "models" / name / "1.mar")
    with session_scope(engine) as s:
        policies.set_policy(s, model="lenient", policy=ReleasePolicy(rollout=RolloutPolicy(allow_requirements=True)),
                            actor="operator", reason="team installs its own")
    assert _verdicts(intake) == {"models/strict/1.mar": ("rejected", "requirements_forbidden"),
                                 "models/lenient/1.mar": ("registered", None)}
    report = json.loads((bucket / "models/strict/1.mar.REJECTED.json").read_text())
    assert "requirements" in report["hint"]
    assert _registered(engine) == ["lenient/1"]


def test_a_mar_named_for_another_model_is_refused(bucket: Path, engine: Engine, intake: Intake,
                                                  tmp_path: Path) -> None:
    """A .mar whose modelName differs from its folder would be served under another name: path mismatch."""
    mar = build_mar(tmp_path, name="other", version="1", serialized=torchscript_bytes())
    (bucket / "models/digits").mkdir(parents=True)
    mar.rename(bucket / "models/digits/1.mar")
    assert _verdicts(intake) == {"models/digits/1.mar": ("rejected", "manifest_path_mismatch")}
    assert _registered(engine) == []


def test_artifacts_that_used_to_crash_intake_cost_only_themselves(bucket: Path, engine: Engine, intake: Intake,
                                                                  tmp_path: Path) -> None:
    """A custom-handler .mar, a manifest nested past the recursion limit, a corrupt deflate stream and a
    non-string MAR handler: each gets a verdict, and the folder model beside them registers."""
    write_artifact(bucket, "good", "1", {"model.pt": torchscript_bytes()})
    mar = build_mar(tmp_path, name="marred", version="1", serialized=torchscript_bytes())
    (bucket / "models/marred").mkdir(parents=True)
    mar.rename(bucket / "models/marred/1.mar")
    write_artifact(bucket, "deep", "1", {"model.pt": b"x"}, with_manifest=False)
    (bucket / "models/deep/1/manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    corrupt = bytearray(raw_zip([("MAR-INF/MANIFEST.json", json.dumps({"model": {"handler": "h.py"}}).encode() * 50)]))
    corrupt[70:90] = b"\xff" * 20  # inside the deflated data: the stream no longer inflates
    (bucket / "models/corrupt").mkdir(parents=True)
    (bucket / "models/corrupt/1.mar").write_bytes(bytes(corrupt))
    (bucket / "models/odd").mkdir(parents=True)
    (bucket / "models/odd/1.mar").write_bytes(raw_zip([("MAR-INF/MANIFEST.json",
                                                         json.dumps({"model": {"handler": 7}}).encode())]))
    verdicts = _verdicts(intake)
    assert verdicts.pop("models/good/1/") == ("registered", None)
    assert verdicts.pop("models/marred/1.mar") == ("registered", None)
    assert verdicts == {"models/deep/1/": ("rejected", "manifest_invalid_json"),
                        "models/corrupt/1.mar": ("rejected", "archive_invalid"),
                        "models/odd/1.mar": ("rejected", "manifest_invalid")}
    assert _registered(engine) == ["good/1", "marred/1"]


class _FlakyStore(MemoryStore):
    """The in-memory store with one object that is unavailable and one whose read hits a bug."""

    def open(self, name: str, *, generation: int | None = None) -> BinaryIO:
        if name.startswith("models/later/"):
            raise TemporaryError(f"{name}: storage unavailable")
        if name.startswith("models/buggy/"):
            raise RuntimeError("a bug in reading this object")
        return super().open(name, generation=generation)


def test_one_artifact_failing_never_stops_the_others(engine: Engine) -> None:
    """A transient storage error leaves its artifact pending, an unexpected failure rejects it
    inspection_failed, and the artifact beside them still registers."""
    store = _FlakyStore()
    for name in ("later", "buggy", "fine"):
        files = {"model.pt": torchscript_bytes()}
        for path, data in {**files, "manifest.json": json.dumps(manifest_for(name, "1", files)).encode()}.items():
            store.write(f"models/{name}/1/{path}", data)
    intake = Intake(store=store, bus=LocalEventBus(session_factory=session_factory(engine)), engine=engine)
    assert _verdicts(intake) == {"models/later/1/": ("pending", "unavailable"),
                                 "models/buggy/1/": ("rejected", "inspection_failed"),
                                 "models/fine/1/": ("registered", None)}
    report = store.read_json("models/buggy/1/REJECTED.json")
    assert "RuntimeError" in report["message"] and report["hint"]
    assert _registered(engine) == ["fine/1"]
