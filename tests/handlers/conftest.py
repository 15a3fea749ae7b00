"""Fixtures for the serving-pod tests: tiny real torch artifacts, and real pod server processes on free ports.

Artifacts are built once per session under a temporary folder: a digits MLP (trained in about a second on
scikit-learn's digits) as TorchScript and as a ``state_dict``, an image classifier and a text classifier whose
answers are known by construction, a model directory with handler code, and two ``.mar`` archives made by the
real ``torch-model-archiver``. Helpers shared with the test modules live in ``pod_testkit``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pod_testkit import (
    COLORS,
    DIGITS_IO,
    MAR_CLASS_HANDLER,
    MAR_FUNCTION_HANDLER,
    MAR_MODEL_FILE,
    SENTIMENT_VOCAB,
    SLOW_HANDLER,
    Artifacts,
    BagOfWords,
    BatchGate,
    ColorNet,
    Digits,
    Pod,
    to_bytes,
    write_model_dir,
)
from sklearn.datasets import load_digits
from torch import nn

from handlers.architectures import MLP
from release.adapters.local_serving import LocalServingBackend
from tests.marfiles import build_mar


@pytest.fixture(scope="session")
def digits() -> Digits:
    """scikit-learn's digits and a 64-32-10 MLP trained on them to well above 90% accuracy."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    torch.manual_seed(0)
    model = MLP(sizes=[64, 32, 10], output_activation="softmax")
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(300):
        optimiser.zero_grad()
        loss = nn.functional.nll_loss(torch.log(model(inputs) + 1e-9), targets)
        loss.backward()
        optimiser.step()
    return Digits(x=x, y=y, model=model.eval())


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Artifacts:
    """Every artifact the pod tests serve, built once."""
    root = tmp_path_factory.mktemp("artifacts")
    scripted = torch.jit.script(digits.model)
    ts_bytes = to_bytes(lambda f: torch.jit.save(scripted, f))
    digits_ts = write_model_dir(root / "digits-ts", files={"model.pt": ts_bytes}, name="digits", version="1",
                                format="torchscript", handler="tabular", **DIGITS_IO)
    sd_bytes = to_bytes(lambda f: torch.save(digits.model.state_dict(), f))
    digits_sd = write_model_dir(root / "digits-sd", files={"weights.pt": sd_bytes}, name="digits-sd",
                                version="3", format="state_dict", handler="tabular", architecture="mlp",
                                extra={"sizes": [64, 32, 10], "output_activation": "softmax"}, **DIGITS_IO)
    image = write_model_dir(
        root / "colors", files={"model.pt": to_bytes(lambda f: torch.jit.save(torch.jit.script(ColorNet()), f))},
        name="colors", version="1", format="torchscript", handler="image_classifier", labels=COLORS,
        inputs=[{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
        extra={"image_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1], "top_k": 2})
    text = write_model_dir(
        root / "sentiment",
        files={"model.pt": to_bytes(lambda f: torch.jit.save(torch.jit.script(BagOfWords()), f)),
               "vocab.txt": "\n".join(SENTIMENT_VOCAB).encode()},
        name="sentiment", version="1", format="torchscript", handler="text_classifier",
        labels=["negative", "positive"], inputs=[{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}], extra={"top_k": 1})
    slow = write_model_dir(root / "slow", files={"model.pt": ts_bytes, "slow_handler.py": SLOW_HANDLER.encode()},
                           name="slow", version="7", format="torchscript", handler="slow_handler.py",
                           extra={"model_file": "model.pt"}, **DIGITS_IO)
    serialized = root / "digits-ts" / "model.pt"
    state_dict_file = root / "digits-sd" / "weights.pt"
    mar_class = build_mar(root, name="digits_class", version="1.0", serialized=state_dict_file.read_bytes(),
                          serialized_name=state_dict_file.name, handler=MAR_CLASS_HANDLER, model_file=MAR_MODEL_FILE,
                          extra={"index_to_name.json": json.dumps({str(i): str(i) for i in range(10)}).encode()})
    mar_function = build_mar(root, name="digits_fn", version="1.0", serialized=serialized.read_bytes(),
                             handler=MAR_FUNCTION_HANDLER)
    return Artifacts(root=root, digits_ts=digits_ts, digits_sd=digits_sd, image=image, text=text, slow=slow,
                     mar_class=mar_class, mar_function=mar_function)


@pytest.fixture
def start_pod(tmp_path: Path) -> Iterator[Callable[..., Pod]]:
    """Start pods for one test (not waiting for readiness); all are stopped afterwards."""
    pods: list[Pod] = []

    def start(artifact: Path, *args: str, env: dict[str, str] | None = None) -> Pod:
        pod = Pod(artifact, log_dir=tmp_path, args=list(args), env=env)
        pods.append(pod)
        return pod

    yield start
    for pod in pods:
        pod.stop()


@pytest.fixture
def batch_gate(tmp_path: Path) -> Iterator[BatchGate]:
    """A held ``BatchGate`` for the slow handler; released at the latest when the test ends (before its pods stop)."""
    gate = BatchGate(tmp_path / "batch-gate")
    yield gate
    gate.release()


@pytest.fixture(scope="module")
def module_pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Pod]]:
    """Start ready pods shared by the tests of one module; all are stopped at the module's end."""
    pods: list[Pod] = []
    log_dir = tmp_path_factory.mktemp("pod-logs")

    def start(artifact: Path, *args: str) -> Pod:
        pod = Pod(artifact, log_dir=log_dir, args=list(args))
        pods.append(pod)
        return pod

    yield start
    for pod in pods:
        pod.stop()


@pytest.fixture(scope="session")
def tiny_images() -> dict[str, bytes]:
    """Solid red, green and blue PNGs, and a JPEG of red."""
    images = {}
    for name, rgb in zip(COLORS, [(255, 0, 0), (0, 255, 0), (0, 0, 255)], strict=True):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 12), rgb).save(buffer, format="PNG")
        images[name] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (250, 5, 5)).save(buffer, format="JPEG")
    images["red_jpeg"] = buffer.getvalue()
    return images


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalServingBackend]:
    """A local serving backend with a fresh home and quick restarts; closed (pods stopped) after the test."""
    local = LocalServingBackend(home=tmp_path / "home", restart_backoff_s=0.1, stop_grace_s=5)
    yield local
    local.close()
