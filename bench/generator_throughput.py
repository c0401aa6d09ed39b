"""Generator service images/s into object storage versus the raw generator forward pass, side by side.

    .venv/bin/python bench/generator_throughput.py                      # untrained generators of the profiles
    .venv/bin/python bench/generator_throughput.py --checkpoint-32 models/gan/generator_final.pth

For each image size (32 px: the quick profile's generator; 64 px: the full profile's), store (a LocalStore in a
temporary directory, and an S3 server: moto's ThreadedMotoServer on 127.0.0.1, in its own process) and batch size,
three modes take turns in each round:
  raw      latents -> generator forward, nothing else (no uint8 conversion, no encoding, no storage);
  shards   a Generate call through a real gRPC channel to the generator service on 127.0.0.1, storing .npz shards
           (the default layout: encoded, hashed and uploaded on background threads while the generator draws);
  png      the same service built with layout="png": one PNG, one sha256 and one object write per image (the
           layout every request used before shards; now also written on the background threads).
Every service call uses a new seed, so nothing is reused; the generator is loaded (and cached by the service) in a
warm-up call. Without a checkpoint the bench builds an UNTRAINED generator of the profile's architecture (the forward
cost is the same) and says so. Each cell is the median of the rounds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import grpc  # noqa: E402
import torch  # noqa: E402
from pneumonia_proto.v1 import common_pb2, generator_pb2, generator_pb2_grpc  # noqa: E402

from pipeline.profiles import PROFILES  # noqa: E402
from services.generator.config import GeneratorConfig  # noqa: E402
from services.generator.service import SERVICE_NAME, GeneratorServicer, SyntheticImageService  # noqa: E402
from services.trainer.train_gan import training_config  # noqa: E402
from shared.checkpoints import save_checkpoint  # noqa: E402
from shared.configs import GanTrainingConfig  # noqa: E402
from shared.generation import latent_batch, load_generator  # noqa: E402
from shared.grpc_service import GrpcServer, Service  # noqa: E402
from shared.models.dcgan import Generator, for_inference  # noqa: E402
from shared.shards import DEFAULT_SHARD_SIZE  # noqa: E402
from shared.storage import LocalStore, ObjectStore, S3Store  # noqa: E402

PROFILE_OF_SIZE = {32: "quick", 64: "full"}
CHECKPOINT_KEY = "gan/generator_final.pth"
S3_KEYS = ("bench-access-key", "bench-secret-key")


@dataclass
class Generators:
    """The checkpoint measured at each size and a note saying where it came from."""

    paths: dict[int, Path]
    notes: dict[int, str]


def untrained_checkpoint(size: int, directory: Path) -> Path:
    """A generator of the profile's architecture at this size, untrained (seeded), as train-gan saves it."""
    config = training_config(GanTrainingConfig(**PROFILES[PROFILE_OF_SIZE[size]].gan))
    assert config["image_size"] == size
    torch.manual_seed(0)
    generator = for_inference(Generator.from_config(config), seed=0)
    path = directory / f"untrained_{size}.pth"
    save_checkpoint(path, "dcgan-generator", config, state_dict=generator.state_dict())
    return path


def generators(args: argparse.Namespace, directory: Path) -> Generators:
    paths, notes = {}, {}
    for size, given in ((32, args.checkpoint_32), (64, args.checkpoint_64)):
        if size not in args.sizes:
            continue
        if given is not None:
            paths[size], notes[size] = given, f"trained checkpoint {given}"
        else:
            paths[size] = untrained_checkpoint(size, directory)
            notes[size] = f"UNTRAINED generator of the {PROFILE_OF_SIZE[size]} profile's architecture"
        _, config = load_generator(paths[size], torch.device("cpu"))
        notes[size] += (
            f" ({config['image_size']} px, {config['num_channels']} channel(s), latent {config['latent_dim']}, "
            f"{config['feature_maps_g']} feature maps)"
        )
    return Generators(paths, notes)


def raw_images_per_second(checkpoint: Path, count: int, batch_size: int) -> float:
    """Latents and forward passes only, as the generation loop computes them."""
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


@dataclass
class Served:
    """One generator service on a gRPC channel, over one store and layout."""

    stub: generator_pb2_grpc.GeneratorServiceStub
    layout: str
    seed: int = 1

    def images_per_second(self, size: int, count: int, batch: int) -> float:
        self.seed += 1
        request = generator_pb2.GenerateRequest(
            checkpoint=common_pb2.ObjectRef(bucket="models", key=f"{size}/{CHECKPOINT_KEY}"),
            label=common_pb2.LABEL_PNEUMONIA,
            count=count,
            seed=self.seed,
            batch_size=batch,
        )
        start = time.perf_counter()
        response = self.stub.Generate(request, timeout=1800)
        elapsed = time.perf_counter() - start
        expected = count if self.layout == "png" else -(-count // DEFAULT_SHARD_SIZE)
        assert len(response.images) == expected and not response.reused, (len(response.images), expected)
        return count / elapsed


@contextmanager
def served(store: ObjectStore, layout: str) -> Iterator[Served]:
    config = GeneratorConfig(max_images=1_000_000, device="cpu", synthetic_bucket=f"synthetic-{layout}")
    service = SyntheticImageService(config, store, layout=layout)  # type: ignore[arg-type]
    add = generator_pb2_grpc.add_GeneratorServiceServicer_to_server
    servicer = Service(SERVICE_NAME, GeneratorServicer(service), add)
    server = GrpcServer([servicer], "127.0.0.1:0", callers=None, max_workers=2)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield Served(generator_pb2_grpc.GeneratorServiceStub(channel), layout)
    finally:
        server.stop(grace=0)


def _run_moto(port: int) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    while True:
        time.sleep(3600)


@contextmanager
def s3_server() -> Iterator[S3Store]:
    """moto's S3 server on 127.0.0.1 in a child process (not sharing this process's GIL), and a store on it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = multiprocessing.get_context("spawn").Process(target=_run_moto, args=(port,), daemon=True)
    process.start()
    try:
        store = S3Store(f"127.0.0.1:{port}", *S3_KEYS, secure=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                store.ensure_bucket("models")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield store
    finally:
        process.terminate()
        process.join(10)


def measure(args: argparse.Namespace, gens: Generators, stores: dict[str, ObjectStore]) -> list[dict]:
    rows = []
    for store_name, store in stores.items():
        store.ensure_bucket("models")
        for size, path in gens.paths.items():
            store.put_file("models", f"{size}/{CHECKPOINT_KEY}", path)
        with served(store, "shards") as shards, served(store, "png") as png:
            for size in gens.paths:
                shards.images_per_second(size, 32, 32)  # warm-up: download and cache the generator
                png.images_per_second(size, 32, 32)
                for batch in args.batch_sizes:
                    cells: dict[str, list[float]] = {"raw": [], "shards": [], "png": []}
                    count = args.count[size]
                    for _ in range(args.rounds):
                        cells["raw"].append(raw_images_per_second(gens.paths[size], count, batch))
                        cells["shards"].append(shards.images_per_second(size, count, batch))
                        cells["png"].append(png.images_per_second(size, count, batch))
                    row = {"size": size, "store": store_name, "batch": batch, "count": count}
                    row.update({mode: statistics.median(values) for mode, values in cells.items()})
                    rows.append(row)
                    print(f"measured {row}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-32", type=Path, help="a trained 32-px generator (default: untrained, quick)")
    parser.add_argument("--checkpoint-64", type=Path, help="a trained 64-px generator (default: untrained, full)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], choices=[32, 64])
    parser.add_argument("--count-32", type=int, default=5000, help="images per measurement at 32 px")
    parser.add_argument("--count-64", type=int, default=1024, help="images per measurement at 64 px")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each cell is the median")
    parser.add_argument("--stores", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    args = parser.parse_args()
    args.count = {32: args.count_32, 64: args.count_64}
    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as root:
        gens = generators(args, Path(root))
        stores: dict[str, ObjectStore] = {}
        if "local" in args.stores:
            stores["LocalStore"] = LocalStore(Path(root, "store"))
        if "s3" in args.stores:
            with s3_server() as s3:
                stores["S3 (moto)"] = s3
                rows = measure(args, gens, stores)
        else:
            rows = measure(args, gens, stores)

    print()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), CUDA not used; shard size "
        f"{DEFAULT_SHARD_SIZE}; median of {args.rounds} round(s); {time.perf_counter() - started:.0f} s in all"
    )
    for size, note in gens.notes.items():
        print(f"{size} px: {note}; {args.count[size]} images per measurement")
    print()
    print(
        "| image size | store | batch | raw forward (img/s) | service, shards (img/s) | shards / raw "
        "| service, PNG per image (img/s) | PNG / raw |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['size']} px | {row['store']} | {row['batch']} | {row['raw']:,.0f} | {row['shards']:,.0f} | "
            f"{row['shards'] / row['raw']:.2f} | {row['png']:,.0f} | {row['png'] / row['raw']:.2f} |"
        )


if __name__ == "__main__":
    main()
