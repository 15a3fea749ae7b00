"""CPU serving comparison, one run, same model and batching settings: our pod server vs TorchServe 0.12 vs KServe.

Every server gets the same TorchScript MLP (256 -> 1024 -> 1024 -> 16, softmax), one worker, one torch thread
(OMP_NUM_THREADS=1), and, where the server batches, the same max batch size and delay. Servers run one after
the other (never at the same time) and are driven by the same closed-loop load generator on loopback.

    python bench/serving/compare_cpu.py [--ts-venv /work/bench-venv-ts] [--kserve-venv /work/bench-venv-kserve]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import LoadResult, run_load

from handlers.architectures import MLP

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FEATURES, CLASSES = 256, 16
NAME = "bench"


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_model(folder: Path) -> Path:
    """The TorchScript model every server loads."""
    torch.manual_seed(0)
    model = MLP(sizes=[FEATURES, 1024, 1024, CLASSES], output_activation="softmax").eval()
    path = folder / "model.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def our_artifact(folder: Path, model: Path) -> Path:
    """A model directory for our pod server."""
    target = folder / "ours"
    target.mkdir()
    data = model.read_bytes()
    (target / "model.pt").write_bytes(data)
    manifest = {"name": NAME, "version": "1", "format": "torchscript", "handler": "tabular",
                "files": {"model.pt": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, CLASSES]}]}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def wait_until(check, *, timeout_s: float, process: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``check`` (bounded) until true; fail early if the server process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout_s}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def server_env() -> dict[str, str]:
    """One torch thread for every server."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def our_server(folder: Path, model: Path, *, batch: int, delay_ms: float, log: Path) -> Iterator[str]:
    """Our pod server; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "handlers.server", "--artifact", str(our_artifact(folder, model)),
               "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", str(batch),
               "--max-batch-delay-ms", str(delay_ms), "--queue-size", "1024", "--torch-threads", "1",
               "--log-format", "json"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=server_env(),
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, timeout_s=120,
                   process=process, what="pod server")
        yield url
    finally:
        stop(process)


@contextlib.contextmanager
def torchserve(folder: Path, model: Path, *, venv: Path, batch: int, delay_ms: float, log: Path) -> Iterator[str]:
    """TorchServe 0.12 with the same model as a .mar, all five ports moved off the defaults."""
    store = folder / "model-store"
    store.mkdir()
    subprocess.run([str(venv / "bin" / "torch-model-archiver"), "--model-name", NAME, "--version", "1.0",
                    "--serialized-file", str(model), "--handler", str(HERE / "ts_handler.py"),
                    "--export-path", str(store)], check=True, timeout=120)
    ports = [free_port() for _ in range(5)]
    models = {NAME: {"1.0": {"defaultVersion": True, "marName": f"{NAME}.mar", "minWorkers": 1, "maxWorkers": 1,
                             "batchSize": batch, "maxBatchDelay": int(delay_ms), "responseTimeout": 120}}}
    config = folder / "config.properties"
    config.write_text("\n".join([
        f"inference_address=http://127.0.0.1:{ports[0]}", f"management_address=http://127.0.0.1:{ports[1]}",
        f"metrics_address=http://127.0.0.1:{ports[2]}", f"grpc_inference_port={ports[3]}",
        f"grpc_management_port={ports[4]}", "disable_token_authorization=true", "enable_model_api=true",
        f"model_store={store}", f"load_models={NAME}.mar", "default_workers_per_model=1",
        "install_py_dep_per_model=false", f"models={json.dumps(models)}", ""]))
    command = [str(venv / "bin" / "torchserve"), "--start", "--foreground", "--ts-config", str(config),
               "--model-store", str(store), "--disable-token-auth", "--enable-model-api", "--no-config-snapshots"]
    # TMPDIR: TorchServe keeps its pid file there; a private one keeps a stale or foreign server from interfering.
    env = {**server_env(), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "TMPDIR": str(folder)}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    management = f"http://127.0.0.1:{ports[1]}"

    def ready() -> bool:
        # /ping answers Healthy before workers load; the model's worker status is what counts.
        response = httpx.get(f"{management}/models/{NAME}")
        return response.status_code == 200 and any(w.get("status") == "READY"
                                                    for w in response.json()[0].get("workers", []))

    try:
        wait_until(ready, timeout_s=180, process=process, what=f"TorchServe (log: {log})")
        yield f"http://127.0.0.1:{ports[0]}"
    finally:
        stop(process)


@contextlib.contextmanager
def kserve(model: Path, *, venv: Path, log: Path) -> Iterator[str]:
    """KServe's Python model server (no dynamic batching of its own), one worker."""
    port = free_port()
    command = [str(venv / "bin" / "python"), str(HERE / "kserve_server.py"), str(model), NAME, str(port),
               str(free_port())]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_env(),
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/v2/models/{NAME}/ready").status_code == 200, timeout_s=120,
                   process=process, what="KServe")
        yield url
    finally:
        stop(process)


def oip_body(row: np.ndarray) -> bytes:
    """An OIP v2 infer body for one row."""
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                                   "data": row.tolist()}]}).encode()


def measure(endpoints: list[tuple[str, str, bytes]], *, levels: list[int], rounds: int,
            duration_s: float) -> list[dict[str, object]]:
    """Each level, ``rounds`` times, cycling through every endpoint in turn so machine noise hits all alike.

    Reported per server and level: the median over rounds of throughput, p50 and p99.
    """
    rows = []
    for concurrency in levels:
        runs: dict[str, list[LoadResult]] = {label: [] for label, _, _ in endpoints}
        for _ in range(rounds):
            for label, url, body in endpoints:
                runs[label].append(run_load(url, body, concurrency=concurrency, duration_s=duration_s))
        for label, results in runs.items():
            row = {"server": label, "concurrency": concurrency,
                   "throughput": statistics.median(r.throughput for r in results),
                   "p50_ms": statistics.median(r.p50_ms for r in results),
                   "p99_ms": statistics.median(r.p99_ms for r in results),
                   "errors": sum(r.errors for r in results), "requests": sum(r.requests for r in results)}
            rows.append(row)
            print(f"{label:<34} c={concurrency:<3} {row['throughput']:>8.1f} req/s  p50 {row['p50_ms']:>8.2f} ms  "
                  f"p99 {row['p99_ms']:>8.2f} ms  errors {row['errors']}", flush=True)
    return rows


def main() -> None:
    """Run the comparison and print a JSON summary (and write it with --out)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ts-venv", type=Path, default=Path("/work/bench-venv-ts"))
    parser.add_argument("--kserve-venv", type=Path, default=Path("/work/bench-venv-kserve"))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "torchserve", "kserve"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    row = np.round(np.random.default_rng(0).random(FEATURES, dtype=np.float32), 4)
    body = oip_body(row)
    ts_body = json.dumps([row.tolist()]).encode()
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp, contextlib.ExitStack() as servers:
        folder = Path(tmp)
        model = build_model(folder)
        endpoints: list[tuple[str, str, bytes]] = []
        # All servers start first and idle while another is measured; rounds interleave them.
        if "ours" not in args.skip:
            url = servers.enter_context(our_server(folder, model, batch=args.batch, delay_ms=args.delay_ms,
                                                   log=folder / "ours.log"))
            endpoints += [("ours (OIP /v2/.../infer)", f"{url}/v2/models/{NAME}/infer", body),
                          ("ours (/predictions)", f"{url}/predictions/{NAME}", ts_body)]
        if "torchserve" not in args.skip:
            url = servers.enter_context(torchserve(folder, model, venv=args.ts_venv, batch=args.batch,
                                                   delay_ms=args.delay_ms, log=folder / "ts.log"))
            endpoints.append(("TorchServe 0.12 (/predictions)", f"{url}/predictions/{NAME}", ts_body))
        if "kserve" not in args.skip:
            url = servers.enter_context(kserve(model, venv=args.kserve_venv, log=folder / "kserve.log"))
            endpoints.append(("KServe 0.21 (OIP /v2/.../infer)", f"{url}/v2/models/{NAME}/infer", body))
        results = measure(endpoints, levels=args.levels, rounds=args.rounds, duration_s=args.duration_s)
    summary = {"rounds": args.rounds, "duration_s": args.duration_s,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "date": time.strftime("%Y-%m-%d"), "batch": args.batch, "delay_ms": args.delay_ms, "results": results}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
