"""The classifier over the Open Inference Protocol (KServe v2): `python -m services.classifier.oip` started as a
process on 127.0.0.1 with a model directory holding a calibrated, gated checkpoint (as a .mar) and its ONNX export,
called by the standard v2 client (tritonclient) over REST (binary data extension and plain JSON) and gRPC. Its
answers must equal the in-process predictor's and the TorchServe handler's for PNG, JPEG and DICOM; bad and
implausible images, missing and wrong tokens, explanations, and loading a model while running are checked too, and
what one request may cost: images over the pixel limit, requests over the image cap, and how many requests decode at
once (a second server, with its decoder instrumented)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import urllib3
from PIL import Image
from test_classifier_handler import batch_context, dicom_bytes, encode, gated, pixels, rle_dicom  # noqa: F401
from test_ensemble import TEMPERATURES, save_gated_ensemble
from tritonclient.utils import InferenceServerException

from services.classifier.oip_models import (  # not .oip: kserve and tritonclient.grpc clash in one process
    GRADCAM_OUTPUT,
    IMAGE_INPUT,
    LABEL_OUTPUT,
    PROBABILITY_OUTPUT,
    OipConfig,
    model_file,
    model_names,
)
from services.classifier.torchserve import free_port
from shared.errors import ConfigError
from shared.models.classifier import classifier_transform, load_classifier
from shared.models.export import export_classifier
from shared.serving.archive import build_model_archive
from shared.serving.handler import PneumoniaHandler
from shared.serving.predictor import Predictor

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "oip-test-token-" + "0123456789abcdef" * 2
OTHER_TOKEN = "not-the-token-" + "fedcba9876543210" * 2
MODEL, ONNX_MODEL, VERSION = "pneumonia", "pneumonia-onnx", "2.0"


class Server(NamedTuple):
    http: str  # host:port
    grpc: str
    model_dir: Path
    env: dict[str, str]


def auth(token: str = TOKEN) -> dict[str, str]:
    """A fresh headers dict each call (tritonclient adds its own entries to the dict it is given)."""
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, gated: PneumoniaHandler) -> Path:  # noqa: F811
    """<dir>/pneumonia.mar (the handler tests' calibrated, gated checkpoint; version 2.0) and
    <dir>/pneumonia-onnx/ (its ONNX export)."""
    directory = tmp_path_factory.mktemp("mnt-models")
    checkpoint = Path(gated.model_pt_path)
    build_model_archive(checkpoint, directory, MODEL, version=VERSION)
    (directory / ONNX_MODEL).mkdir()
    export_classifier(checkpoint, "onnx", directory / ONNX_MODEL / "model.onnx")
    return directory


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if urllib3.request("GET", url, timeout=2, retries=False).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"not ready after {timeout_s} s: {log.read_text()[-3000:]}")


@contextmanager
def running_server(
    model_dir: Path, log: Path, more_env: dict[str, str] | None = None, command: list[str] | None = None
) -> Iterator[Server]:
    """The v2 runtime as a process on free ports of 127.0.0.1 (`command`: how it is started); SIGTERM at the end must
    exit 0."""
    http_port, grpc_port = free_port(), free_port()
    env = {
        "PNEUMONIA_OIP_HOST": "127.0.0.1",
        "PNEUMONIA_OIP_HTTP_PORT": str(http_port),
        "PNEUMONIA_OIP_GRPC_PORT": str(grpc_port),
        "PNEUMONIA_OIP_MODEL_DIR": str(model_dir),
        "PNEUMONIA_OIP_DEVICE": "cpu",
        "PNEUMONIA_OIP_MAX_MESSAGE_BYTES": str(4 << 20),
        "PNEUMONIA_AUTH_TOKENS": f"tester={TOKEN}",
        **(more_env or {}),
    }
    with open(log, "w") as out:
        process = subprocess.Popen(
            command or [sys.executable, "-m", "services.classifier.oip"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", process, log)
        yield Server(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", model_dir, env)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python -m services.classifier.oip` as its container runs it, with the default limits."""
    with running_server(model_dir, tmp_path_factory.mktemp("oip-log") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def rest(server: Server) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(server.http, network_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server: Server) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(server.grpc)
    yield client
    client.close()


def jpeg(px: np.ndarray) -> bytes:
    """Near-lossless JPEG: the gated model's layout check is fitted on this very noise image."""
    buffer = io.BytesIO()
    Image.fromarray(px).save(buffer, format="JPEG", quality=100, subsampling=0)
    return buffer.getvalue()


def bodies(px: np.ndarray) -> list[bytes]:
    """PNG, JPEG and DICOM of the same pixels."""
    return [encode(px, "PNG"), jpeg(px), dicom_bytes(px)]


def rest_infer(
    client: triton_http.InferenceServerClient,
    images: list[bytes],
    model: str = MODEL,
    binary: bool = True,
    **kwargs: object,
) -> triton_http.InferResult:
    """REST: raw bytes with the binary data extension, or base64 strings in plain JSON."""
    tensor = triton_http.InferInput(IMAGE_INPUT, [len(images)], "BYTES")
    values = images if binary else [base64.b64encode(body) for body in images]
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    kwargs.setdefault("headers", auth())
    return client.infer(model, [tensor], **kwargs)


def grpc_infer(
    client: triton_grpc.InferenceServerClient, images: list[bytes], model: str = MODEL, **kwargs: object
) -> triton_grpc.InferResult:
    tensor = triton_grpc.InferInput(IMAGE_INPUT, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    kwargs.setdefault("headers", auth())
    return client.infer(model, [tensor], **kwargs)


def answers(result: triton_http.InferResult | triton_grpc.InferResult) -> list[tuple[str, float]]:
    labels = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy(LABEL_OUTPUT)]
    return list(zip(labels, result.as_numpy(PROBABILITY_OUTPUT).tolist(), strict=True))


def version_of(result: triton_http.InferResult | triton_grpc.InferResult) -> str:
    response = result.get_response()
    return response["model_version"] if isinstance(response, dict) else response.model_version


# --- answers ------------------------------------------------------------------------------------------------------


def test_png_jpeg_dicom_answers_equal_in_process_and_torchserve_handler(
    rest: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    gated: PneumoniaHandler,  # noqa: F811
    pixels: np.ndarray,  # noqa: F811
) -> None:
    images = bodies(pixels)
    predictor = Predictor.load(Path(gated.model_pt_path), VERSION, "cpu")
    decoded, errors = predictor.decode_rows(images)
    assert not errors
    expected = predictor.predict_images(decoded)
    handled = gated.handle([{"body": body} for body in images], batch_context([{}] * len(images)))
    for i in range(len(images)):  # the TorchServe handler is the same shared predictor
        assert handled[i]["label"] == expected[i]["label"]
        assert handled[i]["pneumonia_probability"] == pytest.approx(expected[i]["pneumonia_probability"], abs=1e-9)

    results = {
        "REST binary": rest_infer(rest, images),
        "REST JSON": rest_infer(rest, images, binary=False),
        "gRPC": grpc_infer(grpc_client, images),
    }
    for transport, result in results.items():
        assert version_of(result) == VERSION, transport
        assert [label for label, _ in answers(result)] == [expected[i]["label"] for i in range(3)], transport
        for (_, p), i in zip(answers(result), range(3), strict=True):
            assert p == pytest.approx(expected[i]["pneumonia_probability"], abs=1e-6), transport  # FP32 on the wire
    assert answers(results["REST binary"]) == answers(results["gRPC"]) == answers(results["REST JSON"])


def test_the_onnx_export_answers_like_its_checkpoint_and_refuses_explanations(
    rest: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    pixels: np.ndarray,  # noqa: F811
) -> None:
    images = bodies(pixels)
    onnx, checkpoint = grpc_infer(grpc_client, images, ONNX_MODEL), grpc_infer(grpc_client, images)
    assert [label for label, _ in answers(onnx)] == [label for label, _ in answers(checkpoint)]
    np.testing.assert_allclose(onnx.as_numpy(PROBABILITY_OUTPUT), checkpoint.as_numpy(PROBABILITY_OUTPUT), atol=1e-5)
    with pytest.raises(InferenceServerException, match="explanations need the PyTorch checkpoint") as refused:
        rest_infer(rest, images[:1], ONNX_MODEL, parameters={"explain": True})
    assert refused.value.status() == "400"


def test_model_metadata_names_the_v2_tensors(rest: triton_http.InferenceServerClient) -> None:
    metadata = rest.get_model_metadata(MODEL, headers=auth())
    assert metadata["inputs"] == [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == [PROBABILITY_OUTPUT, LABEL_OUTPUT, GRADCAM_OUTPUT]
    onnx = rest.get_model_metadata(ONNX_MODEL, headers=auth())
    assert GRADCAM_OUTPUT not in [o["name"] for o in onnx["outputs"]]


# --- explanations -------------------------------------------------------------------------------------------------


def test_explanations_are_grad_cam_pngs_over_rest_and_grpc(
    rest: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    pixels: np.ndarray,  # noqa: F811
) -> None:
    images = [encode(pixels, "PNG"), dicom_bytes(pixels)]
    by_parameter = rest_infer(rest, images, parameters={"explain": True})
    by_output = grpc_infer(
        grpc_client,
        images,
        outputs=[triton_grpc.InferRequestedOutput(name) for name in (PROBABILITY_OUTPUT, LABEL_OUTPUT, GRADCAM_OUTPUT)],
    )
    plain = grpc_infer(grpc_client, images)
    assert plain.as_numpy(GRADCAM_OUTPUT) is None  # only on request
    for result in (by_parameter, by_output):
        assert answers(result) == answers(plain)
        pngs = [base64.b64decode(v) for v in result.as_numpy(GRADCAM_OUTPUT)]
        assert len(pngs) == 2
        for png in pngs:
            picture = Image.open(io.BytesIO(png))
            assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (224, 224)
            rgb = np.asarray(picture, dtype=np.int16)
            assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 20  # coloured by the heat map
    assert list(by_parameter.as_numpy(GRADCAM_OUTPUT)) == list(by_output.as_numpy(GRADCAM_OUTPUT))


# --- refusals -----------------------------------------------------------------------------------------------------


def refusals(
    rest: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient, images: list[bytes]
) -> tuple[InferenceServerException, InferenceServerException]:
    with pytest.raises(InferenceServerException) as over_rest:
        rest_infer(rest, images)
    with pytest.raises(InferenceServerException) as over_grpc:
        grpc_infer(grpc_client, images)
    return over_rest.value, over_grpc.value


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda px: b"this is not an image", "image 0: request body is not an image"),
        (lambda px: encode(px, "PNG")[:200], "image 0: truncated or corrupt PNG"),
        (lambda px: encode(np.full((24, 24), 77, dtype=np.uint8), "PNG"), r"image 0: implausible input \[constant\]"),
        (lambda px: encode(np.stack([px, px // 2, 255 - px], axis=2), "PNG"), r"\[not_grayscale\]"),
        (lambda px: encode(255 - px, "PNG"), r"image 0: implausible input \[out_of_distribution\]"),
    ],
)
def test_a_bad_or_implausible_image_is_a_400_naming_it(
    rest: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    pixels: np.ndarray,  # noqa: F811
    make,
    message: str,
) -> None:
    over_rest, over_grpc = refusals(rest, grpc_client, [make(pixels)])
    assert over_rest.status() == "400" and over_grpc.status() == "StatusCode.INVALID_ARGUMENT"
    assert re.search(message, over_rest.message())
    assert over_rest.message() == over_grpc.message()


def test_a_refused_element_fails_its_request_naming_each(
    rest: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    pixels: np.ndarray,  # noqa: F811
) -> None:
    images = [encode(pixels, "PNG"), b"garbage", encode(np.full((24, 24), 9, dtype=np.uint8), "PNG")]
    over_rest, over_grpc = refusals(rest, grpc_client, images)
    assert over_rest.message().startswith("2 of 3 images refused; image 1: request body is not an image")
    assert "image 2: implausible input [constant]" in over_rest.message()
    assert over_grpc.message() == over_rest.message()
    assert answers(grpc_infer(grpc_client, images[:1]))  # and it keeps serving


def test_malformed_requests_are_400(rest: triton_http.InferenceServerClient, server: Server) -> None:
    wrong_name = triton_http.InferInput("pixels", [1], "BYTES")
    wrong_name.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="expected one input named 'image'"):
        rest.infer(MODEL, [wrong_name], headers=auth())
    floats = triton_http.InferInput(IMAGE_INPUT, [2], "FP32")
    floats.set_data_from_numpy(np.zeros(2, dtype=np.float32))
    with pytest.raises(InferenceServerException, match="must be BYTES"):
        rest.infer(MODEL, [floats], headers=auth())
    with pytest.raises(InferenceServerException, match="base64"):
        rest.infer(MODEL, [json_input(["not base64!"])], headers=auth())
    too_big = urllib3.request(
        "POST",
        f"http://{server.http}/v2/models/{MODEL}/infer",
        body=b"{" + b" " * (5 << 20) + b"}",
        headers={**auth(), "Content-Type": "application/json"},
        retries=False,
    )
    assert too_big.status == 413


def json_input(values: list[str]) -> triton_http.InferInput:
    tensor = triton_http.InferInput(IMAGE_INPUT, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=False)
    return tensor


# --- authentication -----------------------------------------------------------------------------------------------


def test_a_missing_or_wrong_token_is_refused_and_probes_are_open(
    rest: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    server: Server,
    pixels: np.ndarray,  # noqa: F811
) -> None:
    images = [encode(pixels, "PNG")]
    for headers, reason in (({}, "missing credential"), (auth(OTHER_TOKEN), "invalid credential")):
        with pytest.raises(InferenceServerException, match=reason) as over_rest:
            rest_infer(rest, images, headers=dict(headers))
        assert over_rest.value.status() == "401"
        with pytest.raises(InferenceServerException, match=reason) as over_grpc:
            grpc_infer(grpc_client, images, headers=dict(headers))
        assert over_grpc.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match=reason):
            grpc_client.get_model_metadata(MODEL, headers=dict(headers))
        with pytest.raises(InferenceServerException, match=reason):
            rest.load_model(MODEL, headers=dict(headers))
    # the probes need no token, REST and gRPC
    assert rest.is_server_live() and rest.is_server_ready() and rest.is_model_ready(MODEL)
    assert grpc_client.is_server_live() and grpc_client.is_server_ready() and grpc_client.is_model_ready(MODEL)
    health = subprocess.run(
        [sys.executable, "-m", "services.classifier.oip", "--health"],
        cwd=ROOT,
        env={**os.environ, **server.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert health.returncode == 0 and health.stdout.startswith("healthy"), health.stdout + health.stderr


# --- the model directory ------------------------------------------------------------------------------------------


def test_a_model_put_in_the_directory_is_loaded_while_running(
    rest: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    server: Server,
    gated: PneumoniaHandler,  # noqa: F811
    pixels: np.ndarray,  # noqa: F811
) -> None:
    name = "late"
    assert not rest.is_model_ready(name)
    with pytest.raises(InferenceServerException, match="no model 'late'"):
        rest.load_model(name, headers=auth())
    (server.model_dir / name).mkdir()
    shutil.copy(gated.model_pt_path, server.model_dir / name / "model.pth")  # the writer is not the server
    entry = {"name": "pneumonia-curriculum", "version": "7", "uri": "models:/pneumonia-curriculum/7"}
    (server.model_dir / name / "registry.json").write_text(json.dumps(entry))  # its MLflow registry version
    rest.load_model(name, headers=auth())  # REST: kserve 0.21's gRPC RepositoryModelLoad differs from Triton's
    assert rest.is_model_ready(name)
    late, served = (
        grpc_infer(grpc_client, [encode(pixels, "PNG")], name),
        grpc_infer(grpc_client, [encode(pixels, "PNG")]),
    )
    assert answers(late) == answers(served)
    assert len(version_of(late)) == 12  # the checkpoint's sha256, 12 hex digits
    # response parameters: the operating point the labels used, and the registry version (REST and gRPC alike)
    parameters = late.get_response().parameters
    assert parameters["registered_model"].string_param == "models:/pneumonia-curriculum/7"
    assert float(parameters["decision_threshold"].string_param) == pytest.approx(0.3)
    rest_parameters = rest_infer(rest, [encode(pixels, "PNG")], name).get_response()["parameters"]
    assert rest_parameters["registered_model"] == entry["uri"]
    assert float(rest_parameters["decision_threshold"]) == pytest.approx(0.3)
    assert parameters["operating_rule"].string_param == rest_parameters["operating_rule"] == "youden"  # its rule
    assert "registered_model" not in served.get_response().parameters  # a model without a registry.json
    rest.unload_model(name, headers=auth())
    assert not rest.is_model_ready(name)


def test_a_fold_ensemble_is_served_with_its_threshold_gate_and_explanations(
    rest: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    server: Server,
    pixels: np.ndarray,  # noqa: F811
) -> None:
    """The model train-classifier serves by default: the fold models as one, its own threshold and gate."""
    name = "ensemble"
    (server.model_dir / name).mkdir()
    members = save_gated_ensemble(server.model_dir / name / "model.pth", pixels)
    rest.load_model(name, headers=auth())
    transform = classifier_transform(load_classifier(server.model_dir / name / "model.pth")[1], train=False)
    x = transform(Image.open(io.BytesIO(encode(pixels, "PNG"))).convert("L"))[None]
    with torch.no_grad():
        expected = float(
            np.mean([torch.softmax(m(x) / t, dim=1)[0, 1] for m, t in zip(members, TEMPERATURES, strict=True)])
        )
    for result in (
        rest_infer(rest, [encode(pixels, "PNG")], name),
        grpc_infer(grpc_client, [encode(pixels, "PNG")], name),
    ):
        ((label, p),) = answers(result)
        assert p == pytest.approx(expected, abs=1e-5)  # the mean of the members' calibrated probabilities
        assert label == ("pneumonia" if p >= 0.4 else "normal")  # at the ensemble's own threshold
    parameters = rest_infer(rest, [encode(pixels, "PNG")], name).get_response()["parameters"]
    assert parameters["model"] == "fold-ensemble of 3 resnet18 models (mean calibrated probability)"
    assert parameters["operating_rule"] == "prevalence" and float(parameters["decision_threshold"]) == 0.4
    explained = rest_infer(rest, [encode(pixels, "PNG")], name, parameters={"explain": True})
    assert Image.open(io.BytesIO(base64.b64decode(explained.as_numpy(GRADCAM_OUTPUT)[0]))).format == "PNG"
    with pytest.raises(InferenceServerException, match=r"out_of_distribution"):  # its gate, on its own features
        rest_infer(rest, [encode(255 - pixels, "PNG")], name)
    rest.unload_model(name, headers=auth())


def test_model_directory_layout(tmp_path: Path) -> None:
    (tmp_path / "a.mar").write_bytes(b"")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "one.pth").write_bytes(b"")
    (tmp_path / "b" / "two.onnx").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a model")
    assert model_names(tmp_path) == ["a", "b"]
    assert model_file(tmp_path, "a") == tmp_path / "a.mar"
    with pytest.raises(ConfigError, match="exactly one model file.*one.pth, two.onnx"):
        model_file(tmp_path, "b")
    with pytest.raises(ConfigError, match="invalid model name"):
        model_file(tmp_path, "../etc")
    with pytest.raises(ConfigError, match="PNEUMONIA_OIP_MODELS"):
        OipConfig.from_env({"PNEUMONIA_OIP_MODELS": "good,../bad"})
    assert OipConfig.from_env({"PNEUMONIA_OIP_MODELS": "a, b"}).models == ("a", "b")


# --- what one request may cost ------------------------------------------------------------------------------------

# The runtime's own main, its decoder wrapped: each decode (one per image) writes how many decodes run as it starts
# ("start <n>") and "end" when done, and lasts 0.3 s more, so that requests that may overlap do.
PROBED_MAIN = """
import os, sys, threading, time
from shared.serving import predictor
log, lock, active, decode = os.environ["OIP_TEST_DECODE_LOG"], threading.Lock(), [0], predictor.decode_image
def probed(*args, **kwargs):
    with lock:
        active[0] += 1
        with open(log, "a") as out:
            out.write(f"start {active[0]}\\n")
    try:
        time.sleep(0.3)
        return decode(*args, **kwargs)
    finally:
        with lock:
            active[0] -= 1
            with open(log, "a") as out:
                out.write("end\\n")
predictor.decode_image = probed
from services.classifier.oip import main
sys.exit(main())
"""
MAX_IMAGES_LIMITED, DECODES_LIMITED = 3, 2


class Probed(NamedTuple):
    server: Server
    decode_log: Path

    def decodes(self) -> list[int]:
        """How many decodes ran as each one started, in order."""
        lines = self.decode_log.read_text().split() if self.decode_log.exists() else []
        return [int(n) for word, n in zip(lines, lines[1:], strict=False) if word == "start"]


@pytest.fixture(scope="module")
def probed(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probed]:
    """A second runtime with small limits (3 images a request, 2 requests decoding at once) and its decoder probed."""
    folder = tmp_path_factory.mktemp("oip-probed")
    decode_log = folder / "decodes.log"
    more_env = {
        "PNEUMONIA_OIP_MAX_IMAGES": str(MAX_IMAGES_LIMITED),
        "PNEUMONIA_OIP_MAX_CONCURRENT_DECODES": str(DECODES_LIMITED),
        "OIP_TEST_DECODE_LOG": str(decode_log),
    }
    command = [sys.executable, "-c", PROBED_MAIN]
    with running_server(model_dir, folder / "server.log", more_env, command) as running:
        yield Probed(running, decode_log)


def test_the_default_limits_refuse_a_pixel_bomb_and_a_request_of_too_many_images(
    rest: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    pixels: np.ndarray,  # noqa: F811
) -> None:
    """The review's image (8000 x 8000, 16 bits: 64 M pixels were allowed, ~1.6 GB to decode), 2 MB of RLE DICOM:
    400 naming the limit, from its header; 33 images (the cap is 32): 400 naming the cap and its setting. The
    server answers the next request as before."""
    bomb_rest, bomb_grpc = refusals(rest, grpc_client, [rle_dicom(8000, 8000, value=1234)])
    assert bomb_rest.status() == "400" and bomb_grpc.status() == "StatusCode.INVALID_ARGUMENT"
    assert bomb_rest.message().startswith("image 0: image too large: 8000 x 8000 x 1 pixels of 2 bytes")
    assert "exceeds the limit of 21233664 pixels" in bomb_rest.message() == bomb_grpc.message()
    many_rest, many_grpc = refusals(rest, grpc_client, [encode(pixels, "PNG")] * 33)
    assert many_rest.status() == "400" and many_grpc.status() == "StatusCode.INVALID_ARGUMENT"
    assert "33 images in one request; at most 32 (PNEUMONIA_OIP_MAX_IMAGES)" in many_rest.message()
    assert many_grpc.message() == many_rest.message()
    assert len(answers(rest_infer(rest, [encode(pixels, "PNG")] * 32))) == 32


def test_a_request_over_the_image_cap_is_a_400_naming_it_before_any_image_is_decoded(
    probed: Probed,
    pixels: np.ndarray,  # noqa: F811
) -> None:
    rest = triton_http.InferenceServerClient(probed.server.http, network_timeout=120)
    grpc_client = triton_grpc.InferenceServerClient(probed.server.grpc)
    try:
        before = len(probed.decodes())
        over = [encode(pixels, "PNG")] * (MAX_IMAGES_LIMITED + 1)
        over_rest, over_grpc = refusals(rest, grpc_client, over)
        expected = f"4 images in one request; at most {MAX_IMAGES_LIMITED} (PNEUMONIA_OIP_MAX_IMAGES)"
        assert over_rest.status() == "400" and expected in over_rest.message()
        assert over_grpc.status() == "StatusCode.INVALID_ARGUMENT" and expected in over_grpc.message()
        with pytest.raises(InferenceServerException, match=re.escape(expected)):  # plain JSON, base64 elements
            rest.infer(MODEL, [json_input([base64.b64encode(body).decode() for body in over])], headers=auth())
        assert len(probed.decodes()) == before  # refused from the shape: not one image was decoded
        assert len(answers(rest_infer(rest, over[:MAX_IMAGES_LIMITED]))) == MAX_IMAGES_LIMITED
        assert len(probed.decodes()) == before + MAX_IMAGES_LIMITED
    finally:
        rest.close()
        grpc_client.close()


def test_at_most_max_concurrent_decodes_requests_decode_at_once_and_the_others_wait(
    probed: Probed,
    pixels: np.ndarray,  # noqa: F811
) -> None:
    """Six requests at once, REST and gRPC (one image each, each decode lasting 0.3 s more): two decode at a time,
    never more (the slots are shared by both front ends), the others wait their turn, and all six are answered."""
    images = [encode(pixels, "PNG")]
    before = len(probed.decodes())
    start = threading.Barrier(6)
    results: list[list[tuple[str, float]]] = []
    errors: list[BaseException] = []

    def ask(over_grpc: bool) -> None:
        client = (
            triton_grpc.InferenceServerClient(probed.server.grpc)
            if over_grpc
            else triton_http.InferenceServerClient(probed.server.http, network_timeout=120)
        )
        try:
            start.wait(timeout=30)
            results.append(answers((grpc_infer if over_grpc else rest_infer)(client, images)))
        except BaseException as exc:  # noqa: BLE001 (reported by the test below)
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=ask, args=(i % 2 == 1,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 6 and all(result == results[0] for result in results)
    concurrent = probed.decodes()[before:]
    assert len(concurrent) == 6
    assert max(concurrent) == DECODES_LIMITED  # they did overlap, and no more than the cap allows
