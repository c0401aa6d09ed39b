"""Classifier throughput and latency through TorchServe and through the Open Inference Protocol runtime (KServe v2;
services.classifier.oip), each over REST and gRPC, versus the same model called in-process.

    .venv/bin/python bench/classifier_serving.py --checkpoint models/baseline_resnet18.pth

Real PneumoniaMNIST images (the val split of ../shared/data/pneumoniamnist, 28 px) are encoded as PNG once. The
checkpoint is archived and served by a TorchServe started here (one worker per model, token authorization on), once
per server batch size (max batch delay --delay ms). For each (server batch size B, client concurrency C): C client
threads send --requests single-image requests over REST (POST /predictions) and over gRPC (Predictions); in-process
is the same work without a server -- PNG decode, the model's transform and a forward pass of B images at a time in
this process. Both sides compute with OMP_NUM_THREADS threads (default 1). The three modes take turns in --rounds
rounds per cell, so that other load on the machine hits each alike. Throughput is images over the time each mode
ran; latency is per request (in-process: per batch of B). Prints a Markdown table.

The v2 runtime (`python -m services.classifier.oip`, started here on the same checkpoint, bearer token on) is called
by the standard v2 client, tritonclient: one image per request as well (REST with the binary data extension, gRPC),
from the same C client threads, in the same rounds. It has no server-side batching (each request is one forward
pass), so B applies to TorchServe and in-process only.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
# One intra-op thread here and in TorchServe's worker (which inherits the variable): on 2 cores, two processes with
# two spinning OpenMP threads each stall one another whenever the modes take turns.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tritonclient.grpc as triton_grpc  # noqa: E402
import tritonclient.http as triton_http  # noqa: E402
import urllib3  # noqa: E402
from PIL import Image  # noqa: E402

from services.classifier.config import ClassifierConfig  # noqa: E402
from services.classifier.oip_models import IMAGE_INPUT, PROBABILITY_OUTPUT  # noqa: E402 (no kserve here)
from services.classifier.torchserve import TorchServe, free_port  # noqa: E402
from shared.datasets.base import PNEUMONIA  # noqa: E402
from shared.models.classifier import classifier_transform, load_classifier  # noqa: E402
from shared.serving.archive import build_model_archive  # noqa: E402
from shared.serving.handler import decode_image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist.npz"
PORTS = {f"{name}_port": 0 for name in ("inference", "management", "metrics", "grpc", "grpc_management")}


def png_bodies(path: Path, count: int) -> list[bytes]:
    """The first `count` val images as PNG bytes."""
    images = np.load(path)["val_images"][:count]
    bodies = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


def ms(latencies: list[float]) -> str:
    """'p50 / p99' in milliseconds."""
    return f"{1000 * statistics.median(latencies):.1f} / {1000 * float(np.percentile(latencies, 99)):.1f}"


class InProcess:
    """The checkpoint in this process: decode, transform and forward `batch` images at a time."""

    def __init__(self, checkpoint: Path, warm_up: list[bytes]) -> None:
        self.model, config = load_classifier(checkpoint, torch.device("cpu"))
        self.transform = classifier_transform(config, train=False)
        self.run(warm_up, 1)  # the first forward passes pay for lazy initialisation

    def run(self, bodies: list[bytes], batch: int) -> tuple[float, list[float]]:
        """(images/s, latency per batch in s)."""
        latencies = []
        start = time.perf_counter()
        for first in range(0, len(bodies), batch):
            t0 = time.perf_counter()
            inputs = torch.stack([self.transform(decode_image(b)) for b in bodies[first : first + batch]])
            with torch.no_grad():
                torch.softmax(self.model(inputs), dim=1)[:, PNEUMONIA].tolist()
            latencies.append(time.perf_counter() - t0)
        return len(bodies) / (time.perf_counter() - start), latencies


def served(call: Callable[[bytes], object], bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """(requests/s, latency per request in s) with `concurrency` client threads."""

    def one(body: bytes) -> float:
        t0 = time.perf_counter()
        call(body)
        return time.perf_counter() - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, bodies))
    return len(bodies) / (time.perf_counter() - start), latencies


@contextmanager
def oip_server(checkpoint: Path, root: Path, name: str) -> Iterator[tuple[str, str, str]]:
    """`python -m services.classifier.oip` serving `checkpoint` as `name`: (REST host:port, gRPC host:port, token)."""
    model_dir = root / "mnt-models"
    (model_dir / name).mkdir(parents=True)
    (model_dir / name / "model.pth").symlink_to(checkpoint.resolve())
    http_port, grpc_port, token = free_port(), free_port(), secrets.token_hex(32)
    env = {
        **os.environ,
        "PNEUMONIA_OIP_HTTP_PORT": str(http_port),
        "PNEUMONIA_OIP_GRPC_PORT": str(grpc_port),
        "PNEUMONIA_OIP_MODEL_DIR": str(model_dir),
        "PNEUMONIA_OIP_DEVICE": "cpu",
        "PNEUMONIA_AUTH_TOKENS": f"bench={token}",
    }
    with open(root / "oip.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.classifier.oip"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the v2 runtime did not start: {(root / 'oip.log').read_text()[-2000:]}")
            try:
                url = f"http://127.0.0.1:{http_port}/v2/models/{name}/ready"
                if urllib3.request("GET", url, timeout=2, retries=False).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.25)
        yield f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", token
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class V2Clients:
    """tritonclient's REST and gRPC clients of the v2 runtime, one of each per client thread."""

    def __init__(self, http: str, grpc: str, token: str, model: str) -> None:
        self.http, self.grpc, self.token, self.model = http, grpc, token, model
        self.local = threading.local()

    def _client(self, kind: str) -> triton_http.InferenceServerClient | triton_grpc.InferenceServerClient:
        client = getattr(self.local, kind, None)
        if client is None:
            client = (
                triton_http.InferenceServerClient(self.http)
                if kind == "rest"
                else triton_grpc.InferenceServerClient(self.grpc)
            )
            setattr(self.local, kind, client)
        return client

    def rest(self, body: bytes) -> float:
        tensor = triton_http.InferInput(IMAGE_INPUT, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([body], dtype=np.object_))
        result = self._client("rest").infer(self.model, [tensor], headers={"authorization": f"Bearer {self.token}"})
        return float(result.as_numpy(PROBABILITY_OUTPUT)[0])

    def grpc_(self, body: bytes) -> float:
        tensor = triton_grpc.InferInput(IMAGE_INPUT, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([body], dtype=np.object_))
        result = self._client("grpc").infer(self.model, [tensor], headers={"authorization": f"Bearer {self.token}"})
        return float(result.as_numpy(PROBABILITY_OUTPUT)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/baseline_resnet18.pth"))
    parser.add_argument("--data", type=Path, default=DATA, help="PneumoniaMNIST npz (its val split is used)")
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    parser.add_argument("--delay", type=int, default=10, help="server max batch delay, ms")
    parser.add_argument("--rounds", type=int, default=4, help="rounds that interleave the three modes per cell")
    parser.add_argument(
        "--pairs", default="1x1,1x8,4x4,8x8", help="server batch size x client concurrency, comma-separated"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop TorchServe on the way out
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    pairs = [tuple(int(n) for n in pair.split("x")) for pair in args.pairs.split(",")]
    bodies = png_bodies(args.data, args.requests)

    rows = []
    batches = sorted({b for b, _ in pairs})
    local = InProcess(args.checkpoint, bodies[:16])
    with tempfile.TemporaryDirectory() as root:
        store = Path(root, "model-store")
        for batch in batches:
            build_model_archive(
                args.checkpoint, store, f"bench-b{batch}", batch_size=batch, max_batch_delay_ms=args.delay
            )
        config = ClassifierConfig(**PORTS, model_store=store, workdir=Path(root, "work"), workers=1)
        with (
            TorchServe(config) as server,
            server.client(max_connections=32) as client,
            oip_server(args.checkpoint, Path(root), "bench") as (v2_http, v2_grpc, token),
        ):
            v2 = V2Clients(v2_http, v2_grpc, token, "bench")
            for warm in (v2.rest, v2.grpc_):
                served(warm, bodies[:16], 4)
            for batch in batches:
                name = f"bench-b{batch}"
                client.register(f"{name}.mar", name, batch_size=batch, max_batch_delay_ms=args.delay)
                for warm in (client.predict, client.predict_grpc):  # first calls pay for connections, lazy imports
                    served(lambda body, warm=warm, name=name: warm(name, body), bodies[:16], 4)
            for batch, concurrency in pairs:
                name = f"bench-b{batch}"
                modes: dict[str, Callable[[list[bytes]], tuple[float, list[float]]]] = {
                    "in-process": lambda part, batch=batch: local.run(part, batch),
                    "REST": lambda part, name=name, c=concurrency: served(lambda b: client.predict(name, b), part, c),
                    "gRPC": lambda part, name=name, c=concurrency: served(
                        lambda b: client.predict_grpc(name, b), part, c
                    ),
                    "v2 REST": lambda part, c=concurrency: served(v2.rest, part, c),
                    "v2 gRPC": lambda part, c=concurrency: served(v2.grpc_, part, c),
                }
                # Rounds interleave the three modes, so that background load on the machine hits each alike.
                seconds = dict.fromkeys(modes, 0.0)
                latencies: dict[str, list[float]] = {mode: [] for mode in modes}
                for part in np.array_split(np.arange(len(bodies)), args.rounds):
                    chunk = [bodies[i] for i in part]
                    for mode, run in modes.items():
                        rate, lat = run(chunk)
                        seconds[mode] += len(chunk) / rate
                        latencies[mode] += lat
                rates = {mode: len(bodies) / seconds[mode] for mode in modes}
                rows.append((batch, concurrency, rates, latencies))
                print(
                    f"batch {batch}, {concurrency} clients: "
                    + ", ".join(f"{m} {r:.0f} img/s" for m, r in rates.items())
                )

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.requests} requests per cell in {args.rounds} rounds, max batch delay {args.delay} ms, "
        f"{torch.get_num_threads()} torch thread(s), checkpoint {args.checkpoint}"
    )
    print(
        "| server batch | clients | in-process (img/s) | TorchServe REST | TorchServe gRPC | v2 REST | v2 gRPC "
        "| TS REST / in-process | TS gRPC / in-process | v2 REST / in-process | v2 gRPC / in-process "
        "| p50 / p99 ms: in-process (per batch) | TS REST | TS gRPC | v2 REST | v2 gRPC |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    served_modes = ("REST", "gRPC", "v2 REST", "v2 gRPC")
    for batch, concurrency, rates, latencies in rows:
        local_rate = rates["in-process"]
        cells = [f"{rates[mode]:,.0f}" for mode in served_modes]
        ratios = [f"{rates[mode] / local_rate:.2f}" for mode in served_modes]
        p50_p99 = [ms(latencies[mode]) for mode in ("in-process", *served_modes)]
        print(f"| {batch} | {concurrency} | {local_rate:,.0f} | {' | '.join(cells + ratios + p50_p99)} |")


if __name__ == "__main__":
    main()
