"""Generator service images/s into object storage versus the raw generator forward pass, side by side.

    .venv/bin/python bench/generator_throughput.py --checkpoint models/gan/generator_final.pth

For each batch size: the raw forward (latents -> generator, no encoding, no storage) and a Generate call through a
real gRPC channel to the generator service on 127.0.0.1, which also encodes PNGs, hashes them and writes them and the
manifest into a LocalStore. Every service call uses a new seed, so no result is reused. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import grpc  # noqa: E402
import torch  # noqa: E402
from pneumonia_proto.v1 import common_pb2, generator_pb2, generator_pb2_grpc  # noqa: E402

from services.generator.config import GeneratorConfig  # noqa: E402
from services.generator.generate_synthetic import latent_batch, load_generator  # noqa: E402
from services.generator.service import SERVICE_NAME, GeneratorServicer, SyntheticImageService  # noqa: E402
from shared.grpc_service import GrpcServer, Service  # noqa: E402
from shared.storage import LocalStore  # noqa: E402


def raw_images_per_second(checkpoint: Path, count: int, batch_size: int) -> float:
    """Latents and forward passes only, as generate-synthetic computes them."""
    generator, config = load_generator(checkpoint, torch.device("cpu"))
    labels = None if not config["conditional"] else torch.ones(batch_size, dtype=torch.long)
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, count, batch_size):
            indices = range(first, min(first + batch_size, count))
            generator(
                latent_batch(0, indices, config["latent_dim"]), None if labels is None else labels[: len(indices)]
            )
    return count / (time.perf_counter() - start)


def service_images_per_second(
    stub: generator_pb2_grpc.GeneratorServiceStub, key: str, count: int, batch: int, seed: int
) -> float:
    request = generator_pb2.GenerateRequest(
        checkpoint=common_pb2.ObjectRef(bucket="models", key=key),
        label=common_pb2.LABEL_PNEUMONIA,
        count=count,
        seed=seed,
        batch_size=batch,
    )
    start = time.perf_counter()
    response = stub.Generate(request, timeout=600)
    elapsed = time.perf_counter() - start
    assert len(response.images) == count and not response.reused
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/gan/generator_final.pth"))
    parser.add_argument("--count", type=int, default=512, help="images per measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as root:
        store = LocalStore(Path(root))
        store.ensure_bucket("models")
        key = "gan/generator_final.pth"
        store.put_file("models", key, args.checkpoint)
        config = GeneratorConfig(max_images=100_000, device="cpu", synthetic_bucket="synthetic", models_bucket="models")
        servicer = Service(
            SERVICE_NAME, GeneratorServicer(SyntheticImageService(config, store)),
            generator_pb2_grpc.add_GeneratorServiceServicer_to_server,
        )  # fmt: skip
        server = GrpcServer([servicer], "127.0.0.1:0", callers=None, max_workers=2)
        server.start()
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = generator_pb2_grpc.GeneratorServiceStub(channel)
                service_images_per_second(stub, key, 32, 32, seed=10_000)  # warm-up: load and cache the checkpoint
                raw_images_per_second(args.checkpoint, 32, 32)
                rows = []
                for seed, batch in enumerate(args.batch_sizes, start=1):
                    raw = raw_images_per_second(args.checkpoint, args.count, batch)
                    served = service_images_per_second(stub, key, args.count, batch, seed)
                    rows.append((batch, raw, served))
        finally:
            server.stop(grace=0)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.count} images each")
    print("| batch size | raw forward (images/s) | service into storage (images/s) | service / raw |")
    print("| --- | --- | --- | --- |")
    for batch, raw, served in rows:
        print(f"| {batch} | {raw:,.0f} | {served:,.0f} | {served / raw:.2f} |")


if __name__ == "__main__":
    main()
