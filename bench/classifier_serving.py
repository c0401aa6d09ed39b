"""Classifier throughput and latency through TorchServe (REST and gRPC) versus the same model called in-process.

    .venv/bin/python bench/classifier_serving.py --checkpoint models/baseline_resnet18.pth

Real PneumoniaMNIST images (the val split of ../shared/data/pneumoniamnist, 28 px) are encoded as PNG once. The
checkpoint is archived and served by a TorchServe started here (one worker per model, token authorization on), once
per server batch size (max batch delay --delay ms). For each (server batch size B, client concurrency C): C client
threads send --requests single-image requests over REST (POST /predictions) and over gRPC (Predictions); in-process
is the same work without a server -- PNG decode, the model's transform and a forward pass of B images at a time in
this process. Both sides compute with OMP_NUM_THREADS threads (default 1). The three modes take turns in --rounds
rounds per cell, so that other load on the machine hits each alike. Throughput is images over the time each mode
ran; latency is per request (in-process: per batch of B). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
# One intra-op thread here and in TorchServe's worker (which inherits the variable): on 2 cores, two processes with
# two spinning OpenMP threads each stall one another whenever the modes take turns.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from services.classifier.config import ClassifierConfig  # noqa: E402
from services.classifier.torchserve import TorchServe  # noqa: E402
from shared.datasets.base import PNEUMONIA  # noqa: E402
from shared.models.classifier import classifier_transform, load_classifier  # noqa: E402
from shared.serving.archive import build_model_archive  # noqa: E402
from shared.serving.handler import decode_image  # noqa: E402

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
        with TorchServe(config) as server, server.client(max_connections=32) as client:
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
        "| server batch | clients | in-process (img/s) | REST (img/s) | gRPC (img/s) | REST / in-process "
        "| gRPC / in-process | in-process p50 / p99 (ms, per batch) | REST p50 / p99 (ms) | gRPC p50 / p99 (ms) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch, concurrency, rates, latencies in rows:
        local_rate, rest, grpc_ = rates["in-process"], rates["REST"], rates["gRPC"]
        p50_p99 = [ms(latencies[mode]) for mode in ("in-process", "REST", "gRPC")]
        print(
            f"| {batch} | {concurrency} | {local_rate:,.0f} | {rest:,.0f} | {grpc_:,.0f} | {rest / local_rate:.2f} "
            f"| {grpc_ / local_rate:.2f} | {' | '.join(p50_p99)} |"
        )


if __name__ == "__main__":
    main()
