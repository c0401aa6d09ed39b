"""The generator service through real servers on 127.0.0.1: gRPC (LocalStore and S3), HTTP, and the process."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from pneumonia_proto.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from service_process import TEST_TOKEN, assert_health_and_reflection, json_log, service_process, serving_channel
from storage_server import S3TestServer, free_port, s3_server  # noqa: F401 (fixture)

from services.generator.config import GeneratorConfig
from services.generator.generate_synthetic import generate_images
from services.generator.http_api import MAX_BODY_BYTES, create_app
from services.generator.service import (
    SERVICE_NAME,
    GeneratorServicer,
    Progress,
    SyntheticImageService,
    request_from_proto,
)
from shared.checkpoints import save_checkpoint
from shared.datasets import PNEUMONIA
from shared.errors import CheckpointError, ConfigError, PneumoniaError
from shared.grpc_service import (
    DeadlineExceededError,
    GrpcServer,
    JsonFormatter,
    RequestCancelledError,
    Service,
    rpc_method,
    status_for,
)
from shared.models.dcgan import Generator
from shared.storage import (
    InvalidKeyError,
    LocalStore,
    NotFoundError,
    ObjectRef,
    ObjectStore,
    S3Store,
    StorageError,
    StorageUnavailableError,
)
from shared.storage.proto import ref_from_proto
from shared.synthetic import MANIFEST_NAME, ManifestRow, load_synthetic, read_layout, read_manifest

CHECKPOINT_KEY = "gan/generator_final.pth"
# A tiny unconditional generator of pneumonia images: 16 x 16 gray, 8-d latent, 4 feature maps.
TINY_CONFIG = {
    "image_size": 16,
    "num_channels": 1,
    "latent_dim": 8,
    "feature_maps_g": 4,
    "conditional": False,
    "num_classes": 0,
    "label": PNEUMONIA,
}


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    generator = Generator(
        TINY_CONFIG["latent_dim"], TINY_CONFIG["feature_maps_g"], TINY_CONFIG["num_channels"], TINY_CONFIG["image_size"]
    )
    path = tmp_path_factory.mktemp("generator") / "generator_final.pth"
    save_checkpoint(path, "dcgan-generator", TINY_CONFIG, state_dict=generator.state_dict())
    return path


@dataclass
class Running:
    """A started gRPC server over a SyntheticImageService, a channel to it and the stored checkpoint."""

    service: SyntheticImageService
    server: GrpcServer
    channel: grpc.Channel
    stub: generator_pb2_grpc.GeneratorServiceStub
    store: ObjectStore
    checkpoint: ObjectRef

    def request(self, count: int = 5, seed: int = 3, **fields: object) -> generator_pb2.GenerateRequest:
        fields.setdefault("label", common_pb2.LABEL_PNEUMONIA)
        fields.setdefault("batch_size", 2)
        checkpoint = common_pb2.ObjectRef(bucket=self.checkpoint.bucket, key=self.checkpoint.key)
        return generator_pb2.GenerateRequest(checkpoint=checkpoint, count=count, seed=seed, **fields)


SHARD_SIZE = 2  # images per shard in these tests: a request of a few images spans several shards


@contextmanager
def running_service(
    store: ObjectStore, checkpoint_file: Path, config: GeneratorConfig, **options: Any
) -> Iterator[Running]:
    store.ensure_bucket(config.models_bucket)
    checkpoint = store.put_file(config.models_bucket, CHECKPOINT_KEY, checkpoint_file)
    service = SyntheticImageService(config, store, **{"shard_size": SHARD_SIZE, **options})
    servicer = Service(
        SERVICE_NAME, GeneratorServicer(service), generator_pb2_grpc.add_GeneratorServiceServicer_to_server
    )
    server = GrpcServer([servicer], "127.0.0.1:0", callers=None, max_workers=4)
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        yield Running(service, server, channel, generator_pb2_grpc.GeneratorServiceStub(channel), store, checkpoint)
    finally:
        channel.close()
        server.stop(grace=0)


def unique_config(tag: str, **overrides: object) -> GeneratorConfig:
    """Fresh bucket names: the S3 server is shared by the whole session."""
    suffix = f"{tag}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    settings = {"max_images": 3000, "batch_size": 4, "device": "cpu"}
    return GeneratorConfig(synthetic_bucket=f"syn-{suffix}", models_bucket=f"mod-{suffix}", **{**settings, **overrides})


def s3_store(server: S3TestServer, retries: int = 2) -> S3Store:
    return S3Store(
        server.endpoint, server.access_key, server.secret_key, secure=False, retries=retries, retry_delay=0.01
    )


@pytest.fixture
def local(tmp_path: Path, checkpoint_file: Path) -> Iterator[Running]:
    with running_service(LocalStore(tmp_path / "storage"), checkpoint_file, unique_config("local")) as running:
        yield running


@pytest.fixture(params=["local", "s3"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path, checkpoint_file: Path) -> Iterator[Running]:
    if request.param == "local":
        store: ObjectStore = LocalStore(tmp_path / "storage")
    else:
        store = s3_store(request.getfixturevalue("s3_server"))
    with running_service(store, checkpoint_file, unique_config(request.param)) as running:
        yield running


def manifest_rows(store: ObjectStore, manifest: ObjectRef, tmp_path: Path) -> list[ManifestRow]:
    directory = tmp_path / f"manifest-{manifest.sha256[:8]}"
    store.get_file(manifest.bucket, manifest.key, directory / MANIFEST_NAME)
    return read_manifest(directory)


def refs(messages: Iterable[common_pb2.ObjectRef]) -> list[ObjectRef]:
    return [ref_from_proto(message) for message in messages]


def rpc_error(call: Callable[..., object], request: generator_pb2.GenerateRequest, timeout: float) -> grpc.RpcError:
    """The error a unary call raises, or a streaming call raises while its responses are read."""
    with pytest.raises(grpc.RpcError) as info:
        response = call(request, timeout=timeout)
        if isinstance(response, Iterator):
            list(response)
    return info.value


# ---------------------------------------------------------------- gRPC: the result


def test_generate_stores_the_cli_shards_and_manifest_and_is_idempotent(
    any_backend: Running, checkpoint_file: Path, tmp_path: Path
) -> None:
    running = any_backend
    response = running.stub.Generate(running.request(count=5, seed=3), timeout=60)

    assert not response.reused
    assert response.prefix == f"{running.checkpoint.sha256[:16]}/pneumonia/seed-3-count-5/"
    assert response.manifest.key == response.prefix + MANIFEST_NAME
    names = ["000000-000001", "000002-000003", "000004-000004"]
    assert [ref.key for ref in response.images] == [f"{response.prefix}synthetic_pneumonia_{n}.npz" for n in names]
    stored = tmp_path / "stored"
    for ref in [*response.images, response.manifest]:
        assert ref.bucket == running.service.config.synthetic_bucket
        data = running.store.get_bytes(ref.bucket, ref.key)
        assert hashlib.sha256(data).hexdigest() == ref.sha256 and len(data) == ref.size
        (stored / ref.key.removeprefix(response.prefix)).parent.mkdir(exist_ok=True)
        (stored / ref.key.removeprefix(response.prefix)).write_bytes(data)

    shards = read_layout(stored).shards  # one row per shard, with the sha256 the response carries
    assert [row.sha256 for row in shards] == [ref.sha256 for ref in response.images]
    assert [(row.first_index, row.count) for row in shards] == [(0, 2), (2, 2), (4, 1)]
    assert {(row.label, row.seed, row.generator_sha256) for row in shards} == {
        (PNEUMONIA, 3, running.checkpoint.sha256)
    }
    images = load_synthetic(stored)  # what the trainer reads
    assert images.patient_ids.tolist() == [f"synthetic-synthetic_pneumonia_{i:06d}.png" for i in range(5)]
    assert images.load(0).size == (16, 16)

    # The same bytes as `pneumonia generate-synthetic` with this checkpoint, seed and shard size (another batch size).
    generate_images(checkpoint_file, tmp_path / "cli", 5, PNEUMONIA, 3, 3, torch.device("cpu"), shard_size=SHARD_SIZE)
    cli_digests = [row.sha256 for row in read_layout(tmp_path / "cli").shards]
    assert cli_digests == [ref.sha256 for ref in response.images]

    again = running.stub.Generate(running.request(count=5, seed=3, batch_size=5), timeout=60)
    assert again.reused
    assert refs(again.images) == refs(response.images)
    assert refs([again.manifest]) == refs([response.manifest])


def test_a_killed_request_resumes_from_its_stored_shards(local: Running, checkpoint_file: Path, tmp_path: Path) -> None:
    """A request stopped after its first shards were stored leaves them and no manifest; the identical request keeps
    them and draws only the rest, and its result is the one an uninterrupted request stores."""
    request = request_from_proto(local.request(count=20, seed=4, batch_size=2))

    def stop_after_two_stored_shards(progress: Progress) -> None:
        if progress.phase == "uploading" and progress.done >= 2 * SHARD_SIZE:
            raise RequestCancelledError("the client went away")

    with pytest.raises(RequestCancelledError):
        local.service.generate(request, on_progress=stop_after_two_stored_shards)
    prefix = local.service.result_prefix(request, local.checkpoint.sha256)
    bucket = local.service.config.synthetic_bucket
    assert not local.store.exists(bucket, prefix + MANIFEST_NAME)
    left = [ref.key.removeprefix(prefix) for ref in local.store.list(bucket, prefix)]
    assert 2 <= len(left) < 10 and all(name.endswith(".npz") for name in left)  # at most 4 more were in flight

    messages = list(local.stub.GenerateStream(local.request(count=20, seed=4, batch_size=2), timeout=60))
    drawn = [m.images_done for m in messages if m.phase == generator_pb2.GENERATE_PHASE_GENERATING]
    kept = SHARD_SIZE * len(left)
    assert drawn == list(range(kept + 2, 21, 2))  # the kept shards' images count as done and are not drawn again
    result = messages[-1].result
    assert not result.reused and len(result.images) == 10

    with running_service(LocalStore(tmp_path / "other"), checkpoint_file, unique_config("fresh")) as other:
        straight = other.stub.Generate(other.request(count=20, seed=4, batch_size=3), timeout=60)
    assert [ref.sha256 for ref in straight.images] == [ref.sha256 for ref in result.images]


def test_png_layout_stores_one_png_per_image_and_a_shard_service_reuses_it(
    local: Running, checkpoint_file: Path, tmp_path: Path
) -> None:
    """The old layout stays available (layout="png"), and a result stored in it (a run from before shards) is a
    result for the shard service too: the trainer reads both."""
    with running_service(local.store, checkpoint_file, local.service.config, layout="png") as png:
        response = png.stub.Generate(png.request(count=3, seed=6), timeout=60)
    assert [ref.key.removeprefix(response.prefix) for ref in response.images] == [
        f"synthetic_pneumonia_{i:06d}.png" for i in range(3)
    ]
    for ref in response.images:
        with Image.open(io.BytesIO(local.store.get_bytes(ref.bucket, ref.key))) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (16, 16))
    rows = manifest_rows(local.store, ref_from_proto(response.manifest), tmp_path)
    assert [response.prefix + row.file for row in rows] == [ref.key for ref in response.images]

    again = local.stub.Generate(local.request(count=3, seed=6), timeout=60)  # the shard service, same prefix
    assert again.reused and refs(again.images) == refs(response.images)


def test_a_stored_shard_that_does_not_match_its_manifest_is_not_reused(local: Running) -> None:
    response = local.stub.Generate(local.request(count=3), timeout=60)
    shard = response.images[1]
    local.store.put_bytes(shard.bucket, shard.key, b"not the shard the manifest lists")
    again = local.stub.Generate(local.request(count=3), timeout=60)
    assert not again.reused  # regenerated: the replaced shard is redrawn (it cannot be decoded), the others kept
    assert refs(again.images) == refs(response.images) and refs([again.manifest]) == refs([response.manifest])


def test_other_seed_or_count_gets_its_own_prefix(local: Running) -> None:
    first = local.stub.Generate(local.request(count=2, seed=1), timeout=60)
    other_seed = local.stub.Generate(local.request(count=2, seed=2), timeout=60)
    other_count = local.stub.Generate(local.request(count=3, seed=1), timeout=60)
    assert len({first.prefix, other_seed.prefix, other_count.prefix}) == 3
    assert not other_seed.reused and not other_count.reused
    assert first.images[0].sha256 != other_seed.images[0].sha256
    assert first.images[0].sha256 == other_count.images[0].sha256  # image 0 of seed 1 either way


def test_a_stale_manifest_is_replaced_not_trusted(local: Running) -> None:
    response = local.stub.Generate(local.request(count=2), timeout=60)
    bucket = local.service.config.synthetic_bucket
    local.store.put_bytes(bucket, response.manifest.key, b"file,label,seed,index,generator_sha256\nx.png,0,9,0,abc\n")
    again = local.stub.Generate(local.request(count=2), timeout=60)
    assert not again.reused
    assert refs([again.manifest]) == refs([response.manifest])  # rewritten with the original bytes


def test_stream_reports_progress_then_the_result(local: Running) -> None:
    messages = list(local.stub.GenerateStream(local.request(count=6, batch_size=4), timeout=60))
    progress = [(m.phase, m.images_done, m.images_total) for m in messages[:-1]]
    generating = [done for phase, done, _ in progress if phase == generator_pb2.GENERATE_PHASE_GENERATING]
    uploading = [done for phase, done, _ in progress if phase == generator_pb2.GENERATE_PHASE_UPLOADING]
    assert generating == [4, 6]
    assert uploading == sorted(uploading) and uploading[-1] == 6  # shards stored while the next batch is drawn
    assert all(done % SHARD_SIZE == 0 for done in uploading) and {total for *_, total in progress} == {6}
    drawn = 0
    for phase, done, _ in progress:  # nothing is stored before it is drawn
        drawn = done if phase == generator_pb2.GENERATE_PHASE_GENERATING else drawn
        assert done <= drawn
    last = messages[-1]
    assert last.phase == generator_pb2.GENERATE_PHASE_DONE and last.images_done == 6
    unary = local.stub.Generate(local.request(count=6), timeout=60)
    assert unary.reused and refs(unary.images) == refs(last.result.images)


class CallContext:
    """The part of grpc.ServicerContext our servicers use, so that a test can drive one call as gRPC's server does
    and choose when the client goes away (`active`)."""

    def __init__(self) -> None:
        self.active = True

    def invocation_metadata(self) -> tuple:
        return ()

    def send_initial_metadata(self, metadata: object) -> None:
        pass

    def time_remaining(self) -> None:
        return None

    def is_active(self) -> bool:
        return self.active

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None


@pytest.mark.parametrize(
    ("read_until", "logged"),
    [("result", [("INFO", "rpc ok", "OK")]), ("first progress", [("WARNING", "rpc failed: %s", "CANCELLED")])],
)
def test_a_client_that_stops_reading_after_the_result_ends_the_stream_normally(
    local: Running, caplog: pytest.LogCaptureFixture, read_until: str, logged: list[tuple[str, str, str]]
) -> None:
    """A client that has its result may stop reading before the stream's end (gRPC then closes the servicer's
    generator, as here): that is a normal end, logged as OK; stopping before the result is still a cancellation."""
    caplog.set_level(logging.INFO, logger="shared.grpc_service")
    context = CallContext()
    stream = GeneratorServicer(local.service).GenerateStream(local.request(count=6, batch_size=4), context)
    for message in stream:
        if read_until == "first progress" or message.phase == generator_pb2.GENERATE_PHASE_DONE:
            break
    stream.close()
    context.active = False
    records = [record for record in caplog.records if getattr(record, "rpc", None) == "GenerateStream"]
    assert [(record.levelname, record.msg, record.code) for record in records] == logged


# ---------------------------------------------------------------- gRPC: errors


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"count": 0}, "count must be between 1 and 3000"),
        ({"count": 3001}, "count must be between 1 and 3000"),
        ({"label": common_pb2.LABEL_UNSPECIFIED}, "label must be LABEL_NORMAL or LABEL_PNEUMONIA"),
        ({"label": 7}, "label must be LABEL_NORMAL or LABEL_PNEUMONIA, got 7"),
        ({"seed": -1}, "seed must be between 0"),
        ({"batch_size": 5000}, "batch_size must be between 0"),
        ({"output_prefix": "runs/../x"}, "output_prefix 'runs/../x'"),
        ({"checkpoint": common_pb2.ObjectRef()}, "checkpoint key is required"),
        ({"checkpoint": common_pb2.ObjectRef(key="gan//g.pth")}, "invalid object key 'gan//g.pth'"),
    ],
)
def test_bad_requests_are_invalid_argument(local: Running, fields: dict, message: str) -> None:
    request = local.request()
    for name, value in fields.items():
        if name == "checkpoint":
            request.checkpoint.CopyFrom(value)
        else:
            setattr(request, name, value)
    for call in (local.stub.Generate, local.stub.GenerateStream):
        error = rpc_error(call, request, timeout=30)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.details()


def test_missing_checkpoint_is_not_found(local: Running) -> None:
    request = local.request()
    request.checkpoint.key = "gan/missing.pth"
    error = rpc_error(local.stub.Generate, request, timeout=30)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "gan/missing.pth" in error.details()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": common_pb2.LABEL_NORMAL}, "only generates pneumonia images, not normal"),
        ({"sha256": "0" * 64}, "not the requested " + "0" * 64),
    ],
)
def test_a_checkpoint_that_cannot_serve_the_request_is_failed_precondition(
    local: Running, change: dict, message: str
) -> None:
    request = local.request(label=change.get("label", common_pb2.LABEL_PNEUMONIA))
    request.checkpoint.sha256 = change.get("sha256", "")
    error = rpc_error(local.stub.Generate, request, timeout=30)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert message in error.details()
    assert "/tmp" not in error.details()  # names the stored object, not the server's temp file


def test_a_passed_deadline_stops_the_work(local: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shared.grpc_service")
    request = local.request(count=3000, batch_size=8)  # seconds of work, at least
    error = rpc_error(local.stub.Generate, request, timeout=1.0)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def finished() -> list[logging.LogRecord]:
        return [record for record in caplog.records if getattr(record, "rpc", None) == "Generate"]

    deadline = time.monotonic() + 20
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = finished()
    assert record.code in ("DEADLINE_EXCEEDED", "CANCELLED")  # stopped between batches, not run to the end
    assert record.duration_ms < 10_000
    prefix = local.service.result_prefix(request_from_proto(request), local.checkpoint.sha256)
    assert not local.store.exists(local.service.config.synthetic_bucket, prefix + MANIFEST_NAME)


def test_storage_outage_mid_request_is_unavailable_and_leaves_no_manifest(
    tmp_path: Path, checkpoint_file: Path
) -> None:
    server = S3TestServer(tmp_path / "s3")
    server.start()
    try:
        with running_service(s3_store(server), checkpoint_file, unique_config("outage")) as running:
            request = running.request(count=200, batch_size=4)
            stream = running.stub.GenerateStream(request, timeout=60)
            first = next(stream)  # the checkpoint is downloaded: generation has begun
            assert first.phase == generator_pb2.GENERATE_PHASE_GENERATING
            server.stop()
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "before the manifest, so it is not a result" in info.value.details()
            assert "unreachable" in info.value.details()

            server.start()
            prefix = running.service.result_prefix(request_from_proto(request), running.checkpoint.sha256)
            assert not running.store.exists(running.service.config.synthetic_bucket, prefix + MANIFEST_NAME)
    finally:
        server.stop()


# ---------------------------------------------------------------- gRPC: health, reflection, logs, shutdown


def test_health_is_serving_and_reflection_lists_the_service(local: Running) -> None:
    assert_health_and_reflection(local.channel, SERVICE_NAME)


def test_request_id_is_echoed_and_logged_as_json(local: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shared.grpc_service")
    response, call = local.stub.Generate.with_call(
        local.request(count=1), metadata=(("x-request-id", "req-42"),), timeout=60
    )
    assert ("x-request-id", "req-42") in call.initial_metadata()
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "req-42"]
    line = json.loads(JsonFormatter().format(record))
    assert line["rpc"] == "Generate" and line["code"] == "OK" and line["level"] == "INFO"
    assert line["logger"] == "shared.grpc_service" and line["msg"] == "rpc ok"
    assert isinstance(line["duration_ms"], float) and line["ts"].endswith("+00:00")
    assert len(response.images) == 1


def test_graceful_stop_turns_health_not_serving_and_finishes_work_in_flight(local: Running) -> None:
    watch = health_pb2_grpc.HealthStub(local.channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=60
    )
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stream = local.stub.GenerateStream(local.request(count=24, batch_size=4), timeout=60)
    assert next(stream).phase == generator_pb2.GENERATE_PHASE_GENERATING

    stopper = threading.Thread(target=local.server.stop, kwargs={"grace": 30})
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()  # an open Watch is a call in flight too: it would hold the stop for the whole grace
    last = list(stream)[-1]  # the call in flight runs to its end
    assert last.phase == generator_pb2.GENERATE_PHASE_DONE and last.images_done == 24
    assert len(last.result.images) == 24 // SHARD_SIZE
    stopper.join(timeout=30)
    assert not stopper.is_alive()
    error = rpc_error(local.stub.Generate, local.request(), timeout=5)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidKeyError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (ValueError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (CheckpointError("checkpoint not found: /m/g.pth"), grpc.StatusCode.NOT_FOUND),
        (CheckpointError("/m/g.pth is a 'classifier' checkpoint"), grpc.StatusCode.FAILED_PRECONDITION),
        (StorageUnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (StorageError("x"), grpc.StatusCode.INTERNAL),
        (RequestCancelledError("x"), grpc.StatusCode.CANCELLED),
        (DeadlineExceededError("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (PneumoniaError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_codes_of_our_errors(exc: Exception, code: grpc.StatusCode) -> None:
    assert status_for(exc) == (code, str(exc))


class AbortingServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """A servicer whose method ends the call with context.abort itself, as a future service might."""

    @rpc_method
    def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "no generating on Sundays")


def test_rpc_method_keeps_a_status_the_method_aborted_with(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shared.grpc_service")
    service = Service(SERVICE_NAME, AbortingServicer(), generator_pb2_grpc.add_GeneratorServiceServicer_to_server)
    server = GrpcServer([service], "127.0.0.1:0", callers=None)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            error = rpc_error(stub.Generate, generator_pb2.GenerateRequest(), timeout=10)
    finally:
        server.stop(grace=0)
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "no generating on Sundays")
    assert [getattr(r, "code", None) for r in caplog.records if getattr(r, "rpc", None)] == ["PERMISSION_DENIED"]


def test_a_bug_is_internal_without_its_details() -> None:
    code, message = status_for(KeyError("secret internals"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message


# ---------------------------------------------------------------- HTTP front end


@pytest.fixture
def http(local: Running) -> Iterator[TestClient]:
    with TestClient(create_app(local.service, None)) as client:
        yield client


def http_body(running: Running, **fields: object) -> dict:
    body = {"checkpoint": {"bucket": running.checkpoint.bucket, "key": CHECKPOINT_KEY}, "label": "pneumonia"}
    return {**body, "count": 4, "seed": 3, "batch_size": 2, **fields}


def test_http_generate_matches_grpc_and_is_idempotent(http: TestClient, local: Running) -> None:
    response = http.post("/v1/generate", json=http_body(local))
    assert response.status_code == 200, response.text
    result = response.json()
    assert not result["reused"] and len(result["images"]) == 4 // SHARD_SIZE
    assert result["manifest"]["key"] == result["prefix"] + MANIFEST_NAME
    for image in result["images"]:
        assert hashlib.sha256(local.store.get_bytes(image["bucket"], image["key"])).hexdigest() == image["sha256"]
    again = http.post("/v1/generate", json=http_body(local)).json()
    assert again["reused"] and again["images"] == result["images"]
    grpc_result = local.stub.Generate(local.request(count=4), timeout=60)
    assert grpc_result.reused and [ref.sha256 for ref in grpc_result.images] == [i["sha256"] for i in result["images"]]


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"count": 0}, 400, "count must be between 1 and 3000"),
        ({"seed": -5}, 400, "seed must be between 0"),
        ({"output_prefix": "/abs"}, 400, "output_prefix '/abs'"),
        ({"label": "sick"}, 422, "normal"),
        ({"count": "many"}, 422, "integer"),
        ({"colour": "blue"}, 422, "colour"),
        ({"label": "normal"}, 409, "only generates pneumonia images"),
        ({"checkpoint": {"key": "gan/missing.pth"}}, 404, "gan/missing.pth"),
    ],
)
def test_http_bad_requests(http: TestClient, local: Running, fields: dict, status: int, message: str) -> None:
    response = http.post("/v1/generate", json=http_body(local, **fields))
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"])


def test_http_storage_down_is_503(checkpoint_file: Path) -> None:
    store = S3Store(f"127.0.0.1:{free_port()}", "key", "secret", secure=False, retries=1)  # nothing listens there
    service = SyntheticImageService(unique_config("down"), store)
    with TestClient(create_app(service, None)) as client:
        response = client.post(
            "/v1/generate", json={"checkpoint": {"key": CHECKPOINT_KEY}, "label": "pneumonia", "count": 1}
        )
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"]


def test_http_health_and_docs(local: Running) -> None:
    serving = threading.Event()
    serving.set()
    with TestClient(create_app(local.service, None, is_serving=serving.is_set)) as client:
        assert client.get("/healthz").json() == {"status": "serving"}
        assert "/v1/generate" in client.get("/openapi.json").json()["paths"]
        for path in ("/docs", "/redoc"):  # their pages would load Swagger UI and ReDoc from a CDN
            assert client.get(path).status_code == 404
        serving.clear()
        response = client.get("/healthz")
        assert (response.status_code, response.json()) == (503, {"status": "not_serving"})


# ---------------------------------------------------------------- the process: python -m services.generator


def test_config_from_env_defaults_and_errors() -> None:
    config = GeneratorConfig.from_env({})
    assert (config.grpc_port, config.http_port, config.max_images) == (50052, 8082, 10000)
    assert (config.synthetic_bucket, config.models_bucket, config.host) == ("synthetic", "models", "127.0.0.1")
    assert GeneratorConfig.from_env({"PNEUMONIA_GENERATOR_MAX_IMAGES": "7"}).max_images == 7
    for name, value in [
        ("PNEUMONIA_GENERATOR_GRPC_PORT", "70000"),
        ("PNEUMONIA_GENERATOR_MAX_IMAGES", "0"),
        ("PNEUMONIA_GENERATOR_DEVICE", "tpu"),
        ("PNEUMONIA_SYNTHETIC_BUCKET", "Bad_Bucket"),
        ("PNEUMONIA_GENERATOR_GRACE", "soon"),
    ]:
        with pytest.raises(ConfigError, match=name):
            GeneratorConfig.from_env({name: value})


@pytest.mark.slow  # the process imports torch and torchvision: 5-20 s
def test_service_process_serves_both_front_ends_and_stops_on_sigterm(tmp_path: Path, checkpoint_file: Path) -> None:
    storage = LocalStore(tmp_path / "storage")
    storage.ensure_bucket("models")
    checkpoint = storage.put_file("models", CHECKPOINT_KEY, checkpoint_file)
    grpc_port, http_port = free_port(), free_port()
    env = {
        "PNEUMONIA_STORAGE_BACKEND": "local",
        "PNEUMONIA_STORAGE_ROOT": str(storage.root),
        "PNEUMONIA_GENERATOR_GRPC_PORT": str(grpc_port),
        "PNEUMONIA_GENERATOR_HTTP_PORT": str(http_port),
        "PNEUMONIA_GENERATOR_DEVICE": "cpu",
    }
    with service_process("generator", env) as process:
        with serving_channel(grpc_port, SERVICE_NAME) as channel:
            body = {"checkpoint": {"key": CHECKPOINT_KEY}, "label": "pneumonia", "count": 2, "seed": 1}
            http_result = _post_when_up(f"http://127.0.0.1:{http_port}", body)
            request = generator_pb2.GenerateRequest(
                checkpoint=common_pb2.ObjectRef(key=CHECKPOINT_KEY), label=common_pb2.LABEL_PNEUMONIA, count=2, seed=1
            )
            grpc_result = generator_pb2_grpc.GeneratorServiceStub(channel).Generate(request, timeout=60)
        assert grpc_result.reused and grpc_result.prefix == http_result["prefix"]
        assert http_result["prefix"].startswith(checkpoint.sha256[:16])
    lines = json_log(process)
    messages = [line["msg"] for line in lines]
    assert "generator service ready" in messages and "grpc server stopped" in messages
    assert messages[-1] == "generator service stopped"
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)


def _post_when_up(url: str, body: dict) -> dict:
    """POST /v1/generate once the HTTP server answers /healthz (it starts alongside gRPC)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=2).raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)
    response = httpx.post(
        f"{url}/v1/generate", json=body, headers={"Authorization": f"Bearer {TEST_TOKEN}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_http_body_over_the_limit_is_413_before_or_while_it_is_read(http: TestClient) -> None:
    """By its Content-Length, nothing read; sent without a length (chunked), as soon as the bytes pass the limit."""
    oversized = b'{"label": "pneumonia", "padding": "' + b"x" * MAX_BODY_BYTES + b'"}'
    declared = http.post("/v1/generate", content=oversized, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and f"larger than {MAX_BODY_BYTES} bytes" in declared.json()["detail"]
    chunks = (oversized[i : i + 4096] for i in range(0, len(oversized), 4096))
    streamed = http.post("/v1/generate", content=chunks, headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and "larger than" in streamed.json()["detail"]
    small = http.post("/v1/generate", content=b'{"label": "pneumonia"}', headers={"Content-Type": "application/json"})
    assert small.status_code == 422  # read and validated as before: the checkpoint is missing
