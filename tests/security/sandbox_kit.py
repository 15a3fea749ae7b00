"""What the pod sandbox tests share: hostile models, a pod interpreter an unprivileged account can run, artifacts.

The control plane's interpreter may live where only root can read it (``/root/.pyenv`` on the test machines);
``pod_python`` then builds a venv from the system's Python of the same version that reads the control plane's
site-packages, so pods can really run as ``nobody`` here, the way a production image installs Python for all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import torch

from tests.artifacts import DigitsMLP

REPO = Path(__file__).resolve().parents[2]
CANARY = b"CANARY-7f3"  # ten bytes: one per output the snooping model returns
DIGITS_IO: dict[str, Any] = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    "labels": [str(i) for i in range(10)],
}
#: Handler code that records what it can see of its process the moment the pod imports it.
SPY_HANDLER = '''
"""Records the pod's environment, working folder and account into its HOME, then serves like tabular."""
import json
import os
from pathlib import Path

from handlers.builtin.tabular import TabularHandler

Path(os.environ.get("HOME", "/nonexistent"), "seen.json").write_text(json.dumps(
    {"environ": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid()}))


class Spy(TabularHandler):
    pass
'''


class Snoop(torch.nn.Module):
    """A TorchScript model whose forward reads a file by path and returns its first ten bytes as 'probabilities'."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The file's bytes, once per row of ``x``."""
        data = torch.from_file(self.path, shared=False, size=10, dtype=torch.uint8)
        return data.to(torch.float32).unsqueeze(0).expand(x.shape[0], 10)


def scripted(module: torch.nn.Module) -> bytes:
    """TorchScript bytes of ``module``."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def model_dir(root: Path, files: dict[str, bytes], **manifest: Any) -> Path:
    """A model directory with a manifest listing every file's size and sha256."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    manifest["files"] = {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()}
    (root / "manifest.json").write_text(json.dumps({**DIGITS_IO, **manifest}))
    return root


def safetensors_digits(root: Path, *, name: str = "digits", version: str = "1") -> Path:
    """A code-free digits model: safetensors weights of the built-in ``mlp`` architecture, tabular handler."""
    from safetensors.torch import save

    model = DigitsMLP(hidden=32)
    # DigitsMLP's net.N is the built-in mlp's layers.N: same layer indices, same shapes.
    weights = {key.replace("net.", "layers.", 1): value.detach().contiguous()
               for key, value in model.state_dict().items()}
    return model_dir(root, {"model.safetensors": save(weights)}, name=name, version=version, format="safetensors",
                     handler="tabular", architecture="mlp",
                     extra={"sizes": [64, 32, 10], "output_activation": "softmax"})


def pod_python(root: Path) -> str:
    """An interpreter an unprivileged account can run, seeing the control plane's packages."""
    if os.access(sys.executable, os.X_OK) and not _private(Path(sys.executable).resolve()):
        return sys.executable
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        return sys.executable
    venv = root / "pod-venv"
    if not venv.exists():
        subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next((venv / "lib").glob("python*/site-packages"))
        (site / "control-plane.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        for folder, dirs, files in os.walk(venv):
            for entry in dirs + files:
                path = Path(folder) / entry
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o555 if entry in dirs or os.access(path, os.X_OK)
                               else path.stat().st_mode | 0o444)
        venv.chmod(0o755)
    return str(venv / "bin" / "python")


def _private(path: Path) -> bool:
    """True when some folder above ``path`` is closed to other accounts."""
    return any(not parent.stat().st_mode & 0o001 for parent in path.parents)


def copy_tree(source: Path, target: Path) -> Path:
    """A copy of a model directory."""
    return Path(shutil.copytree(source, target))
