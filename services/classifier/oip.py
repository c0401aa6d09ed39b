"""The classifier over the Open Inference Protocol (KServe v2), REST and gRPC, on KServe's Python model server.

    python -m services.classifier.oip            # PNEUMONIA_OIP_* settings, PNEUMONIA_AUTH_TOKENS (listed below)
    python -m services.classifier.oip --health   # exit 0 when the server answers /v2/health/ready (probes)

The second serving runtime beside TorchServe (python -m services.classifier): the same shared.serving.predictor
(decoding, plausibility gate, preprocessing, calibrated probability, label at the operating point, Grad-CAM), behind
`kserve.ModelServer` (kserve 0.21; the subclasses here touch its REST and gRPC server classes, so the minor version
is pinned).

Models. The model directory (PNEUMONIA_OIP_MODEL_DIR, KServe's /mnt/models by default, which KServe's storage
initializer fills from the InferenceService's storageUri) is only read, never written. Model `<name>` is
  <dir>/<name>.mar      one of our TorchServe archives (the trainer's model-store/<name>.mar): the checkpoint or
                        export inside it is served, with the archive's version
  <dir>/<name>/         a directory holding one .mar, .pth checkpoint, .onnx or .torchscript export
                        (version: the first 12 hex digits of the file's sha256)
At start every model of PNEUMONIA_OIP_MODELS is loaded (default: every entry of the directory that loads; an empty
directory is allowed). While running, `POST /v2/repository/models/<name>/load` (the v2 model repository extension,
over REST: kserve 0.21's gRPC RepositoryModelLoad message differs from Triton's, which tritonclient sends) loads or
reloads <name> from the directory (the old one serves until the new one is ready), and `.../unload` unloads it.
Whoever may write the directory (KServe's storage initializer, TorchServe's downloads into its model store in
compose, an operator) puts the file there, then asks the server to load it; the serving process holds no storage
credentials and needs no write access.

Requests (POST /v2/models/<name>/infer, gRPC ModelInfer):
  input  "image"  BYTES [N]  one PNG, JPEG or DICOM file per element. gRPC: the raw file bytes (bytes_contents or
                             raw_input_contents). REST: with the binary data extension (Inference-Header-Content-
                             Length; tritonclient's default) the raw file bytes; in plain JSON the elements are
                             strings holding the base64 of the file (JSON cannot carry raw bytes).
  parameter "explain": true, or requesting the output "gradcam_png": Grad-CAM explanations too (checkpoints only;
                             a model served from an export refuses them with 400 / INVALID_ARGUMENT).
Answers (model_name, model_version: the served model's version, id: the request's):
  output "pneumonia_probability"  FP32 [N]   calibrated P(pneumonia)
  output "label"                  BYTES [N]  "pneumonia" or "normal" at the model's operating point
  output "gradcam_png"            BYTES [N]  with explanations: base64 text of the PNG (the heat map over the image)
  parameters "decision_threshold" (the operating point the labels used, a decimal string) and, when the model
             names its MLflow registry version (registry.json in its archive or folder), "registered_model":
             models:/<name>/<version>
The N images are one batch (one forward pass); the server does not batch across requests. The protocol has no
per-element status: any refused element (not an image, corrupt, too large, refused by the plausibility gate) fails
the request with HTTP 400 / gRPC INVALID_ARGUMENT whose message names each refused element and, for the gate, its
reason code: "image 1: implausible input [constant]: ...".

Limits (what one request may cost): a request carries at most PNEUMONIA_OIP_MAX_IMAGES images (more: 400 /
INVALID_ARGUMENT naming the limit, before any is decoded); an image may have at most PNEUMONIA_OIP_MAX_IMAGE_PIXELS
pixels and 4 bytes a pixel once decoded (its header is read first: a larger one is refused before it is decoded);
at most PNEUMONIA_OIP_MAX_CONCURRENT_DECODES requests are decoded and answered at once, the others wait on the event
loop (holding no thread) for their turn. A request keeps its decoded images until it is answered, so memory holds at
most MAX_CONCURRENT_DECODES x MAX_IMAGES decoded images.

Authentication (shared.auth): every REST request and gRPC call needs `authorization: Bearer <token>` of a caller in
PNEUMONIA_AUTH_TOKENS (HTTP 401, gRPC UNAUTHENTICATED otherwise; /metrics and the repository calls too), except the
probes: GET /, /v2/health/live, /v2/health/ready, /v2/models/<name>/ready and gRPC ServerLive, ServerReady,
ModelReady. REST bodies over PNEUMONIA_OIP_MAX_MESSAGE_BYTES get 413 (gRPC: RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import sys
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import urllib3
from kserve import Model, ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    deserialize_bytes_tensor,
    to_http_parameters,
)
from kserve.protocol.rest.server import RESTServer
from PIL import Image

from services.classifier.oip_models import (
    EXPLAIN_PARAMETER,
    GRADCAM_OUTPUT,
    IMAGE_INPUT,
    LABEL_OUTPUT,
    PROBABILITY_OUTPUT,
    OipConfig,
    load_predictor,
    model_names,
)
from shared.asgi import BearerAuth, BodyLimit
from shared.auth import AUTHORIZATION, AuthConfig, Callers, refusal_reason
from shared.errors import ConfigError, PneumoniaError
from shared.grpc_service import configure_json_logging
from shared.serving.predictor import Predictor, ServingError
from shared.settings import settings_help

log = logging.getLogger("services.classifier.oip")

OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})
OPEN_PATH_PATTERNS = (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$"),)
GRPC_SERVICE = "/inference.GRPCInferenceService/"
OPEN_GRPC_METHODS = frozenset(GRPC_SERVICE + name for name in ("ServerLive", "ServerReady", "ModelReady"))


# ------------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class RequestLimits:
    """What one request may cost (module docstring, Limits), shared by every model of the server: the pixels of an
    image, the images of a request, and the semaphore that lets `max_concurrent_decodes` requests decode at once."""

    max_pixels: int
    max_images: int
    decodes: asyncio.Semaphore

    @classmethod
    def of(cls, config: OipConfig) -> RequestLimits:
        return cls(config.max_image_pixels, config.max_images, asyncio.Semaphore(config.max_concurrent_decodes))


def check_image_count(request: InferRequest, max_images: int) -> None:
    """InvalidInput (400) naming the limit when the request's inputs declare more than `max_images` elements: read
    from their shapes, before any image is decoded."""
    declared = sum(math.prod(int(n) for n in inp.shape or ()) for inp in request.inputs or ())
    if declared > max_images:
        raise InvalidInput(
            f"{declared} images in one request; at most {max_images} (PNEUMONIA_OIP_MAX_IMAGES): "
            "send them in several requests"
        )


def as_dict(parameters: Any) -> dict[str, Any]:
    """Request parameters (REST dict or gRPC map of InferParameter) as a plain dict."""
    if not parameters:
        return {}
    return dict(parameters) if isinstance(parameters, dict) else to_http_parameters(parameters)


def image_bodies(request: InferRequest) -> list[bytes]:
    """The image files of the request's "image" input; InvalidInput saying what is wrong with the request."""
    names = [inp.name for inp in request.inputs]
    if names != [IMAGE_INPUT]:
        raise InvalidInput(f"expected one input named {IMAGE_INPUT!r} (BYTES [N]), got {names}")
    (inp,) = request.inputs
    if inp.datatype != "BYTES":
        raise InvalidInput(f"input {IMAGE_INPUT!r} must be BYTES (one image file per element), not {inp.datatype}")
    if len(inp.shape) != 1 or inp.shape[0] < 1:
        raise InvalidInput(f"input {IMAGE_INPUT!r} must have shape [N], N >= 1; got {list(inp.shape)}")
    items = list(deserialize_bytes_tensor(inp._raw_data)) if inp._raw_data is not None else list(inp.data or [])
    if len(items) != inp.shape[0]:
        raise InvalidInput(f"input {IMAGE_INPUT!r} has shape {list(inp.shape)} but {len(items)} elements")
    return [element_bytes(i, item) for i, item in enumerate(items)]


def element_bytes(index: int, item: Any) -> bytes:
    """One element as file bytes: raw bytes as they are, a JSON string as base64."""
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):
        try:
            return base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(
                f"image {index}: a JSON BYTES element must be the base64 of the image file ({exc}); "
                "or send raw bytes with the binary data extension"
            ) from exc
    raise InvalidInput(f"image {index}: expected bytes or a base64 string, got {type(item).__name__}")


def wants_explanation(request: InferRequest) -> bool:
    """Whether the request asks for Grad-CAM: parameter explain=true, or the output gradcam_png requested."""
    value = as_dict(request.parameters).get(EXPLAIN_PARAMETER, False)
    if isinstance(value, str):
        value = value.strip().lower() in ("1", "true", "yes")
    requested = {out.name for out in request.request_outputs or ()}
    return bool(value) or GRADCAM_OUTPUT in requested


def refusal_message(errors: dict[int, ServingError], rows: int) -> str:
    """One message naming every refused element, e.g. 'image 1: implausible input [constant]: ...'."""
    parts = [f"image {i}: {errors[i].message}" for i in sorted(errors)]
    lead = "" if rows == 1 else f"{len(errors)} of {rows} images refused; "
    return lead + "; ".join(parts)


class PneumoniaModel(Model):
    """One served classifier (kserve.Model) over a shared Predictor loaded from the model directory."""

    def __init__(self, name: str, model_dir: Path, device: str, limits: RequestLimits) -> None:
        super().__init__(name)
        self.model_dir, self.device, self.limits = model_dir, device, limits
        self.predictor: Predictor | None = None

    def load(self) -> bool:
        self.predictor = load_predictor(self.model_dir, self.name, self.device, self.limits.max_pixels)
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        outputs = [
            {"name": PROBABILITY_OUTPUT, "datatype": "FP32", "shape": [-1]},
            {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
        ]
        if self.predictor is not None and self.predictor.explains:
            outputs.append({"name": GRADCAM_OUTPUT, "datatype": "BYTES", "shape": [-1]})
        return outputs

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> InferResponse:
        """Answer the request in the default executor, so the event loop keeps serving probes meanwhile: a request over
        the image count is refused first; then it waits (on the loop) for one of the decode slots."""
        if not isinstance(payload, InferRequest):
            raise InvalidInput("use the v2 protocol: POST /v2/models/<name>/infer")
        check_image_count(payload, self.limits.max_images)
        async with self.limits.decodes:
            return await asyncio.get_running_loop().run_in_executor(None, self.answer, payload)

    def answer(self, request: InferRequest) -> InferResponse:
        """The v2 answer to `request` (module docstring); InvalidInput naming every refused element."""
        assert self.predictor is not None
        bodies = image_bodies(request)
        explain = wants_explanation(request)
        if explain and not self.predictor.explains:
            raise InvalidInput(
                f"explanations need the PyTorch checkpoint; model {self.name!r} is served from a "
                f"{self.predictor.format} export"
            )
        images, errors = self.predictor.decode_rows(bodies)
        answers: dict[int, dict[str, Any]] = {}
        for i, result in self.predictor.predict_images(images).items():
            if isinstance(result, ServingError):
                errors[i] = result
            else:
                answers[i] = result
        if errors:
            raise InvalidInput(refusal_message(errors, len(bodies)))
        rows = range(len(bodies))
        outputs = [
            output(PROBABILITY_OUTPUT, "FP32", [answers[i]["pneumonia_probability"] for i in rows]),
            output(LABEL_OUTPUT, "BYTES", [answers[i]["label"] for i in rows]),
        ]
        if explain:
            pngs = self.predictor.explain_images([images[i] for i in rows])
            outputs.append(output(GRADCAM_OUTPUT, "BYTES", [base64.b64encode(png).decode() for png, _ in pngs]))
        # kserve 0.21 sends bool, int and string parameters only: the threshold as its decimal string
        parameters: dict[str, Any] = {
            "decision_threshold": str(self.predictor.threshold),
            "operating_rule": self.predictor.operating_rule,
            "model": self.predictor.model_description,
        }
        if self.predictor.registered:
            parameters["registered_model"] = self.predictor.registered["uri"]
        return InferResponse(
            response_id=request.id or "",
            model_name=self.name,
            model_version=self.predictor.version,
            parameters=parameters,
            infer_outputs=outputs,
            requested_outputs=request.request_outputs,
            use_binary_outputs=request.use_binary_outputs,
        )


def output(name: str, datatype: str, values: list[Any]) -> InferOutput:
    out = InferOutput(name=name, shape=[len(values)], datatype=datatype)
    out.set_data_from_numpy(np.array(values, dtype=np.float32 if datatype == "FP32" else np.object_), False)
    return out


class ModelDirectory(ModelRepository):
    """KServe's model repository over our model directory: `load(name)` (the v2 repository extension) loads or
    reloads <name> from it."""

    def __init__(self, model_dir: Path, device: str, limits: RequestLimits) -> None:
        super().__init__(str(model_dir))
        self.model_dir, self.device, self.limits = model_dir, device, limits

    async def load(self, name: str) -> bool:
        """Load (or reload) <name> from the directory in the default executor, so probes are answered meanwhile; the
        model it replaces serves until the new one is ready."""
        model = PneumoniaModel(name, self.model_dir, self.device, self.limits)
        try:
            await asyncio.get_running_loop().run_in_executor(None, model.load)
        except (PneumoniaError, OSError) as exc:
            log.error("cannot load model %s: %s", name, exc)
            raise
        self.update(model)
        log.info("model loaded", extra={"model": name, "version": model.predictor.version})  # type: ignore[union-attr]
        return True

    def unload(self, name: str) -> None:
        super().unload(name)
        log.info("model unloaded", extra={"model": name})


# ------------------------------------------------------------------------------------- REST binary data extension


class BinaryBytesDataPlane(DataPlane):
    """KServe's data plane, except that a REST request with the binary data extension keeps its BYTES elements as
    bytes (kserve 0.21 decodes them as UTF-8 text, which fails for image files), and a JSON body sent without a JSON
    Content-Type is read as JSON (kserve 0.21 asks for the binary header)."""

    def decode_inference_request(self, body: Any, headers: dict[str, str], model_name: str) -> InferRequest:
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        # A JSON body without Content-Type: application/json (tritonclient sends none) comes as bytes too.
        length = (headers or {}).get(INFERENCE_CONTENT_LENGTH_HEADER, str(len(body)))
        return binary_request(body, length, model_name)


def binary_request(body: bytes, header_length: str, model_name: str) -> InferRequest:
    """A v2 REST request with binary data (JSON header of `header_length` bytes, then each input's bytes)."""
    try:
        json_length = int(header_length)
        header = json.loads(body[:json_length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the request's JSON header: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("the request's JSON header must be an object with 'inputs'")
    offset, inputs = json_length, []
    for spec in header["inputs"]:
        parameters = dict(spec.get("parameters") or {})
        size = parameters.pop("binary_data_size", None)
        inp = InferInput(spec.get("name", ""), spec.get("shape", []), spec.get("datatype", ""), parameters=parameters)
        if "data" in spec:
            inp.data = spec["data"]
        elif isinstance(size, int) and 0 <= size <= len(body) - offset:
            raw, offset = body[offset : offset + size], offset + size
            if inp.datatype == "BYTES":
                inp.data = list(deserialize_bytes_tensor(raw))
            else:
                inp._raw_data = raw
        else:
            raise InvalidInput(f"input {inp.name!r}: no 'data' and no valid 'binary_data_size'")
        inputs.append(inp)
    outputs = [RequestedOutput(out["name"], out.get("parameters")) for out in header.get("outputs") or ()]
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=header.get("id"),
        parameters=header.get("parameters"),
        request_outputs=outputs or None,
    )


# ---------------------------------------------------------------------------------------------- authentication


def error_body(reason: str) -> dict[str, Any]:
    """kserve's error body: {"error": reason}."""
    return {"error": reason}


def too_large(limit: int) -> dict[str, Any]:
    return error_body(f"request body over {limit} bytes (PNEUMONIA_OIP_MAX_MESSAGE_BYTES)")


def open_path(path: str) -> bool:
    """The probes: GET /, the server's liveness and readiness, a model's readiness."""
    return path in OPEN_PATHS or any(pattern.match(path) for pattern in OPEN_PATH_PATTERNS)


class AsyncTokenInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio's counterpart of shared.auth.TokenServerInterceptor: UNAUTHENTICATED before the servicer runs for a
    call without an accepted bearer token; the probes (ServerLive, ServerReady, ModelReady) are open."""

    def __init__(self, callers: Callers, open_methods: frozenset[str] = OPEN_GRPC_METHODS) -> None:
        self.callers, self.open_methods = callers, open_methods

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if details.method in self.open_methods:
            return await continuation(details)
        authorization = next(
            (v for k, v in details.invocation_metadata or () if k == AUTHORIZATION and isinstance(v, str)), None
        )
        if self.callers.identify(authorization) is not None:
            return await continuation(details)
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler if handler is None else _refusing(handler, refusal_reason(authorization), streaming=True)
        reason = refusal_reason(authorization)
        log.warning("refused an unauthenticated call: %s", reason, extra={"rpc": details.method})
        return _refusing(handler, reason)


def _refusing(handler: grpc.RpcMethodHandler, reason: str, streaming: bool = False) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    codecs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if streaming:  # the v2 service has none; refuse any all the same
        return grpc.stream_stream_rpc_method_handler(refuse, **codecs)
    return grpc.unary_unary_rpc_method_handler(refuse, **codecs)


# --------------------------------------------------------------------------------------------------- the server


class AuthRESTServer(RESTServer):
    """KServe's REST server bound to our host, with bearer-token authentication outermost, then the body limit."""

    def __init__(self, *args: Any, host: str, callers: Callers | None, max_body_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = host  # kserve binds 0.0.0.0; uvicorn reads the host when it starts serving
        self.callers, self.max_body_bytes = callers, max_body_bytes

    def _add_middlewares(self, app: Any) -> None:
        super()._add_middlewares(app)
        app.add_middleware(BodyLimit, limit=self.max_body_bytes, answer=too_large)
        if self.callers is not None:  # added last: runs first
            app.add_middleware(BearerAuth, callers=self.callers, is_open=open_path, answer=error_body)


class AuthGRPCServer(GRPCServer):
    """KServe's gRPC server (kserve 0.21's GRPCServer.start) bound to our host, with the token interceptor first."""

    def __init__(self, *args: Any, host: str, callers: Callers | None, max_message_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host, self.callers, self.max_message_bytes = host, callers, max_message_bytes

    async def start(self, max_workers: int) -> None:
        interceptors: list[grpc.aio.ServerInterceptor] = [LoggingInterceptor(), ExceptionToStatusInterceptor()]
        if self.callers is not None:
            interceptors.insert(0, AsyncTokenInterceptor(self.callers))
        self._server = grpc.aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.max_receive_message_length", self.max_message_bytes),
            ],
        )
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        address = f"[{self.host}]:{self._port}" if ":" in self.host else f"{self.host}:{self._port}"
        self._server.add_insecure_port(address)
        log.info("starting the v2 gRPC server", extra={"address": address})
        await self._server.start()
        await self._server.wait_for_termination()


class OipServer(ModelServer):
    """kserve.ModelServer with our host, bearer-token authentication on REST and gRPC, the binary-safe data plane
    and the model directory as its repository."""

    def __init__(self, config: OipConfig, callers: Callers | None, limits: RequestLimits) -> None:
        super().__init__(
            http_port=config.http_port,
            grpc_port=config.grpc_port,
            workers=1,
            registered_models=ModelDirectory(config.model_dir, config.device, limits),
            enable_grpc=True,
            enable_docs_url=False,
            enable_latency_logging=True,
            grace_period=config.grace,
        )
        self.config, self.callers = config, callers
        self.dataplane = BinaryBytesDataPlane(model_registry=self.registered_models)
        route_kserve_logs_to_root()

    def start(self, models: list[Any]) -> None:  # kserve 0.21's ModelServer.start, with our two servers
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = AuthRESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            grace_period=self.grace_period,
            host=self.config.host,
            callers=self.callers,
            max_body_bytes=self.config.max_message_bytes,
        )
        self._grpc_server = AuthGRPCServer(
            self.grpc_port,
            self.dataplane,
            self.model_repository_extension,
            kwargs={},
            grace_period=self.grace_period,
            host=self.config.host,
            callers=self.callers,
            max_message_bytes=self.config.max_message_bytes,
        )
        self.servers = [self._rest_server.start(), self._grpc_server.start(self.max_threads)]
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def route_kserve_logs_to_root() -> None:
    """kserve and uvicorn log through our root handler (JSON lines) instead of their own."""
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def startup_models(config: OipConfig, limits: RequestLimits) -> list[PneumoniaModel]:
    """The models named by PNEUMONIA_OIP_MODELS, loaded (any failure is an error); without it every entry of the
    directory that loads (the others are logged and skipped; the directory may be empty)."""
    models = []
    for name in config.models or model_names(config.model_dir):
        model = PneumoniaModel(name, config.model_dir, config.device, limits)
        try:
            model.load()
        except (PneumoniaError, OSError) as exc:
            if config.models:
                raise
            log.error("skipping model %s: %s", name, exc)
            continue
        models.append(model)
    if not models:
        log.warning("serving no model yet: put one in %s and POST /v2/repository/models/<name>/load", config.model_dir)
    return models


def check_health(config: OipConfig, timeout_s: float = 5.0) -> tuple[bool, str]:
    """(healthy, what was found): GET /v2/health/ready of the server these settings describe (no token needed)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{config.http_port}/v2/health/ready"
    try:
        response = urllib3.request("GET", url, timeout=timeout_s, retries=False)
    except urllib3.exceptions.HTTPError as exc:
        return False, f"{url}: {exc}"
    return response.status == 200, f"{url}: HTTP {response.status} {response.data.decode(errors='replace')}"


def main(argv: list[str] | None = None) -> int:
    """Serve (exit 0 after SIGTERM / SIGINT, 2 when it cannot start); `--health`: probe a running server instead
    (exit 0 when ready, 1 when not; the container's health check)."""
    if argv is None:
        argv = sys.argv[1:]
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0
    if "--health" in argv:
        try:
            healthy, found = check_health(OipConfig.from_env())
        except ConfigError as exc:
            healthy, found = False, str(exc)
        print(("healthy: " if healthy else "unhealthy: ") + found)
        return 0 if healthy else 1
    configure_json_logging(logging.DEBUG if any(arg in ("-v", "--verbose") for arg in argv) else logging.INFO)
    try:
        config = OipConfig.from_env()
        callers = AuthConfig.from_env().callers()
        limits = RequestLimits.of(config)
        Image.MAX_IMAGE_PIXELS = config.max_image_pixels  # PIL's own bomb guard (twice this) follows the setting
        models = startup_models(config, limits)
    except (PneumoniaError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info(
        "classifier (open inference protocol) starting",
        extra={
            "host": config.host,
            "http_port": config.http_port,
            "grpc_port": config.grpc_port,
            "model_dir": str(config.model_dir),
            "models": {m.name: m.predictor.version for m in models if m.predictor is not None},
            "max_image_pixels": config.max_image_pixels,
            "max_images": config.max_images,
            "max_concurrent_decodes": config.max_concurrent_decodes,
        },
    )
    OipServer(config, callers, limits).start(models)
    log.info("classifier (open inference protocol) stopped")
    return 0


__doc__ = (__doc__ or "") + "\nThe variables:\n" + settings_help(OipConfig, AuthConfig)
if __name__ == "__main__":
    sys.exit(main())
