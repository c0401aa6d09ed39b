"""The generator service: labelled synthetic chest X-rays from a stored DCGAN checkpoint, stored in object storage.

One implementation, `SyntheticImageService.generate`, serves both front ends: the gRPC GeneratorService below and
the HTTP API (services.generator.http_api).

Where a result goes, in the synthetic bucket (`prefix` below):
    [OUTPUT_PREFIX/]<checkpoint sha256, 16 hex digits>/<normal|pneumonia>/seed-<SEED>-count-<COUNT>/
        synthetic_<label>_<first:06d>-<last:06d>.npz   shards of up to shard_size images (shared.shards; the bytes
                                                       generate-synthetic writes with the same --shard-size)
        manifest.csv                                   shard,sha256,label,seed,first_index,count,generator_sha256
or, in the PNG layout (a service built with layout="png"; the trainer and analyzer read both):
        synthetic_<label>_<index:06d>.png              one image per object
        manifest.csv                                   file,label,seed,index,generator_sha256

Shards are encoded, hashed and uploaded on background threads while the generator draws the next batches
(shared.generation.write_synthetic): one object write per shard instead of one per image.

The prefix is a function of the request (checkpoint bytes, label, seed, count) and image i's latent is seeded by
(seed, i), so a repeated request yields the same objects; when the prefix already holds a manifest that matches the
request, the stored result is returned without generating (`reused`). Nothing is ever half-written: every shard is
uploaded before the manifest, and a prefix without manifest.csv is never a result. A failed or cancelled request
leaves the shards it stored: the next identical request keeps those whose content matches (resume) and draws only
the rest.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import tempfile
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from pneumonia_proto.v1 import common_pb2, generator_pb2, generator_pb2_grpc

from services.generator.config import GeneratorConfig
from shared.datasets import CLASS_NAMES, NORMAL, PNEUMONIA
from shared.errors import CheckpointError, ConfigError, DatasetError
from shared.generation import LoadedGenerator, open_generator, resolve_label, write_synthetic
from shared.grpc_service import FinalMessage, ensure_active, rpc_method
from shared.shards import DEFAULT_SHARD_SIZE, WRITE_WORKERS
from shared.storage import InvalidKeyError, NotFoundError, ObjectRef, ObjectStore, StorageUnavailableError
from shared.storage.base import object_uri, validate_key
from shared.storage.proto import ref_to_proto
from shared.synthetic import LAYOUTS, MANIFEST_NAME, Layout, Manifest, ManifestRow, manifest_bytes, parse_manifest

log = logging.getLogger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
MAX_BATCH_SIZE = 1024
MAX_SEED = 2**63 - 1
PREFIX_DIGEST_CHARS = 16  # 64 bits of the checkpoint's sha256 name the prefix; the manifest holds all of it
CACHED_GENERATORS = 2  # loaded generators kept by checkpoint sha256: a repeated checkpoint is not downloaded again


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate, independent of the front end (see GenerateRequest in generator.proto)."""

    checkpoint_key: str
    label: int  # NORMAL or PNEUMONIA
    count: int
    seed: int = 0
    batch_size: int = 0  # 0: the service's default
    checkpoint_bucket: str = ""  # "": the service's models bucket
    checkpoint_sha256: str = ""  # "": whatever is stored
    output_prefix: str = ""


@dataclass(frozen=True)
class GenerationResult:
    """The stored objects holding the images (shards, or one PNG each; manifest order), the manifest, their prefix
    and whether an earlier result was reused."""

    images: list[ObjectRef]
    manifest: ObjectRef
    prefix: str
    reused: bool


@dataclass(frozen=True)
class Progress:
    """`done` of `total` images finished in `phase` ('generating': drawn; 'uploading': stored). The phases
    interleave: shards are stored while the next ones are drawn."""

    phase: str
    done: int
    total: int


ProgressCallback = Callable[[Progress], None]  # runs between batches and uploads; raising stops the work


def _no_progress(progress: Progress) -> None:
    """The default ProgressCallback: nobody listens."""


class SyntheticImageService:
    """Generates with shared.generation.write_synthetic straight into object storage and stores results idempotently.

    `layout` ("shards", the default, or "png") and `shard_size` choose how the images are stored; `write_workers`
    threads encode and upload while the generator draws.
    """

    def __init__(
        self,
        config: GeneratorConfig,
        store: ObjectStore,
        *,
        layout: Layout = "shards",
        shard_size: int = DEFAULT_SHARD_SIZE,
        write_workers: int = WRITE_WORKERS,
    ) -> None:
        if layout not in LAYOUTS or shard_size < 1 or write_workers < 1:
            raise ConfigError(f"layout must be one of {LAYOUTS}, shard_size and write_workers >= 1")
        self.config = config
        self.store = store
        self.device = config.torch_device()
        self.layout: Layout = layout
        self.shard_size = shard_size
        self.write_workers = write_workers
        # Identical requests in this process run one after the other, so the second reuses the first's result.
        self._prefix_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._generators: OrderedDict[str, LoadedGenerator] = OrderedDict()  # by checkpoint sha256, newest last
        self._generators_guard = threading.Lock()

    def validate(self, request: GenerationRequest) -> None:
        """ConfigError (or InvalidKeyError) naming the first field that cannot work."""
        if not 1 <= request.count <= self.config.max_images:
            raise ConfigError(
                f"count must be between 1 and {self.config.max_images} (PNEUMONIA_GENERATOR_MAX_IMAGES), "
                f"got {request.count}"
            )
        if request.label not in CLASS_NAMES:
            raise ConfigError(f"label must be {NORMAL} (normal) or {PNEUMONIA} (pneumonia), got {request.label!r}")
        if not 0 <= request.seed <= MAX_SEED:
            raise ConfigError(f"seed must be between 0 and {MAX_SEED}, got {request.seed}")
        if not 0 <= request.batch_size <= MAX_BATCH_SIZE:
            raise ConfigError(
                f"batch_size must be between 0 (the default) and {MAX_BATCH_SIZE}, got {request.batch_size}"
            )
        if not request.checkpoint_key:
            raise ConfigError("checkpoint key is required (the generator checkpoint's object key)")
        validate_key(request.checkpoint_key)
        if request.output_prefix:
            try:
                validate_key(request.output_prefix.rstrip("/"))
            except InvalidKeyError as exc:
                raise InvalidKeyError(f"output_prefix {request.output_prefix!r}: {exc}") from exc

    def result_prefix(self, request: GenerationRequest, checkpoint_sha256: str) -> str:
        """The request's deterministic key prefix in the synthetic bucket, ending in '/'."""
        base = f"{request.output_prefix.rstrip('/')}/" if request.output_prefix else ""
        return (
            f"{base}{checkpoint_sha256[:PREFIX_DIGEST_CHARS]}/{CLASS_NAMES[request.label]}/"
            f"seed-{request.seed}-count-{request.count}/"
        )

    def generate(self, request: GenerationRequest, on_progress: ProgressCallback = _no_progress) -> GenerationResult:
        """Generate and store the requested images, or return the identical request's stored result.

        Raises ConfigError/InvalidKeyError (bad request), NotFoundError (no such checkpoint), CheckpointError (not
        a generator checkpoint, changed sha256, or a label it does not generate), StorageUnavailableError (storage
        down; no manifest is written), or whatever `on_progress` raises to stop the work.
        """
        self.validate(request)
        bucket = request.checkpoint_bucket or self.config.models_bucket
        checkpoint = self.store.stat(bucket, request.checkpoint_key)
        if request.checkpoint_sha256 and request.checkpoint_sha256 != checkpoint.sha256:
            raise CheckpointError(
                f"{checkpoint.uri} has sha256 {checkpoint.sha256}, not the requested {request.checkpoint_sha256}: "
                "it was replaced since the reference was taken"
            )
        prefix = self.result_prefix(request, checkpoint.sha256)
        with self._lock_for(prefix):
            self.store.ensure_bucket(self.config.synthetic_bucket)
            stored = self._stored_result(prefix, request, checkpoint.sha256)
            if stored is not None:
                log.info("reusing stored result", extra={"prefix": prefix, "objects": len(stored.images)})
                return stored
            loaded = self._generator(checkpoint)
            label = resolve_label(loaded.config, request.label, checkpoint.uri)
            return self._write(request, label, loaded, prefix, on_progress)

    def _lock_for(self, prefix: str) -> threading.Lock:
        with self._locks_guard:
            return self._prefix_locks[prefix]

    def _generator(self, checkpoint: ObjectRef) -> LoadedGenerator:
        """The checkpoint's generator: from the cache by sha256, else downloaded (sha256-verified) and loaded."""
        with self._generators_guard:
            if checkpoint.sha256 in self._generators:
                self._generators.move_to_end(checkpoint.sha256)
                return self._generators[checkpoint.sha256]
        with tempfile.TemporaryDirectory(prefix="pneumonia-generator-") as tmp:
            path = Path(tmp, "generator.pth")
            downloaded = self.store.get_file(checkpoint.bucket, checkpoint.key, path)
            if downloaded.sha256 != checkpoint.sha256:
                raise CheckpointError(f"{checkpoint.uri} was replaced while it was being read; retry the request")
            try:
                loaded = open_generator(path, self.device)
            except (CheckpointError, ConfigError) as exc:  # name the stored object, not this container's temp file
                raise type(exc)(str(exc).replace(str(path), checkpoint.uri)) from exc
        with self._generators_guard:
            self._generators[checkpoint.sha256] = loaded
            while len(self._generators) > CACHED_GENERATORS:
                self._generators.popitem(last=False)
        return loaded

    def _write(
        self,
        request: GenerationRequest,
        label: int,
        loaded: LoadedGenerator,
        prefix: str,
        on_progress: ProgressCallback,
    ) -> GenerationResult:
        """Draw and store the images (storing while drawing), then (last) the manifest."""
        bucket = self.config.synthetic_bucket
        stored = [0]

        def report(phase: str, done: int) -> None:
            if phase == "uploading":
                stored[0] = done
            on_progress(Progress(phase, done, request.count))

        log.info("generating", extra={"prefix": prefix, "count": request.count, "seed": request.seed})
        try:
            written = write_synthetic(
                loaded, label, request.seed, request.count, request.batch_size or self.config.batch_size,
                self.device, StoreSink(self.store, bucket, prefix), layout=self.layout, shard_size=self.shard_size,
                workers=self.write_workers, on_progress=report,
            )  # fmt: skip
            rows = written.shards if self.layout == "shards" else written.images
            manifest = self.store.put_bytes(bucket, prefix + MANIFEST_NAME, manifest_bytes(rows), "text/csv")
        except StorageUnavailableError as exc:
            resumes = " (it keeps the shards already stored)" if self.layout == "shards" else ""
            raise StorageUnavailableError(
                f"storing {object_uri(bucket, prefix)} failed after {stored[0]} of {request.count} images, before the "
                f"manifest, so it is not a result; retry the request{resumes}. {exc}"
            ) from exc
        log.info(
            "stored result",
            extra={"prefix": prefix, "images": request.count, "objects": len(written.refs), "resumed": written.reused},
        )
        return GenerationResult(written.refs, manifest, prefix, reused=False)

    def _stored_result(
        self, prefix: str, request: GenerationRequest, checkpoint_sha256: str
    ) -> GenerationResult | None:
        """The result already under `prefix` if its manifest (either layout) matches the request, else None.

        A manifest that does not match is deleted, so that the prefix is no result while it is rewritten.
        """
        bucket = self.config.synthetic_bucket
        try:
            data = self.store.get_bytes(bucket, prefix + MANIFEST_NAME)
        except NotFoundError:
            return None
        manifest = ObjectRef(bucket, prefix + MANIFEST_NAME, hashlib.sha256(data).hexdigest(), len(data))
        try:
            parsed = parse_manifest(data.decode("utf-8", errors="replace"), manifest.uri)
            problem = _mismatch(parsed.images, request, checkpoint_sha256)
            objects = [] if problem else self._stored_objects(prefix, parsed)
            problem = problem or _replaced_shard(parsed, objects)
        except (DatasetError, NotFoundError) as exc:
            problem, objects = str(exc), []
        if problem:
            log.warning("replacing a stored manifest: %s", problem, extra={"prefix": prefix})
            self.store.delete(bucket, prefix + MANIFEST_NAME)
            return None
        return GenerationResult(objects, manifest, prefix, reused=True)

    def _stored_objects(self, prefix: str, manifest: Manifest) -> list[ObjectRef]:
        """The references of the objects a manifest lists (NotFoundError for a missing one)."""
        names = (
            [row.shard for row in manifest.shards] if manifest.layout == "shards" else [r.file for r in manifest.images]
        )
        return [self.store.stat(self.config.synthetic_bucket, prefix + name) for name in names]


class StoreSink:
    """shared.shards.ShardSink on a prefix of a bucket: one put per shard; references are ObjectRefs."""

    def __init__(self, store: ObjectStore, bucket: str, prefix: str) -> None:
        self.store, self.bucket, self.prefix = store, bucket, prefix

    def stored(self) -> set[str]:
        return {ref.key[len(self.prefix) :] for ref in self.store.list(self.bucket, self.prefix)}

    def read(self, name: str) -> tuple[bytes, ObjectRef]:
        data = self.store.get_bytes(self.bucket, self.prefix + name)
        return data, ObjectRef(self.bucket, self.prefix + name, hashlib.sha256(data).hexdigest(), len(data))

    def write(self, name: str, data: bytes, content_type: str) -> ObjectRef:
        return self.store.put_bytes(self.bucket, self.prefix + name, data, content_type)


def _replaced_shard(manifest: Manifest, objects: list[ObjectRef]) -> str:
    """Why the stored shards are not the ones the manifest lists ('' when they are; always '' for PNGs)."""
    for row, ref in zip(manifest.shards, objects, strict=False):
        if ref.sha256 != row.sha256:
            return f"{row.shard} is not the shard its manifest lists (sha256 {ref.sha256}, not {row.sha256})"
    return ""


def _mismatch(rows: list[ManifestRow], request: GenerationRequest, checkpoint_sha256: str) -> str:
    """Why a stored manifest is not the result of `request` ('' when it is)."""
    if sorted(row.index for row in rows) != list(range(request.count)):
        return f"it lists indices other than 0..{request.count - 1}"
    for row in rows:
        if (row.label, row.seed, row.generator_sha256) != (request.label, request.seed, checkpoint_sha256):
            return f"{row.file} has label {row.label}, seed {row.seed}, generator {row.generator_sha256}"
    return ""


# ---------------------------------------------------------------- gRPC front end

PROTO_LABELS = {common_pb2.LABEL_NORMAL: NORMAL, common_pb2.LABEL_PNEUMONIA: PNEUMONIA}
PHASES = {"generating": generator_pb2.GENERATE_PHASE_GENERATING, "uploading": generator_pb2.GENERATE_PHASE_UPLOADING}


def request_from_proto(message: generator_pb2.GenerateRequest) -> GenerationRequest:
    """The front-end-independent request; ConfigError for a label that is not NORMAL or PNEUMONIA."""
    if message.label not in PROTO_LABELS:
        raise ConfigError(f"label must be LABEL_NORMAL or LABEL_PNEUMONIA, got {message.label}")
    return GenerationRequest(
        checkpoint_key=message.checkpoint.key,
        label=PROTO_LABELS[message.label],
        count=message.count,
        seed=message.seed,
        batch_size=message.batch_size,
        checkpoint_bucket=message.checkpoint.bucket,
        checkpoint_sha256=message.checkpoint.sha256,
        output_prefix=message.output_prefix,
    )


def response_to_proto(result: GenerationResult) -> generator_pb2.GenerateResponse:
    return generator_pb2.GenerateResponse(
        images=[ref_to_proto(ref) for ref in result.images],
        manifest=ref_to_proto(result.manifest),
        prefix=result.prefix,
        reused=result.reused,
    )


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """pneumonia.v1.GeneratorService over SyntheticImageService; stops work once the caller has gone."""

    def __init__(self, service: SyntheticImageService) -> None:
        self.service = service

    @rpc_method
    def Generate(
        self, request: generator_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> generator_pb2.GenerateResponse:
        result = self.service.generate(request_from_proto(request), on_progress=lambda _: ensure_active(context))
        return response_to_proto(result)

    @rpc_method
    def GenerateStream(
        self, request: generator_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[generator_pb2.GenerateProgress | FinalMessage]:
        generation = request_from_proto(request)
        events: queue.Queue[Any] = queue.Queue()  # Progress, then a GenerationResult or an exception

        def report(progress: Progress) -> None:
            ensure_active(context)
            events.put(progress)

        def work() -> None:
            try:
                events.put(self.service.generate(generation, on_progress=report))
            except Exception as exc:  # re-raised below, in the RPC's thread
                events.put(exc)

        threading.Thread(target=work, name="generate-stream", daemon=True).start()
        while True:
            event = events.get()
            if isinstance(event, Exception):
                raise event
            if isinstance(event, GenerationResult):  # the answer: a client may stop reading once it has it
                yield FinalMessage(
                    generator_pb2.GenerateProgress(
                        phase=generator_pb2.GENERATE_PHASE_DONE,
                        images_done=generation.count,
                        images_total=generation.count,
                        result=response_to_proto(event),
                    )
                )
                return
            yield generator_pb2.GenerateProgress(
                phase=PHASES[event.phase], images_done=event.done, images_total=event.total
            )
