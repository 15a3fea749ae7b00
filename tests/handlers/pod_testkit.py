"""Helpers for the serving-pod tests: artifact builders, the pod process wrapper, request and metric helpers."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
COLORS = ["red", "green", "blue"]
SENTIMENT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "great", "bad", "awful", "movie", "the", "##s"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_model_dir(root: Path, *, files: dict[str, bytes], **manifest: Any) -> Path:
    """A model directory: the files, plus a manifest.json listing each with its size and sha256."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    manifest["files"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                         for name, data in files.items()}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def to_bytes(save: Callable[[Any], None]) -> bytes:
    """What a torch save function writes, as bytes."""
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Digits:
    """The digits data set and an MLP trained on it (probabilities out)."""

    x: np.ndarray
    y: np.ndarray
    model: nn.Module


DIGITS_IO = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    "labels": [str(i) for i in range(10)],
}


class ColorNet(nn.Module):
    """Mean of each colour channel, scaled: a pure red, green or blue image is classified by its colour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 10.0


class BagOfWords(nn.Module):
    """Sums fixed per-token scores: positive words push class 1, negative words class 0."""

    def __init__(self) -> None:
        super().__init__()
        weights = torch.zeros(len(SENTIMENT_VOCAB), 2)
        for word in ("good", "great"):
            weights[SENTIMENT_VOCAB.index(word), 1] = 5.0
        for word in ("bad", "awful"):
            weights[SENTIMENT_VOCAB.index(word), 0] = 5.0
        self.embedding = nn.Embedding.from_pretrained(weights, freeze=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids).sum(dim=1)


# ---------------------------------------------------------------------------------------------- artifacts
@dataclass(frozen=True)
class Artifacts:
    """Paths of every artifact the tests serve."""

    root: Path
    digits_ts: Path
    digits_sd: Path
    image: Path
    text: Path
    slow: Path
    mar_class: Path
    mar_function: Path


SLOW_HANDLER = '''
"""Tabular handler with test knobs: parameters.sleep_s delays the batch, parameters.fail raises, and
parameters.gate (a file path) holds the batch until the test lets go of that file's lock (a BatchGate)."""
import fcntl
import time

from handlers.builtin.tabular import TabularHandler


class SlowTabular(TabularHandler):
    def preprocess(self, batch):
        if any(request.parameters.get("fail") for request in batch):
            raise RuntimeError("asked to fail")
        for gate in {request.parameters["gate"] for request in batch if "gate" in request.parameters}:
            with open(gate, "rb") as held:
                fcntl.flock(held, fcntl.LOCK_SH)
        time.sleep(max([float(request.parameters.get("sleep_s", 0)) for request in batch]))
        return super().preprocess(batch)
'''


class BatchGate:
    """Holds the slow handler's batches that name it (``parameters={"gate": str(gate.path)}``) until released.

    An exclusive ``flock`` on a file: the handler's shared lock waits for it, so a test decides when a batch
    ends instead of guessing how long a sleep outlasts its checks.
    """

    def __init__(self, path: Path):
        self.path = path
        path.touch()
        self._file = path.open("rb")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        """Let every held batch (and any later one) run."""
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> BatchGate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

MAR_CLASS_HANDLER = '''
"""A TorchServe BaseHandler subclass: JSON rows in, predicted digit and its probability per row out."""
import torch
from ts.torch_handler.base_handler import BaseHandler


def _rows(row):
    body = row.get("data") or row.get("body")
    return body["input"] if isinstance(body, dict) else body


class DigitsHandler(BaseHandler):
    def preprocess(self, data):
        self.sizes = [len(_rows(row)) for row in data]
        return torch.tensor([r for row in data for r in _rows(row)], dtype=torch.float32)

    def postprocess(self, data):
        answers = [{"digit": self.mapping[str(int(p.argmax()))], "probability": float(p.max())} for p in data]
        out, start = [], 0
        for size in self.sizes:
            out.append(answers[start:start + size])
            start += size
        return out
'''

MAR_MODEL_FILE = '''
"""The eager model class of the class-handler archive (weights come as a state dict)."""
from torch import nn


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.output = nn.Softmax(dim=-1)

    def forward(self, x):
        return self.output(self.layers(x))
'''

MAR_FUNCTION_HANDLER = '''
"""A module-level TorchServe handle(data, context): TorchScript digits model, answers the digit per row."""
import os

import torch

_model = None


def handle(data, context):
    global _model
    if _model is None:
        properties = context.system_properties
        path = os.path.join(properties["model_dir"], context.manifest["model"]["serializedFile"])
        _model = torch.jit.load(path)
    if data is None:
        return None
    answers = []
    for row in data:
        body = row.get("body")
        rows = torch.tensor(body["input"] if isinstance(body, dict) else body, dtype=torch.float32)
        answers.append([int(d) for d in _model(rows).argmax(dim=1)])
    return answers
'''


def infer_body(rows: np.ndarray, **extra: Any) -> dict[str, Any]:
    """An OIP infer body for rows of digits features."""
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}], **extra}


SAFETY_NET_S = 60.0  # how long a condition that never comes is waited for: a hang guard, not a speed bound


def eventually(read: Callable[[], Any], predicate: Callable[[Any], bool], *,
               timeout_s: float = SAFETY_NET_S) -> Any:
    """``read()`` polled until ``predicate`` holds for it, and that value; fails only past the safety net.

    For state that only another process knows (a gauge on ``/metrics``, a log file): the pause between reads
    grows from 5 ms to 200 ms, so a fast condition is seen at once and a slow one is not hammered.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        value = read()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {timeout_s:g} s; last read {value!r}")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def metric_samples(text: str, name: str) -> dict[str, float]:
    """Samples of one metric family from Prometheus text, keyed by the sample line's name and labels."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


# ---------------------------------------------------------------------------------------------- pods
class Pod:
    """A real ``python -m handlers.server`` process on a free port, its log in a file."""

    def __init__(self, artifact: Path, *, log_dir: Path, args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"pod-{self.port}.log"
        command = [sys.executable, "-m", "handlers.server", "--artifact", str(artifact), "--host", "127.0.0.1",
                   "--port", str(self.port), "--torch-threads", "1", *(args or [])]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})

    @property
    def log(self) -> str:
        """Everything the pod printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, *, timeout_s: float = 60.0) -> Pod:
        """Poll readiness (bounded); fail with the pod's log if it exits or never gets ready."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"pod exited with {self.process.returncode}:\n{self.log}")
                try:
                    if client.get(f"{self.url}/v2/health/ready").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"pod not ready after {timeout_s}s:\n{self.log}")

    def wait_exit(self, *, timeout_s: float = 60.0) -> int:
        """The exit code, once the process is gone."""
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


