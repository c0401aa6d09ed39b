"""A small client of TorchServe's REST inference API: POST /predictions/{model} and /explanations/{model}.

The web page's own (services do not import each other; services.classifier.client is the full client). The
inference key comes from TorchServe's key_file.json, re-read once when TorchServe refuses it (it renews its keys);
it is sent to TorchServe only, never to the browser. Every 4xx/5xx answer becomes InferenceError with TorchServe's
status and message; an unreachable server is InferenceError with status None.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3

from shared.errors import PneumoniaError

log = logging.getLogger(__name__)

INVALID_KEY = "InvalidKeyException"  # TorchServe 0.12 answers a refused key with HTTP 400 and this type
PROBABILITY_HEADER = "X-Pneumonia-Probability"  # shared.serving.handler: the explanation's calibrated P(pneumonia)
T = TypeVar("T")


class InferenceError(PneumoniaError):
    """TorchServe refused or failed a call: `status` (None: unreachable), its `message` and error `kind`."""

    def __init__(self, status: int | None, message: str, kind: str = "") -> None:
        super().__init__(f"classifier: {'HTTP ' + str(status) if status else 'unreachable'}: {message}")
        self.status, self.message, self.kind = status, message, kind

    @property
    def key_refused(self) -> bool:
        return self.kind == INVALID_KEY or self.status == 401


@dataclass(frozen=True)
class Explanation:
    """The Grad-CAM overlay (PNG bytes) and the calibrated P(pneumonia) TorchServe sent with it."""

    png: bytes
    pneumonia_probability: float | None


class TorchServeInference:
    """predict / explain one image; thread-safe."""

    def __init__(self, inference_url: str, key_file: str | Path, timeout: float = 60.0) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.key_file = Path(key_file)
        self.timeout = timeout
        self._key: str | None = None
        self._lock = threading.Lock()
        self._http = urllib3.PoolManager(num_pools=2, maxsize=8, retries=False)

    def _inference_key(self, reload: bool = False) -> str:
        with self._lock:
            if reload or self._key is None:
                self._key = read_inference_key(self.key_file)
            return self._key

    def _post(self, path: str, image: bytes, key: str) -> urllib3.BaseHTTPResponse:
        url = f"{self.inference_url}/{path}"
        headers = {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {key}"}
        try:
            response = self._http.request("POST", url, body=image, headers=headers, timeout=self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise InferenceError(None, f"POST {url} failed: {exc}") from exc
        if response.status == 413 and not response.data:
            raise InferenceError(413, "request body larger than the classifier's max_request_size")
        if response.status >= 400:
            raise InferenceError(response.status, *error_message(response.data))
        return response

    def _with_key(self, call: Callable[[str], T]) -> T:
        try:
            return call(self._inference_key())
        except InferenceError as exc:
            if not exc.key_refused:
                raise
            log.info("TorchServe refused the inference key: reading %s again", self.key_file)
            return call(self._inference_key(reload=True))

    def predict(self, model: str, image: bytes) -> dict[str, Any]:
        """The handler's answer: {label, pneumonia_probability, model_version, ...}."""
        path = f"predictions/{urllib.parse.quote(model, safe='')}"
        data = self._with_key(lambda key: self._post(path, image, key).data)
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise InferenceError(None, f"the answer is not JSON: {data[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise InferenceError(None, f"unexpected answer: {str(answer)[:200]}")
        return answer

    def explain(self, model: str, image: bytes) -> Explanation:
        """The Grad-CAM overlay of the image (PNG) with its calibrated P(pneumonia)."""
        path = f"explanations/{urllib.parse.quote(model, safe='')}"
        response = self._with_key(lambda key: self._post(path, image, key))
        header = response.headers.get(PROBABILITY_HEADER)
        try:
            probability = float(header) if header is not None else None
        except ValueError:
            probability = None
        return Explanation(response.data, probability)

    def close(self) -> None:
        self._http.clear()


def read_inference_key(path: Path) -> str:
    """The `inference` key of TorchServe's key_file.json; InferenceError (status None) naming the file otherwise."""
    try:
        return str(json.loads(path.read_text())["inference"]["key"])
    except FileNotFoundError as exc:
        raise InferenceError(None, f"TorchServe's key file {path} does not exist (is TorchServe running?)") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InferenceError(None, f"cannot read the inference key from {path}: {exc}") from exc


def error_message(data: bytes) -> tuple[str, str]:
    """TorchServe's {"code", "type", "message"} error body -> (message, type); the raw text otherwise."""
    text = data.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return text or "(no message)", ""
    return str(parsed.get("message", text)), str(parsed.get("type", ""))
