"""Drawing labelled synthetic images with a trained DCGAN generator: one latent per (seed, image index), so the same
checkpoint and seed give byte-identical images whatever the batching; manifest.csv records what was written.

write_synthetic is the one generation loop (the CLI's folder and the generator service's object storage are its two
sinks): it draws batch after batch while a BoundedWriter encodes, hashes and stores the finished shards (or PNGs) on
background threads, so storage overlaps the forward pass and memory stays bounded. In the shard layout a killed
generation resumes: a stored shard whose name and content match the request is kept, only the others are drawn.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic

import numpy as np
import torch
from PIL import Image

from shared.checkpoints import load_checkpoint
from shared.datasets import CLASS_NAMES
from shared.errors import CheckpointError, ConfigError, DatasetError
from shared.images import sha256_file
from shared.models.dcgan import Generator
from shared.shards import (
    DEFAULT_SHARD_SIZE,
    SHARD_CONTENT_TYPE,
    WRITE_WORKERS,
    BoundedWriter,
    FolderSink,
    R,
    Shard,
    ShardSink,
    decode_shard,
    encode_shard,
    image_id,
    sha256_hex,
    shard_name,
)
from shared.synthetic import LAYOUTS, MANIFEST_NAME, Layout, ManifestRow, ShardRow, read_layout, write_manifest
from shared.transforms import to_uint8

log = logging.getLogger(__name__)

LABELS = {name: label for label, name in CLASS_NAMES.items()}  # "normal" -> 0, "pneumonia" -> 1


def resolve_label(config: dict[str, Any], label: int | None, path: str | Path) -> int:
    """The class to generate: the requested one for a conditional generator, else the generator's own."""
    if config["conditional"]:
        if label is None:
            raise ConfigError(f"{path} is a conditional generator: choose the class with --label normal|pneumonia")
        return label
    if config["label"] is None:
        raise CheckpointError(
            f"{path} is an unconditional generator trained on all classes: its images have no label; "
            "train with --train-on positive or --conditional"
        )
    if label is not None and label != config["label"]:
        raise CheckpointError(
            f"{path} only generates {CLASS_NAMES[config['label']]} images, not {CLASS_NAMES[label]} (--label)"
        )
    return config["label"]


def latent_batch(seed: int, indices: range, latent_dim: int) -> torch.Tensor:
    """len(indices) x latent_dim; row i from its own RNG seeded by (seed, index), so it never depends on batching."""
    rows = [np.random.default_rng(np.random.SeedSequence([seed, i])).standard_normal(latent_dim) for i in indices]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def load_generator(checkpoint_path: str | Path, device: torch.device) -> tuple[Generator, dict[str, Any]]:
    """The generator from a `dcgan-generator` checkpoint, in eval mode, and its config."""
    checkpoint = load_checkpoint(checkpoint_path, "dcgan-generator")
    config = checkpoint["config"]
    generator = Generator.from_config(config)
    try:
        generator.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint_path}: weights do not match its config ({exc})") from exc
    return generator.to(device).eval(), config


@dataclass(frozen=True)
class LoadedGenerator:
    """A generator in eval mode, its checkpoint config and the checkpoint file's sha256."""

    generator: Generator
    config: dict[str, Any]
    sha256: str


def open_generator(checkpoint_path: str | Path, device: torch.device) -> LoadedGenerator:
    generator, config = load_generator(checkpoint_path, device)
    return LoadedGenerator(generator, config, sha256_file(checkpoint_path))


@torch.no_grad()
def forward(loaded: LoadedGenerator, label: int, seed: int, indices: range, device: torch.device) -> torch.Tensor:
    """The generator's output for images `indices` of class `label`: N x C x H x W in [-1, 1]."""
    noise = latent_batch(seed, indices, loaded.config["latent_dim"]).to(device)
    labels = torch.full((len(indices),), label, device=device) if loaded.config["conditional"] else None
    return loaded.generator(noise, labels)


ProgressFn = Callable[[str, int], None]  # (phase "generating" | "uploading", images done); raising stops the work


@dataclass(frozen=True)
class Written(Generic[R]):
    """What write_synthetic stored: the images and shards (shard layout) in index order, one reference per stored
    object in the same order, and how many images came from shards a killed run had stored."""

    images: list[ManifestRow]
    shards: list[ShardRow]
    refs: list[R]
    reused: int


def write_synthetic(
    loaded: LoadedGenerator,
    label: int,
    seed: int,
    count: int,
    batch_size: int,
    device: torch.device,
    sink: ShardSink[R],
    *,
    layout: Layout = "shards",
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = WRITE_WORKERS,
    on_progress: ProgressFn | None = None,
) -> Written[R]:
    """Draw images 0..count-1 of class `label` and store them in `sink` as shards of `shard_size` images (or one
    PNG each), storing while drawing. No manifest is written: that is the caller's last step.

    Memory: at most 2 x `workers` shards wait for or are in their writer (as the generator's float output, converted
    to uint8 on the writer thread) plus the one being drawn: about 5 x shard_size x C x H x W x 4 bytes (20 MiB at
    32 px gray, 240 MiB at 64 px RGB with 1024-image shards and two writers).
    """
    report = on_progress or (lambda phase, done: None)
    unit = shard_size if layout == "shards" else batch_size
    plan = [(first, min(unit, count - first)) for first in range(0, count, unit)]
    kept = _stored_shards(sink, plan, label, seed, loaded.sha256) if layout == "shards" else {}
    reused = sum(row.count for row, _ in kept.values())
    missing = [(first, n) for first, n in plan if first not in kept]
    job = _store_shard if layout == "shards" else _store_pngs
    done = {"generating": reused, "uploading": reused}
    with BoundedWriter[Any](workers) as writer:

        def advance(phase: str, images: int) -> None:
            done[phase] += images
            report(phase, done[phase])

        def after_batch(images: int) -> None:  # progress: the batch drawn, then whatever the writers finished
            advance("generating", images)
            for result in writer.completed():
                advance("uploading", _images_in(result))

        draw_images = partial(forward, loaded, label, seed, device=device)  # to uint8 on the writer threads
        for first, pixels in _drawn_units(draw_images, missing, batch_size, after_batch):
            writer.submit(job, sink, label, seed, loaded.sha256, first, pixels)
        for result in writer.rest():
            advance("uploading", _images_in(result))
        results = writer.results()
    return _assemble(layout, kept, results, reused)


def _drawn_units(
    draw_images: Callable[[range], torch.Tensor],
    units: list[tuple[int, int]],
    batch_size: int,
    after_batch: Callable[[int], None],
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first index, generator output) of each unit (first, n) in `units` (sorted), drawn in batches of
    `batch_size` that run on across consecutive units, so that a small shard or a resumed run still draws full
    batches; `after_batch(n)` runs after each batch, before its finished units are yielded."""
    pending = list(reversed(units))
    buffer: list[torch.Tensor] = []
    buffered = 0
    for start, stop in _spans(units):
        for first in range(start, stop, batch_size):
            pixels = draw_images(range(first, min(first + batch_size, stop)))
            buffer.append(pixels)
            buffered += len(pixels)
            after_batch(len(pixels))
            while pending and buffered >= pending[-1][1]:
                unit_first, n = pending.pop()
                joined = buffer[0] if len(buffer) == 1 else torch.cat(buffer)
                buffer = [joined[n:]] if len(joined) > n else []
                buffered -= n
                yield unit_first, joined[:n]


def _spans(units: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The contiguous index ranges [start, stop) the units cover."""
    spans: list[tuple[int, int]] = []
    for first, n in units:
        if spans and spans[-1][1] == first:
            spans[-1] = (spans[-1][0], first + n)
        else:
            spans.append((first, first + n))
    return spans


def _store_shard(
    sink: ShardSink[R], label: int, seed: int, generator_sha256: str, first: int, output: torch.Tensor
) -> tuple[ShardRow, R]:
    """Convert, encode, hash and store one shard (runs on a writer thread)."""
    pixels = to_uint8(output)
    data = encode_shard(Shard.of(pixels, label, first, seed, generator_sha256))
    name = shard_name(label, first, len(pixels))
    ref = sink.write(name, data, SHARD_CONTENT_TYPE)
    return ShardRow(name, sha256_hex(data), label, seed, first, len(pixels), generator_sha256), ref


def png_bytes(image: np.ndarray) -> bytes:
    """The PNG of a uint8 H x W or H x W x 3 image (the bytes shared.images.save_png writes)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _store_pngs(
    sink: ShardSink[R], label: int, seed: int, generator_sha256: str, first: int, output: torch.Tensor
) -> list[tuple[ManifestRow, R]]:
    """Convert, encode and store one PNG per image of a batch (runs on a writer thread)."""
    stored = []
    for index, image in enumerate(to_uint8(output), start=first):
        row = ManifestRow(image_id(label, index), label, seed, index, generator_sha256)
        stored.append((row, sink.write(row.file, png_bytes(image), "image/png")))
    return stored


def _images_in(result: tuple[ShardRow, Any] | list[tuple[ManifestRow, Any]]) -> int:
    return result[0].count if isinstance(result, tuple) else len(result)


def _stored_shards(
    sink: ShardSink[R], plan: list[tuple[int, int]], label: int, seed: int, generator_sha256: str
) -> dict[int, tuple[ShardRow, R]]:
    """The planned shards a killed run already stored, by first index: those whose content is this request's."""
    present = sink.stored()
    kept: dict[int, tuple[ShardRow, R]] = {}
    for first, n in plan:
        name = shard_name(label, first, n)
        if name not in present:
            continue
        data, ref = sink.read(name)
        try:
            shard = decode_shard(data, name)
        except DatasetError as exc:
            log.warning("redrawing a stored shard that cannot be read: %s", exc)
            continue
        ids = [image_id(label, i) for i in range(first, first + n)]
        same_images = shard.ids.tolist() == ids and set(shard.labels.tolist()) == {label}
        if same_images and (shard.seed, shard.generator_sha256) == (seed, generator_sha256):
            kept[first] = (ShardRow(name, sha256_hex(data), label, seed, first, n, generator_sha256), ref)
    if kept:
        log.info("resuming: %d stored shard(s) kept", len(kept))
    return kept


def _assemble(layout: Layout, kept: dict[int, tuple[ShardRow, R]], results: list[Any], reused: int) -> Written[R]:
    if layout == "png":
        pairs = [pair for batch in results for pair in batch]
        return Written([row for row, _ in pairs], [], [ref for _, ref in pairs], reused)
    shards = sorted([*kept.values(), *results], key=lambda pair: pair[0].first_index)
    rows = [row for row, _ in shards]
    return Written([image for row in rows for image in row.image_rows()], rows, [ref for _, ref in shards], reused)


def generate_images(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    num_images: int,
    label: int | None,
    seed: int,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    layout: Layout = "shards",
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> list[ManifestRow]:
    """Write `num_images` images of class `label` (None: the generator's own) into `output_dir` as shards (or one
    PNG each) and merge them into its manifest.csv; the image rows written.

    `on_batch(images done so far)` runs after each batch (progress reports); if it raises, generation stops
    before the manifest is written, and a rerun keeps the shards already written (resume). In the shard layout a
    stored shard of the same class that overlaps the new indices leaves the manifest (its images are redrawn).
    """
    if num_images <= 0 or batch_size <= 0 or shard_size <= 0:
        raise ConfigError(
            f"--num-images, --batch-size and --shard-size must be positive, got {num_images}, {batch_size} and "
            f"{shard_size}"
        )
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    checkpoint_path, output_dir = Path(checkpoint_path), Path(output_dir)
    loaded = open_generator(checkpoint_path, device)
    label = resolve_label(loaded.config, label, checkpoint_path)
    existing = read_layout(output_dir) if (output_dir / MANIFEST_NAME).is_file() else None
    if existing is not None and existing.images and existing.layout != layout:
        raise ConfigError(
            f"{output_dir} holds the {existing.layout} layout: write the {layout} layout to another folder "
            f"(or pass --layout {existing.layout})"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    progress = None if on_batch is None else (lambda phase, done: on_batch(done) if phase == "generating" else None)
    written = write_synthetic(
        loaded, label, seed, num_images, batch_size, device, FolderSink(output_dir),
        layout=layout, shard_size=shard_size, on_progress=progress,
    )  # fmt: skip
    if layout == "png":
        merged = {row.file: row for row in existing.images} if existing is not None else {}
        merged.update((row.file, row) for row in written.images)
        write_manifest(output_dir, sorted(merged.values(), key=lambda row: row.file))
    else:
        write_manifest(output_dir, _merged_shards(output_dir, existing.shards if existing else [], written.shards))
    return written.images


def _merged_shards(output_dir: Path, old: list[ShardRow], new: list[ShardRow]) -> list[ShardRow]:
    """The folder's shards after a generation: the new ones, and the old ones of other classes or other indices
    (an old shard overlapping new indices of its class is dropped, and its file removed unless a new one has its
    name)."""
    label, stop = new[0].label, new[-1].first_index + new[-1].count
    names = {row.shard for row in new}
    kept = []
    for row in old:
        if row.label == label and row.first_index < stop:
            if row.shard not in names:
                (output_dir / row.shard).unlink(missing_ok=True)
            continue
        kept.append(row)
    return sorted([*kept, *new], key=lambda row: row.shard)
