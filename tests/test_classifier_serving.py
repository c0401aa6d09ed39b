"""The classifier service through a real TorchServe on 127.0.0.1: REST and gRPC inference, explanations, token
authorization, bad inputs, server-side batching, the management API's binding, registration from both stores, and
`python -m services.classifier`. One TorchServe serves the whole module."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import urllib3
from PIL import Image
from pneumonia_proto.torchserve import inference_pb2, inference_pb2_grpc
from storage_server import S3TestServer, s3_server  # noqa: F401 (fixture)
from test_classifier_handler import dicom_bytes, encode, png_claiming_size, truncated_png

from services.classifier import health
from services.classifier.client import (
    ClassifierClient,
    ClassifierError,
    TorchServeKeys,
    content_addressed_copy,
    register_from_store,
)
from services.classifier.config import ClassifierConfig, default_allowed_urls
from services.classifier.torchserve import TorchServe, properties, restored_models, worker_import_problem
from shared.datasets.base import PNEUMONIA
from shared.errors import ConfigError, PneumoniaError
from shared.images import sha256_file
from shared.models.classifier import build_classifier, classifier_config, classifier_transform, load_classifier
from shared.models.classifier import save_classifier as save
from shared.models.ensemble import FoldEnsemble, ensemble_config
from shared.serving.archive import build_model_archive
from shared.serving.handler import BATCH_SIZE_HEADER, PROBABILITY_HEADER, decode_image
from shared.storage import LocalStore, S3Store

ROOT = Path(__file__).resolve().parent.parent
MODEL = "pneumonia"
ENSEMBLE_TEMPERATURES = (0.8, 1.5)
SIZE = 28
MAX_REQUEST_SIZE = 1_000_000
ANY_PORT = {f"{name}_port": 0 for name in ("inference", "management", "metrics", "grpc", "grpc_management")}


def fold_models() -> list[torch.nn.Module]:
    """Two seeded resnet18s with the small-input stem, 28 px, 1 channel: the fold models of a 2-fold run."""
    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(build_classifier("resnet18", in_channels=1, image_size=SIZE, weights="none").eval())
    return models


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served model as train-classifier writes it: the fold-ensemble of two fold models (without calibration)."""
    path = tmp_path_factory.mktemp("classifier") / "baseline_resnet18.pth"
    config = ensemble_config(classifier_config("resnet18", 1, SIZE, "baseline", "none"), [1, 2], ENSEMBLE_TEMPERATURES)
    save(path, FoldEnsemble(fold_models(), ENSEMBLE_TEMPERATURES), config)
    return path


@pytest.fixture(scope="module")
def archive(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_archive(
        checkpoint, tmp_path_factory.mktemp("export"), MODEL, batch_size=4, max_batch_delay_ms=50
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    archive: Path,
    s3_server: S3TestServer,  # noqa: F811 (fixture)
) -> Iterator[TorchServe]:
    """TorchServe with the management API on 127.0.0.1, archives allowed from the S3 server only, and the model
    registered from a LocalStore whose model-store directory is TorchServe's model store (the embedded layout)."""
    storage = LocalStore(tmp_path_factory.mktemp("storage"))
    storage.ensure_bucket("models")
    ref = storage.put_file("models", f"model-store/{MODEL}.mar", archive)
    config = ClassifierConfig(
        **ANY_PORT,
        model_store=storage.root / "models" / "model-store",
        workdir=tmp_path_factory.mktemp("torchserve"),
        max_request_size=MAX_REQUEST_SIZE,
        batch_size=4,
        allowed_urls=default_allowed_urls({"PNEUMONIA_S3_ENDPOINT": s3_server.endpoint}),
    )
    with TorchServe(config) as ts:
        with ts.client() as client:
            register_from_store(client, storage, ref, MODEL, batch_size=4, max_batch_delay_ms=50)
        yield ts


@pytest.fixture(scope="module")
def client(server: TorchServe) -> Iterator[ClassifierClient]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Callable[[bytes], float]:
    """P(pneumonia) the fold models give in-process (the handler's decoding, the model's own transform), each after
    its temperature, averaged."""
    _, config = load_classifier(checkpoint, torch.device("cpu"))
    transform = classifier_transform(config, train=False)
    models = fold_models()

    def p_pneumonia(body: bytes) -> float:
        x = transform(decode_image(body))[None]
        with torch.no_grad():
            return float(
                np.mean(
                    [
                        torch.softmax(model(x) / t, dim=1)[0, PNEUMONIA]
                        for model, t in zip(models, ENSEMBLE_TEMPERATURES, strict=True)
                    ]
                )
            )

    return p_pneumonia


def image(seed: int, size: int = 40) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = 0, 255
    return pixels


def body(fmt: str, seed: int = 0) -> bytes:
    return dicom_bytes(image(seed)) if fmt == "DICOM" else encode(image(seed), fmt)


def good(client: ClassifierClient) -> None:
    """The model still answers (the worker survived whatever came before)."""
    assert client.predict(MODEL, body("PNG"))["model_version"]


# --- configuration -------------------------------------------------------------------------------------------------


def test_config_from_env_defaults_and_errors(tmp_path: Path) -> None:
    config = ClassifierConfig.from_env({"PNEUMONIA_STORAGE_ROOT": str(tmp_path), "PNEUMONIA_MODELS_BUCKET": "mods"})
    assert (config.host, config.management_host) == ("127.0.0.1", "127.0.0.1")
    assert (config.inference_port, config.management_port, config.metrics_port) == (8080, 8081, 8083)
    assert (config.grpc_port, config.grpc_management_port) == (7070, 7071)
    assert config.model_store == tmp_path / "mods" / "model-store"
    s3 = {"PNEUMONIA_STORAGE_BACKEND": "s3", "PNEUMONIA_S3_ENDPOINT": "minio:9000"}
    s3 |= {"PNEUMONIA_S3_ACCESS_KEY": "a", "PNEUMONIA_S3_SECRET_KEY": "b"}
    config = ClassifierConfig.from_env({**s3, "PNEUMONIA_CLASSIFIER_MODELS": "pneumonia=pneumonia.mar, other.mar"})
    assert config.model_store == Path("model-store") and config.models == ("pneumonia=pneumonia.mar", "other.mar")
    assert config.allowed_urls == r"https?://minio:9000/.*"
    with ClassifierClient.from_env({"PNEUMONIA_CLASSIFIER_BATCH_SIZE": "3"}) as from_env:
        assert (from_env.batch_size, from_env.max_batch_delay_ms) == (3, 50)
        assert from_env.key_file == Path("torchserve/key_file.json") and from_env.grpc_address == "127.0.0.1:7070"
    for name, value in [
        ("PNEUMONIA_CLASSIFIER_INFERENCE_PORT", "70000"),
        ("PNEUMONIA_CLASSIFIER_BATCH_SIZE", "0"),
        ("PNEUMONIA_CLASSIFIER_MODELS", "../evil.mar"),
        ("PNEUMONIA_CLASSIFIER_ALLOWED_URLS", "(unclosed"),
    ]:
        with pytest.raises(ConfigError, match=name):
            ClassifierConfig.from_env({name: value})


def test_properties_keep_token_auth_on_and_load_models() -> None:
    props = properties(ClassifierConfig(models=("pneumonia=pneumonia.mar",), extra_properties={"job_queue_size": "5"}))
    assert props["disable_token_authorization"] == "false" and props["enable_envvars_config"] == "false"
    assert props["load_models"] == "pneumonia=pneumonia.mar" and props["job_queue_size"] == "5"
    assert "load_models" not in properties(ClassifierConfig())


def test_management_api_bound_to_loopback(server: TorchServe) -> None:
    written = dict(
        line.split("=", 1) for line in (server.workdir / "config.properties").read_text().splitlines() if "=" in line
    )
    assert written["management_address"] == f"http://127.0.0.1:{server.config.management_port}"
    assert written["grpc_management_address"] == "127.0.0.1"
    assert written["disable_token_authorization"] == "false"
    assert written["install_py_dep_per_model"] == "false"
    assert written["max_request_size"] == str(MAX_REQUEST_SIZE)

    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with socket.socket() as control:  # the address itself is reachable from here...
        control.bind((address, 0))
        control.listen()
        assert socket.create_connection(control.getsockname(), timeout=2)
    for port in (server.config.management_port, server.config.grpc_management_port):  # ...management is not
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
            pass


def non_loopback_ipv4() -> str | None:
    """This machine's address on its default route, if it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") else address


# --- inference -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "DICOM"])
def test_rest_and_grpc_answer_like_the_model_in_process(
    client: ClassifierClient, reference: Callable[[bytes], float], checkpoint: Path, fmt: str
) -> None:
    data = body(fmt, seed=1)
    expected = reference(data)
    for answer in (client.predict(MODEL, data), client.predict_grpc(MODEL, data)):
        assert set(answer) == {
            "label",
            "pneumonia_probability",
            "decision_threshold",
            "operating_rule",
            "model",
            "model_version",
        }
        assert answer["model"] == "fold-ensemble of 2 resnet18 models (mean calibrated probability)"
        assert answer["decision_threshold"] == 0.5  # the fixture's model has no calibration
        assert answer["pneumonia_probability"] == pytest.approx(expected, abs=1e-5)
        assert answer["label"] == ("pneumonia" if expected >= 0.5 else "normal")
        assert answer["model_version"] == sha256_file(checkpoint)[:12]


def test_explanation_is_a_grad_cam_png(client: ClassifierClient, reference: Callable[[bytes], float]) -> None:
    data = body("JPEG", seed=2)
    png = client.explain(MODEL, data)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (224, 224)  # 40 px shown at 224
    channels = np.asarray(picture, dtype=np.int16)
    assert np.abs(channels[..., 0] - channels[..., 2]).max() > 20  # a colour map over a grey picture
    response = client._with_key(
        "inference",
        lambda key: client._request("POST", f"{client.inference_url}/explanations/{MODEL}", key, data),
    )
    assert response.headers["Content-Type"] == "image/png"
    assert float(response.headers[PROBABILITY_HEADER]) == pytest.approx(reference(data), abs=1e-5)


def test_server_side_batching_batches_and_keeps_rows_apart(
    client: ClassifierClient, reference: Callable[[bytes], float]
) -> None:
    """Concurrent requests with batch_size 4: the handler reports the rows per batch in X-Batch-Size (it counts
    the rows TorchServe handed it); each answer belongs to its own image, and a bad row fails alone."""
    bodies = [body("PNG", seed=10 + i) if i % 6 else b"not an image" for i in range(24)]

    def call(data: bytes) -> tuple[int, int, float | None]:
        try:
            response = client.predict_response(MODEL, data)
        except ClassifierError as exc:
            return exc.status, 0, None
        answer = json.loads(response.data)
        return response.status, int(response.headers[BATCH_SIZE_HEADER]), answer["pneumonia_probability"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, bodies))
    for data, (status, _, p) in zip(bodies, results, strict=True):
        if data == b"not an image":
            assert status == 400
        else:
            assert status == 200 and p == pytest.approx(reference(data), abs=1e-5)
    batch_sizes = [size for _, size, _ in results if size]
    assert max(batch_sizes) > 1 and max(batch_sizes) <= 4


# --- authorization -------------------------------------------------------------------------------------------------


def test_requests_without_the_inference_key_are_refused(server: TorchServe, client: ClassifierClient) -> None:
    """TorchServe 0.12 refuses a missing or wrong key with HTTP 400 InvalidKeyException (not 401) over REST and
    PERMISSION_DENIED over gRPC; the management key does not open the inference API."""
    http = urllib3.PoolManager(retries=False)
    url = f"{server.inference_url}/predictions/{MODEL}"
    keys = server.keys()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {keys.management}"}):
        response = http.request("POST", url, body=body("PNG"), headers={"Content-Type": "image/png", **headers})
        assert response.status == 400
        assert json.loads(response.data)["type"] == "InvalidKeyException"
    request = inference_pb2.PredictionsRequest(model_name=MODEL, input={"data": body("PNG")})
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.Predictions(request, metadata=metadata, timeout=30)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stale_keys = TorchServeKeys("stale-inference", "stale-management")
    stale = ClassifierClient(server.inference_url, server.management_url, server.grpc_address, keys=stale_keys)
    with stale, pytest.raises(ClassifierError) as refused:
        stale.list_models()
    assert refused.value.key_refused
    good(client)


def test_renewed_keys_are_picked_up_from_the_key_file(server: TorchServe, client: ClassifierClient) -> None:
    before = server.keys()
    server.renew_keys()
    after = server.keys()
    assert after.inference != before.inference and after.management != before.management
    # Refused once, the client re-reads key_file.json and retries: over gRPC, REST and the management API.
    assert client.predict_grpc(MODEL, body("PNG"))["model_version"]
    good(client)
    assert client.list_models()


# --- bad input -----------------------------------------------------------------------------------------------------

BAD_INPUTS = {
    "not an image": (lambda: b"hello, this is not an image", 400, "not an image"),
    "truncated png": (truncated_png, 400, "truncated or corrupt PNG"),
    "empty body": (lambda: b"", 400, "empty request body"),
    "decompression bomb": (lambda: png_claiming_size(30_000, 30_000), 400, "too large"),
    "dicom without pixel data": (lambda: dicom_bytes(None), 400, "no pixel data"),
    "over max_request_size": (lambda: encode(image(3), "PNG") + bytes(MAX_REQUEST_SIZE), 413, "max_request_size"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_4xx_with_a_message_and_the_worker_keeps_serving(client: ClassifierClient, case: str) -> None:
    make_body, status, message = BAD_INPUTS[case]
    with pytest.raises(ClassifierError, match=message) as info:
        client.predict(MODEL, make_body())
    assert info.value.status == status
    good(client)


@pytest.mark.parametrize("case", ["not an image", "decompression bomb", "dicom without pixel data"])
def test_bad_input_over_grpc_is_invalid_argument(client: ClassifierClient, case: str) -> None:
    make_body, _, message = BAD_INPUTS[case]
    with pytest.raises(ClassifierError, match=message) as info:
        client.predict_grpc(MODEL, make_body())
    assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    assert client.predict_grpc(MODEL, body("PNG"))["model_version"]


def test_over_size_request_over_grpc_is_refused(client: ClassifierClient) -> None:
    """TorchServe's gRPC server resets the stream of a message above max_request_size."""
    with pytest.raises(ClassifierError) as info:
        client.predict_grpc(MODEL, bytes(2 * MAX_REQUEST_SIZE))
    assert info.value.grpc_code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED)
    assert client.predict_grpc(MODEL, body("PNG"))["model_version"]


# --- management ----------------------------------------------------------------------------------------------------


def test_management_lists_describes_and_reports_errors(client: ClassifierClient) -> None:
    assert {"modelName": MODEL, "modelUrl": f"{MODEL}.mar"} in client.list_models()
    (description,) = client.describe(MODEL)
    assert description["batchSize"] == 4 and description["maxBatchDelay"] == 50
    with pytest.raises(ClassifierError) as missing:
        client.predict("no-such-model", body("PNG"))
    assert missing.value.status == 404
    with pytest.raises(ClassifierError, match="allowed URL") as refused:
        client.register("http://198.51.100.7/elsewhere.mar", "elsewhere")
    assert refused.value.status is not None and refused.value.status >= 400


# --- health ----------------------------------------------------------------------------------------------------


def service_environment(server: TorchServe) -> dict[str, str]:
    """The PNEUMONIA_CLASSIFIER_* settings `server` runs with, as the container's environment holds them."""
    config = server.config
    ports = ("inference", "management", "metrics", "grpc", "grpc_management")
    return {
        **{f"PNEUMONIA_CLASSIFIER_{name.upper()}_PORT": str(getattr(config, f"{name}_port")) for name in ports},
        "PNEUMONIA_CLASSIFIER_WORKDIR": str(config.workdir),
        "PNEUMONIA_CLASSIFIER_MODEL_STORE": str(config.model_store),
    }


def test_the_health_check_process_is_healthy_while_the_model_has_a_ready_worker(server: TorchServe) -> None:
    """`python -m services.classifier.health`, the container's HEALTHCHECK, with the service's own settings."""
    result = subprocess.run(
        [sys.executable, "-m", "services.classifier.health"],
        env={**os.environ, **service_environment(server)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("healthy: ping: Healthy") and MODEL in result.stdout
    wrong = {**service_environment(server), "PNEUMONIA_CLASSIFIER_WORKDIR": str(server.workdir / "elsewhere")}
    result = subprocess.run(
        [sys.executable, "-m", "services.classifier.health"],
        env={**os.environ, **wrong},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "key file not found" in result.stdout


def test_a_model_whose_workers_cannot_start_makes_the_classifier_unhealthy(
    server: TorchServe, client: ClassifierClient, tmp_path: Path
) -> None:
    """An archive whose handler cannot import (the failure a missing dependency causes): registered without
    waiting, its workers never get READY, and the health check names it until it is removed."""
    handler = tmp_path / "broken_handler.py"
    handler.write_text("import a_module_that_is_not_installed  # noqa\n")
    command = ["torch-model-archiver", "--model-name", "broken", "--version", "1.0", "--handler", str(handler)]
    command += ["--export-path", str(server.config.model_store), "--force"]
    subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:]], check=True, timeout=120)
    client._manage("POST", "models", {"url": "broken.mar", "initial_workers": 1, "synchronous": "false"})
    try:
        deadline = time.monotonic() + 60
        healthy, found = health.check(client)
        while healthy and time.monotonic() < deadline:
            time.sleep(1)
            healthy, found = health.check(client)
        assert not healthy and ("broken" in found or "Unhealthy" in found), found
    finally:
        client.unregister("broken")
    assert health.check(client)[0]


def test_the_service_refuses_to_start_when_the_worker_cannot_import() -> None:
    assert worker_import_problem() is None  # this environment: TorchServe's worker and our handler import
    problem = worker_import_problem(("ts.model_service_worker", "a_module_that_is_not_installed"))
    assert problem == "ModuleNotFoundError: No module named 'a_module_that_is_not_installed'"


def test_register_from_an_s3_store_by_presigned_url(
    client: ClassifierClient,
    archive: Path,
    reference: Callable[[bytes], float],
    s3_server: S3TestServer,  # noqa: F811 (fixture)
) -> None:
    store = S3Store(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False, retry_delay=0.01)
    bucket = f"models-{os.getpid()}"
    store.ensure_bucket(bucket)
    ref = store.put_file(bucket, "model-store/pneumonia-s3.mar", archive)
    copy = content_addressed_copy(store, ref)
    assert copy.key == f"model-store/versions/pneumonia-s3-{ref.sha256[:12]}.mar" and copy.sha256 == ref.sha256

    assert "registered" in register_from_store(client, store, ref, "pneumonia-s3", batch_size=2, max_batch_delay_ms=5)
    (description,) = client.describe("pneumonia-s3")
    assert (description["batchSize"], description["maxBatchDelay"]) == (2, 5)  # the archive's yaml says 4 and 50
    data = body("DICOM", seed=4)
    assert client.predict("pneumonia-s3", data)["pneumonia_probability"] == pytest.approx(reference(data), abs=1e-5)
    # The same bytes under a second name: TorchServe holds the download already and is given the file instead.
    assert "registered" in register_from_store(client, store, ref, "pneumonia-s3b", batch_size=1)
    assert client.predict_grpc("pneumonia-s3b", data)["pneumonia_probability"] == pytest.approx(reference(data), 1e-5)
    for name in ("pneumonia-s3", "pneumonia-s3b"):
        client.unregister(name)
    assert {m["modelName"] for m in client.list_models()} == {MODEL}


# --- the process ---------------------------------------------------------------------------------------------------


def test_service_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PNEUMONIA_")}
    env |= {f"PNEUMONIA_CLASSIFIER_{name.upper()}": "0" for name in ANY_PORT}
    env |= {"PNEUMONIA_CLASSIFIER_WORKDIR": str(tmp_path / "work"), "PNEUMONIA_STORAGE_ROOT": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.classifier"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "classifier service ready" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(120), "".join(lines[-20:])
        (announced,) = [json.loads(line) for line in lines if "classifier service ready" in line]
        key_file = Path(announced["PNEUMONIA_CLASSIFIER_KEY_FILE"])
        assert key_file == tmp_path / "work" / "key_file.json"
        assert (tmp_path / "models" / "model-store").is_dir()  # the local store's model-store is the model store
        with ClassifierClient.from_env(announced) as local_client:
            assert local_client.ping() == "Healthy"
            assert local_client.list_models() == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(10)
    assert not key_file.exists()
    records = [json.loads(line) for line in lines if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(record) for record in records)
    assert records[-1]["msg"] == "classifier service stopped"
    assert any(record["logger"] == "torchserve" for record in records)


def test_an_archive_replaced_after_it_was_named_is_not_registered(
    client: ClassifierClient, archive: Path, tmp_path: Path
) -> None:
    """register_from_store checks the stored bytes against the reference's sha256 (and the store's digest) before
    TorchServe sees them: a replaced or damaged .mar is refused and nothing is registered."""
    storage = LocalStore(tmp_path / "storage")
    storage.ensure_bucket("models")
    named = storage.put_file("models", "model-store/replaced.mar", archive)
    storage.put_bytes("models", "model-store/replaced.mar", archive.read_bytes() + b"appended")  # replaced
    with pytest.raises(ConfigError, match="it was replaced after the reference was made; not registered"):
        register_from_store(client, storage, named, "replaced")
    current = storage.stat("models", "model-store/replaced.mar")
    (storage.root / "models" / "model-store" / "replaced.mar").write_bytes(b"damaged behind the store's back")
    with pytest.raises(PneumoniaError, match="sha256"):
        register_from_store(client, storage, current, "damaged")
    assert {m["modelName"] for m in client.list_models()} == {MODEL}


# --- restart ---------------------------------------------------------------------------------------------------------

SNAPSHOT = (
    "#Saving snapshot\n"
    'model_snapshot={\\n  "name"\\: "20261130063000000-snapshot.cfg",\\n  "modelCount"\\: 2,\\n  "models"\\: {\\n'
    '    "pneumonia"\\: {\\n      "1.0"\\: {\\n        "defaultVersion"\\: false,\\n        "marName"\\: "old.mar"\\n'
    '      },\\n      "2.0"\\: {\\n        "defaultVersion"\\: true,\\n        "marName"\\: "pneumonia-abc.mar"\\n'
    '      }\\n    },\\n    "gone"\\: {\\n      "1.0"\\: {\\n        "defaultVersion"\\: true,\\n'
    '        "marName"\\: "deleted.mar"\\n      }\\n    }\\n  }\\n}\n'
    "tsConfigFile=logs/config/20261130062900000-startup.cfg\n"
)


def test_the_last_snapshot_names_the_models_to_restore(tmp_path: Path) -> None:
    """The newest snapshot wins; each model's default version; a model whose archive is gone is left out."""
    snapshots = tmp_path / "work" / "logs" / "config"
    snapshots.mkdir(parents=True)
    (snapshots / "20261130060000000-startup.cfg").write_text(SNAPSHOT.replace("pneumonia-abc.mar", "older.mar"))
    (snapshots / "20261130063000000-snapshot.cfg").write_text(SNAPSHOT)
    store = tmp_path / "store"
    store.mkdir()
    for name in ("pneumonia-abc.mar", "old.mar", "older.mar"):
        (store / name).write_bytes(b"archive")
    assert restored_models(tmp_path / "work", store) == ("pneumonia=pneumonia-abc.mar",)
    assert restored_models(tmp_path / "empty", store) == ()


def test_a_restarted_service_serves_the_models_it_served(archive: Path, tmp_path: Path) -> None:
    """Registered, stopped, started again with the same workdir and model store: the model is back, READY and
    answering the same; with PNEUMONIA_CLASSIFIER_RESTORE=false it starts empty."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "served.mar").write_bytes(archive.read_bytes())
    config = ClassifierConfig(**ANY_PORT, model_store=store, workdir=tmp_path / "work")
    with TorchServe(config) as server, server.client() as client:
        client.register("served.mar", MODEL)
        before = client.predict(MODEL, body("PNG"))
    with TorchServe(config) as server, server.client() as client:
        assert [model["modelName"] for model in client.list_models()] == [MODEL]
        deadline = time.monotonic() + 120
        while not health.check(client)[0] and time.monotonic() < deadline:
            time.sleep(1)
        assert client.predict(MODEL, body("PNG")) == before
    with TorchServe(config.model_copy(update={"restore": False})) as server, server.client() as client:
        assert client.list_models() == []  # TorchServe given a config file reads no snapshot itself
