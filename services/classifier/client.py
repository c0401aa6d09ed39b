"""A client of the classifier service (TorchServe 0.12): REST and gRPC inference, explanations, model management.

    client = ClassifierClient.from_env()          # PNEUMONIA_CLASSIFIER_{INFERENCE_URL,MANAGEMENT_URL,...}
    register_from_store(client, open_store(), archive_ref, "pneumonia")
    client.predict("pneumonia", png_bytes)        # {"label", "pneumonia_probability", "model_version"}
    client.predict_grpc("pneumonia", dicom_bytes)
    client.explain("pneumonia", jpeg_bytes)       # Grad-CAM heat map, PNG bytes

Errors: every 4xx/5xx answer (and every failed gRPC call) raises ClassifierError carrying the HTTP status (or the
gRPC code) and TorchServe's message; an unreachable server is ClassifierError with status None.

Token authorization (TorchServe 0.12, checked in its frontend jar, org.pytorch.serve.util.TokenAuthorization):
TorchServe draws three random keys at every start and writes them to `key_file.json` in its working directory
(mode 0600): `inference` (for /predictions, /explanations and gRPC inference, sent as `Authorization: Bearer <key>`
or gRPC metadata `authorization`), `management` (for /models and gRPC management) and `API`. The keys cannot be
set from outside (no config property or variable names them), and no API returns them: `GET /token?type=inference`
(or `management`) on the management port, authorized by the API key, renews a key and its expiry but answers with
an empty body -- the new key is again only in the file. Keys expire after `token_expiration_min` (default 60; we
renew them before that, see services.classifier.__main__). So a client that is not on TorchServe's filesystem gets
the keys only through that file: locally and in tests it reads the file (PNEUMONIA_CLASSIFIER_KEY_FILE); in compose
or Kubernetes the classifier's working directory is a volume that the orchestrator mounts read-only (the same
pod, or a shared volume), and ClassifierClient re-reads the file when a key is refused (after a renewal). There is
no other way short of turning token authorization off, which we never do. A missing or wrong key is refused with
HTTP 400 {"type": "InvalidKeyException"} over REST (not 401) and PERMISSION_DENIED over gRPC; /ping wants the
inference key too. Only the metrics API (/metrics on the metrics port) answers without a key.

Registering an archive from object storage (`register_from_store`); archives live in the models bucket under
`model-store/<model_name>.mar`:
- LocalStore ("file" mode, the embedded run): TorchServe's model store is the directory
  <storage root>/<models bucket>/model-store (ClassifierConfig's default with the local backend), so the archive is
  registered by its file name and TorchServe reads it in place; nothing is copied.
- S3Store ("url" mode, no shared filesystem: compose, Kubernetes): the client registers a presigned GET URL (valid
  15 min) and TorchServe downloads the archive into its own model store. TorchServe 0.12 accepts such a URL: it
  matches the whole URL, query string included, against `allowed_urls` (our default: http(s) to
  PNEUMONIA_S3_ENDPOINT only) and names the downloaded file after the URL's path. It refuses to download over a file
  of that name ("Model file already exists", HTTP 500), and a file outlives a TorchServe restart (it deletes the
  file only when the model is unregistered). So the URL points at a content-addressed copy,
  model-store/versions/<name>-<sha256, 12 digits>.mar (made once): a name already in TorchServe's store holds
  exactly these bytes, and then the archive is registered by that file name instead.
The management API lists a URL-registered model's URL (its signature expires with the URL).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import grpc
import urllib3
from pneumonia_proto.torchserve import inference_pb2, inference_pb2_grpc

from services.classifier.config import batching_from_env
from shared.errors import ConfigError, PneumoniaError
from shared.storage import LocalStore, NotFoundError, ObjectRef, ObjectStore, S3Store
from shared.storage.base import validate_key

MODEL_STORE_PREFIX = "model-store/"
VERSIONS_DIR = "versions"
ALREADY_DOWNLOADED = "Model file already exists"  # TorchServe 0.12's message (HTTP 500)
DEFAULT_TIMEOUT_S = 60.0
REGISTER_TIMEOUT_S = 300.0
PRESIGNED_URL_EXPIRY = timedelta(minutes=15)
UNAUTHORIZED = 401
REQUEST_TOO_LARGE = 413
INVALID_KEY = "InvalidKeyException"
_KEY_REFUSED_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
# gRPC codes as the HTTP statuses TorchServe's REST API would give for the same failure.
_HTTP_FOR_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ClassifierError(PneumoniaError):
    """TorchServe refused or failed a call: `status` (HTTP status, None when the server was unreachable),
    `grpc_code` (for gRPC calls) and TorchServe's `message`."""

    def __init__(
        self, status: int | None, message: str, grpc_code: grpc.StatusCode | None = None, error_type: str = ""
    ) -> None:
        where = f"gRPC {grpc_code.name}" if grpc_code is not None else f"HTTP {status}" if status else "unreachable"
        super().__init__(f"classifier service: {where}: {message}")
        self.status = status
        self.grpc_code = grpc_code
        self.message = message
        self.error_type = error_type  # TorchServe's exception name, e.g. InvalidKeyException

    @property
    def key_refused(self) -> bool:
        """TorchServe refused the key (REST: HTTP 400 InvalidKeyException in 0.12; gRPC: PERMISSION_DENIED)."""
        return self.error_type == INVALID_KEY or self.status == UNAUTHORIZED or self.grpc_code in _KEY_REFUSED_CODES


@dataclass(frozen=True)
class TorchServeKeys:
    """The keys of TorchServe's key_file.json."""

    inference: str
    management: str
    api: str = ""

    @classmethod
    def from_file(cls, path: str | Path) -> TorchServeKeys:
        """Read key_file.json; ConfigError naming the file when it is missing or malformed."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["inference"]["key"], data["management"]["key"], data.get("API", {}).get("key", ""))
        except FileNotFoundError as exc:
            raise ConfigError(f"TorchServe key file not found: {path} (is TorchServe running?)") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read TorchServe keys from {path}: {exc}") from exc


class ClassifierClient:
    """REST (inference + management) and gRPC inference client of one TorchServe; thread-safe.

    Keys come from `keys`, or from `key_file` (re-read when TorchServe refuses a key, e.g. after a renewal).
    """

    def __init__(
        self,
        inference_url: str,
        management_url: str,
        grpc_address: str,
        *,
        keys: TorchServeKeys | None = None,
        key_file: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_connections: int = 16,
        max_message_bytes: int = 64 << 20,
        batch_size: int = 8,
        max_batch_delay_ms: int = 50,
    ) -> None:
        if keys is None and key_file is None:
            raise ConfigError("ClassifierClient needs the TorchServe keys or the path of key_file.json")
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.grpc_address = grpc_address
        self.key_file = Path(key_file) if key_file is not None else None
        self.timeout = timeout
        self.batch_size = batch_size  # register()'s defaults
        self.max_batch_delay_ms = max_batch_delay_ms
        self._keys = keys
        self._keys_lock = threading.Lock()
        self._http = urllib3.PoolManager(num_pools=4, maxsize=max_connections, retries=False)
        options = [("grpc.max_send_message_length", max_message_bytes), ("grpc.max_receive_message_length", -1)]
        self._channel = grpc.insecure_channel(grpc_address, options=options)
        self._grpc = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> ClassifierClient:
        """PNEUMONIA_CLASSIFIER_INFERENCE_URL (default http://127.0.0.1:8080), _MANAGEMENT_URL (http://127.0.0.1:8081),
        _GRPC_ADDRESS (127.0.0.1:7070), _KEY_FILE (./torchserve/key_file.json), and register()'s defaults
        _BATCH_SIZE (8) and _MAX_BATCH_DELAY_MS (50)."""
        env = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
        batch_size, max_batch_delay_ms = batching_from_env(env)
        kwargs.setdefault("batch_size", batch_size)
        kwargs.setdefault("max_batch_delay_ms", max_batch_delay_ms)
        return cls(
            env.get("PNEUMONIA_CLASSIFIER_INFERENCE_URL", "http://127.0.0.1:8080"),
            env.get("PNEUMONIA_CLASSIFIER_MANAGEMENT_URL", "http://127.0.0.1:8081"),
            env.get("PNEUMONIA_CLASSIFIER_GRPC_ADDRESS", "127.0.0.1:7070"),
            key_file=env.get("PNEUMONIA_CLASSIFIER_KEY_FILE", "torchserve/key_file.json"),
            **kwargs,
        )

    def close(self) -> None:
        self._channel.close()
        self._http.clear()

    def __enter__(self) -> ClassifierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # keys
    def keys(self, reload: bool = False) -> TorchServeKeys:
        """The current keys (from the key file when the client has one)."""
        with self._keys_lock:
            if self.key_file is not None and (reload or self._keys is None):
                self._keys = TorchServeKeys.from_file(self.key_file)
            assert self._keys is not None
            return self._keys

    def _with_key(self, kind: Literal["inference", "management"], call: Any) -> Any:
        """call(key); once more with the key file re-read when TorchServe refuses the key (it was renewed)."""
        try:
            return call(getattr(self.keys(), kind))
        except ClassifierError as exc:
            if not exc.key_refused or self.key_file is None:
                raise
            return call(getattr(self.keys(reload=True), kind))

    # REST plumbing
    def _request(
        self,
        method: str,
        url: str,
        key: str | None,
        body: bytes | None = None,
        timeout: float | None = None,
        content_type: str = "application/octet-stream",
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Content-Type": content_type} if body is not None else {}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = self._http.request(
                method, url, body=body, headers=headers, timeout=timeout or self.timeout, preload_content=True
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ClassifierError(None, f"{method} {url} failed: {exc}") from exc
        if response.status == REQUEST_TOO_LARGE and not response.data:  # TorchServe's frontend says nothing
            raise ClassifierError(response.status, "request body larger than the server's max_request_size")
        if response.status >= 400:
            raise ClassifierError(response.status, *_error_message(response.data))
        return response

    # inference
    def ping(self) -> str:
        """TorchServe's health ('Healthy' when every model has its workers); needs the inference key."""
        url = f"{self.inference_url}/ping"
        return json.loads(self._with_key("inference", lambda key: self._request("GET", url, key)).data)["status"]

    def predict_response(self, model: str, image: bytes, version: str | None = None) -> urllib3.BaseHTTPResponse:
        """The raw REST answer of POST /predictions/{model}[/{version}] (headers included)."""
        url = f"{self.inference_url}/predictions/{_path(model, version)}"
        return self._with_key("inference", lambda key: self._request("POST", url, key, image))

    def predict(self, model: str, image: bytes, version: str | None = None) -> dict[str, Any]:
        """{label, pneumonia_probability, model_version} for one PNG, JPEG or DICOM, over REST."""
        return _answer(self.predict_response(model, image, version).data)

    def predict_grpc(self, model: str, image: bytes, version: str | None = None) -> dict[str, Any]:
        """The same over TorchServe's gRPC inference API."""
        request = inference_pb2.PredictionsRequest(model_name=model, model_version=version or "", input={"data": image})

        def call(key: str) -> bytes:
            try:
                response = self._grpc.Predictions(
                    request, metadata=(("authorization", f"Bearer {key}"),), timeout=self.timeout
                )
            except grpc.RpcError as exc:
                code = exc.code()
                message = (exc.details() or code.name).split("\norg.pytorch.serve")[0]  # TorchServe appends a class
                raise ClassifierError(_HTTP_FOR_GRPC.get(code), message, code) from exc
            return response.prediction

        return _answer(self._with_key("inference", call))

    def explain(self, model: str, image: bytes, version: str | None = None) -> bytes:
        """A Grad-CAM heat map of the image (PNG bytes), from POST /explanations/{model}."""
        url = f"{self.inference_url}/explanations/{_path(model, version)}"
        return self._with_key("inference", lambda key: self._request("POST", url, key, image)).data

    # management
    def _manage(self, method: str, path: str, params: Mapping[str, Any] | None = None, timeout: float | None = None):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.management_url}/{path}{query}"
        response = self._with_key("management", lambda key: self._request(method, url, key, timeout=timeout))
        return json.loads(response.data) if response.data else {}

    def register(
        self,
        archive: str,
        model_name: str | None = None,
        *,
        batch_size: int | None = None,
        max_batch_delay_ms: int | None = None,
        initial_workers: int = 1,
        response_timeout_s: int = 120,
    ) -> str:
        """Register a .mar -- a file name in TorchServe's model store, or an http(s) URL TorchServe downloads --
        and wait until its workers are up; returns TorchServe's status message. The batching settings (default: the
        client's) override those of the archive's model-config.yaml."""
        params = {
            "url": archive,
            "batch_size": batch_size or self.batch_size,
            "max_batch_delay": self.max_batch_delay_ms if max_batch_delay_ms is None else max_batch_delay_ms,
            "initial_workers": initial_workers,
            "response_timeout": response_timeout_s,
            "synchronous": "true",
        }
        if model_name:
            params["model_name"] = model_name
        return self._manage("POST", "models", params, timeout=REGISTER_TIMEOUT_S).get("status", "")

    def unregister(self, model: str, version: str | None = None) -> str:
        """Remove a model (one version, or the default one) and stop its workers."""
        return self._manage("DELETE", f"models/{_path(model, version)}", timeout=REGISTER_TIMEOUT_S).get("status", "")

    def list_models(self) -> list[dict[str, str]]:
        """[{modelName, modelUrl}] of every registered model."""
        return self._manage("GET", "models", {"limit": 1000}).get("models", [])

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """TorchServe's description of a model's versions (workers, batch size, ...)."""
        return self._manage("GET", f"models/{_path(model, version)}")


def _path(model: str, version: str | None) -> str:
    quoted = urllib.parse.quote(model, safe="")
    return f"{quoted}/{urllib.parse.quote(version, safe='')}" if version else quoted


def _error_message(data: bytes) -> tuple[str, None, str]:
    """TorchServe's {"code", "type", "message"} error body -> (message, None, type); the raw text otherwise."""
    text = data.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return text or "(no message)", None, ""
    return str(parsed.get("message", text)), None, str(parsed.get("type", ""))


def _answer(data: bytes) -> dict[str, Any]:
    """A prediction body -> the answer dict; ClassifierError for an error body (a bad row of a mixed batch comes
    back over gRPC with status OK and the handler's error JSON)."""
    try:
        answer = json.loads(data)
    except ValueError as exc:
        raise ClassifierError(None, f"the answer is not JSON: {data[:200]!r}") from exc
    if isinstance(answer, dict) and "code" in answer and "message" in answer:
        raise ClassifierError(int(answer["code"]), str(answer["message"]))
    return answer


def archive_file_name(ref: ObjectRef) -> str:
    """The .mar file name of an archive stored directly under model-store/ (ConfigError otherwise)."""
    validate_key(ref.key)
    name = ref.key[len(MODEL_STORE_PREFIX) :] if ref.key.startswith(MODEL_STORE_PREFIX) else ""
    if not name or "/" in name or not name.endswith(".mar"):
        raise ConfigError(f"{ref.uri} is not a model archive directly under {MODEL_STORE_PREFIX} (<name>.mar)")
    return name


def register_from_store(
    client: ClassifierClient,
    store: ObjectStore,
    archive: ObjectRef,
    model_name: str,
    *,
    mode: Literal["auto", "file", "url"] = "auto",
    batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    replace: bool = True,
) -> str:
    """Register the stored archive `archive` (models bucket, model-store/<name>.mar) as `model_name`, after checking
    it against the reference's sha256 and its bytes against their digest (verify_archive).

    mode 'auto': 'file' for a LocalStore (TorchServe's model store is the store's model-store directory), 'url' for an
    S3Store (a presigned URL of a content-addressed copy, which TorchServe downloads); see the module docstring.
    With `replace`, versions of `model_name` already registered are unregistered first. Batching settings default to
    the client's. Returns TorchServe's status message.
    """
    file_name = archive_file_name(archive)
    if mode == "auto":
        mode = "file" if isinstance(store, LocalStore) else "url"
    if mode == "url" and not isinstance(store, S3Store):
        raise ConfigError(f"registering by URL needs an S3 store, not {type(store).__name__}")
    # By file TorchServe reads the stored bytes themselves; by URL, content_addressed_copy verifies them as it copies.
    verify_archive(store, archive, read_bytes=mode == "file")
    if replace and any(m.get("modelName") == model_name for m in client.list_models()):
        for version in client.describe(model_name):
            client.unregister(model_name, version.get("modelVersion"))
    options = {"batch_size": batch_size, "max_batch_delay_ms": max_batch_delay_ms}
    if mode == "file":
        return client.register(file_name, model_name, **options)
    copy = content_addressed_copy(store, archive)
    url = store.presigned_get_url(copy.bucket, copy.key, PRESIGNED_URL_EXPIRY)
    try:
        return client.register(url, model_name, **options)
    except ClassifierError as exc:
        if ALREADY_DOWNLOADED not in exc.message:
            raise
    # TorchServe downloaded these very bytes before (the file is named after its sha256) and kept the file
    return client.register(copy.key.rsplit("/", 1)[1], model_name, **options)


def verify_archive(store: ObjectStore, archive: ObjectRef, read_bytes: bool) -> None:
    """Check, before TorchServe sees it, that the stored archive is the one the caller named: the store's digest
    equals the reference's sha256 (when it carries one) and, with `read_bytes`, the bytes hash to that digest
    (get_file verifies them; StorageError otherwise). ConfigError for a replaced archive: it is never registered."""
    stored = store.stat(archive.bucket, archive.key)
    if archive.sha256 and stored.sha256 != archive.sha256:
        raise ConfigError(
            f"{archive.uri} has sha256 {stored.sha256}, not the {archive.sha256} it was named with: it was replaced "
            "after the reference was made; not registered"
        )
    if read_bytes:
        with tempfile.TemporaryDirectory() as tmp:
            store.get_file(archive.bucket, archive.key, Path(tmp, "archive.mar"))


def content_addressed_copy(store: ObjectStore, archive: ObjectRef) -> ObjectRef:
    """The archive under model-store/versions/<name>-<sha256, 12 digits>.mar (copied there unless present), so
    that the file TorchServe downloads is named after its content."""
    stored = store.stat(archive.bucket, archive.key)  # NotFoundError now rather than a failed download later
    stem = archive_file_name(archive).removesuffix(".mar")
    key = f"{MODEL_STORE_PREFIX}{VERSIONS_DIR}/{stem}-{stored.sha256[:12]}.mar"
    try:
        existing = store.stat(archive.bucket, key)
        if existing.sha256 == stored.sha256:
            return existing
    except NotFoundError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "archive.mar")
        store.get_file(archive.bucket, archive.key, path)  # verified against the stored sha256
        return store.put_file(archive.bucket, key, path)
