"""``make demo``: the whole flow on the embedded default, with a real dataset and real models.

Trains three versions of a digits classifier (scikit-learn's digits ship inside the package): a baseline, a
better one and a regressed one; drops each into the bucket folder as a user would; runs intake, rollout to
local pods, gates and promotion; then sends traffic through the router and shows which version answered.
With ``--serve`` (``make demo SERVE=1``, ``release demo --serve``) it then leaves the whole stack running, as
``release up`` would, and prints the dashboard's URL and a token for its buttons.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import secrets
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from prometheus_client import CollectorRegistry

from release import registry
from release.bootstrap import App, bootstrap
from release.db import session_scope
from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, build_router_app
from release.settings import Settings


class DigitsNet(torch.nn.Module):
    """64 pixels in, 10 class probabilities out."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def _say(text: str) -> None:
    print(text, flush=True)


def train_classifier(x: np.ndarray, y: np.ndarray, *, hidden: int, epochs: int, seed: int) -> torch.nn.Module:
    """A small digits classifier trained on ``x``/``y`` (seeded, so the demo's versions come out the same)."""
    torch.manual_seed(seed)
    model = DigitsNet(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(model(xt) + 1e-9), yt)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model.eval()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def drop_version(bucket: Path, version: str, model: torch.nn.Module, x_eval: np.ndarray, y_eval: np.ndarray,
                 x_ref: np.ndarray, accuracy: float, *, y_ref: np.ndarray | None = None) -> None:
    """Upload ``model`` as ``digits/<version>`` (TorchScript, eval set, drift reference) the way uploaders do.

    ``y_ref``, the reference sample's labels, gives the drift monitor a reference class mix to compare with.
    """
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    reference = _npz(x=x_ref) if y_ref is None else _npz(x=x_ref, y=y_ref)
    files = {"model.pt": buffer.getvalue(), "eval.npz": _npz(x=x_eval, y=y_eval), "reference.npz": reference}
    manifest = {
        "name": "digits", "version": version, "format": "torchscript", "handler": "tabular",
        "files": {p: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for p, b in files.items()},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        "labels": [str(i) for i in range(10)], "eval": "eval.npz", "reference": "reference.npz",
        "metrics": {"train_eval_accuracy": accuracy},
    }
    root = bucket / "models" / "digits" / version
    root.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        (root / path).write_bytes(data)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))  # last, as uploaders do


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 when the better version is PROD and the regressed one was rejected."""
    from sklearn.datasets import load_digits

    serve = wants_serving(argv)
    home = Path(".release-demo").resolve()
    shutil.rmtree(home, ignore_errors=True)
    token = secrets.token_urlsafe(24) if serve else ""
    settings = Settings(home=home, log_format="console", log_level="WARNING", api_token=token)
    app = bootstrap(settings)
    if serve:
        _subscribe_monitor(app)
    bucket = Path(settings.bucket_location)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, held = order[:1200], order[1200:]
    plans = [("1", "baseline (16 hidden units, short training)", dict(hidden=16, epochs=60, seed=1), False),
             ("2", "better (64 hidden units, longer training)", dict(hidden=64, epochs=150, seed=2), False),
             ("3", "regressed (trained on shuffled labels)", dict(hidden=64, epochs=150, seed=3), True)]
    failures = 0
    try:
        for step, (version, story, params, shuffled) in enumerate(plans, start=1):
            labels = rng.permutation(y[train]) if shuffled else y[train]
            _say(f"\n[{step}/4] training digits v{version}: {story}")
            model = train_classifier(x[train], labels, **params)
            with torch.no_grad():
                acc = float((model(torch.tensor(x[held])).argmax(1).numpy() == y[held]).mean())
            _say(f"      held-out accuracy {acc:.3f}; dropping models/digits/{version}/ into {bucket}")
            drop_version(bucket, version, model, x[held], y[held], x[train][:500], acc, y_ref=y[train][:500])
            started = time.monotonic()
            app.ensure_subscriptions()
            app.intake.reconcile(final=True)
            app.drain_controller()
            with session_scope(app.engine) as s:
                view = registry.get_version(s, "digits", version)
                report = registry.latest_gate_report(s, view.id) or {}
                prod = registry.find_alias(s, "digits", "PROD")
            _say(f"      -> {view.state} in {time.monotonic() - started:.1f}s ({view.state_reason}); "
                 f"PROD = v{prod.version if prod else '-'}")
            for gate in report.get("gates", []):
                mark = "pass" if gate["passed"] else "FAIL"
                value = gate["value"] if gate["value"] is None else round(float(gate["value"]), 4)
                _say(f"         {mark}  {gate['name']:<22} value={value} threshold={gate['threshold']}")
        app.controller.retire_superseded(ignore_grace=True)
        _say("\n[4/4] serving traffic through the router")
        failures = _serve_traffic(app, x[held])
        with session_scope(app.engine) as s:
            states = {v.version: str(v.state) for v in registry.list_versions(s, "digits")}
            prod = registry.find_alias(s, "digits", "PROD")
        _say(f"\nversions: {states}; PROD = v{prod.version if prod else '-'}")
        ok = prod is not None and prod.version == "2" and states.get("3") == "REJECTED" and failures == 0
        _say("demo OK" if ok else "demo FAILED")
        if serve and ok:
            return _serve_dashboard(app, token)
        return 0 if ok else 1
    finally:
        app.close()


def wants_serving(argv: list[str] | None) -> bool:
    """``--serve``: leave the stack running afterwards."""
    parser = argparse.ArgumentParser(prog="python -m app.demo", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="leave the stack running and open the dashboard")
    return bool(parser.parse_args(argv).serve)


def _subscribe_monitor(app: App) -> None:
    """Create the drift monitor's subscriptions first, so the served stack finds every event of the demo."""
    from monitoring.monitor import subscriptions

    for spec in subscriptions(ack_deadline_s=app.settings.ack_deadline_s, max_attempts=app.settings.max_attempts):
        app.bus.ensure_subscription(spec)


def _serve_dashboard(app: App, token: str) -> int:
    """Run the whole stack (``release up``) on the demo's state until Ctrl-C, after saying where to look."""
    from app.stack import run_stack

    url = f"http://{app.settings.host}:{app.settings.port}"
    _say(f"\nThe stack is up. Open the dashboard: {url}/ui/models/digits")
    _say(f"  API token for promote / rollback / retry (paste it into the page once): {token}")
    _say(f"  read API: {url}/api/v1/models   OpenAPI: {url}/api/v1/openapi.json   Ctrl-C stops everything.")
    return run_stack(app, role="all")


def _serve_traffic(app: App, rows: np.ndarray) -> int:
    metrics = RouterMetrics(CollectorRegistry())
    logger = PredictionLogger(engine=app.engine, bus=app.bus, dropped=metrics.dropped)
    logger.start()
    router = Router(table=RouteTable(engine=app.engine), logger=logger, metrics=metrics,
                    max_body_bytes=app.settings.max_body_mb * 2**20)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_router_app(router), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    versions: dict[str, int] = {}
    failures = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for i in range(50):
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                "data": rows[i].tolist()}]}
            response = client.post("/v2/models/digits/infer", json=body)
            if response.status_code != 200:
                failures += 1
                continue
            versions[response.headers["x-model-version"]] = versions.get(response.headers["x-model-version"], 0) + 1
        sample = client.post("/v2/models/digits/infer", json={"inputs": [{"name": "input", "datatype": "FP32",
                                                                            "shape": [1, 64],
                                                                            "data": rows[0].tolist()}]})
    server.should_exit = True
    thread.join(timeout=10)
    logger.close()
    probs = sample.json()["outputs"][0]["data"]
    _say(f"      50 requests to /v2/models/digits/infer: answered by {versions}, failures={failures}")
    _say(f"      request id {sample.headers['x-request-id']}: predicted class {int(np.argmax(probs))}; "
         f"{logger.published} prediction records published to prediction-logs")
    return failures


if __name__ == "__main__":
    sys.exit(main())
