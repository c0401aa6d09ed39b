"""TorchServe handler for the pneumonia classifier: PNG, JPEG or DICOM chest X-ray in, P(pneumonia) out.

A thin TorchServe front end over shared.serving.predictor (the logic the Open Inference Protocol runtime,
services.classifier.oip, shares): its ServingError becomes TorchServe's PredictionException with the same status
and message.

The .mar's serialized file is one of our classifier checkpoints (`save_classifier`); its saved config gives the
preprocessing, so the served model sees exactly what it saw in evaluation. Each answer is
{"label": "pneumonia" | "normal", "pneumonia_probability": float, "decision_threshold": float (the operating point
the label used), "operating_rule": str (the rule that chose it, e.g. "prevalence"), "model": str (what is served, e.g.
"fold-ensemble of 3 resnet18 models (mean calibrated probability)"), "model_version": str} and,
when the .mar names its MLflow registry version (registry.json, written
by the orchestrator), "registered_model": "models:/<name>/<version>".

/explanations/{model} answers a PNG (Content-Type image/png): the input with the Grad-CAM map of the pneumonia output
over it (shared.gradcam), and the headers X-Pneumonia-Probability and X-Decision-Threshold.

Server-side batching: TorchServe hands `handle` up to batch_size requests at once, possibly from different clients
and of both kinds (predictions and explanations); each row is answered on its own. A bad row (not an image,
truncated, empty, too large, DICOM without pixels) gets HTTP 400 with {"code", "type", "message"} while the other
rows of its batch are answered normally; a batch of one bad row raises PredictionException, which TorchServe turns
into HTTP 400 or gRPC INVALID_ARGUMENT with the message. (TorchServe's gRPC API ignores per-row statuses: a bad row
of a larger batch reaches a gRPC client as status OK with the error JSON as its prediction -- our client raises on
it.) Every answer carries the header X-Batch-Size: the number of rows the model saw in that batch.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from shared.serving import predictor as shared_predictor
from shared.serving.predictor import EXPORTED_SUFFIXES, Predictor, ServingError

logger = logging.getLogger(__name__)

BAD_REQUEST = shared_predictor.BAD_REQUEST
PNG_CONTENT_TYPE = "image/png"
BATCH_SIZE_HEADER = "X-Batch-Size"
PROBABILITY_HEADER = "X-Pneumonia-Probability"
THRESHOLD_HEADER = "X-Decision-Threshold"
__all__ = ["EXPORTED_SUFFIXES", "PneumoniaHandler", "decode_image"]


def prediction_exception(exc: ServingError) -> PredictionException:
    """The shared predictor's error as TorchServe returns it: HTTP `exc.status` (gRPC INVALID_ARGUMENT for 400)
    with its message."""
    return PredictionException(exc.message, exc.status)


def decode_image(body: Any) -> Image.Image:
    """A request body (bytes) -> PIL image ('L', or 'RGB' when in colour); PredictionException(400) naming the
    problem otherwise (shared.serving.predictor.decode_image)."""
    try:
        return shared_predictor.decode_image(body)
    except ServingError as exc:
        raise prediction_exception(exc) from exc


def _row_body(row: dict[str, Any]) -> Any:
    return row.get("data") or row.get("body")


class PneumoniaHandler(BaseHandler):
    """Serves one classifier checkpoint (or its export) through a shared Predictor. `handle` answers each row of a
    batch on its own, a bad row with its own HTTP 400 (module docstring); the stages it uses are public so that
    they can be tested one by one."""

    def initialize(self, context: Any) -> None:
        """Load the .mar's classifier checkpoint on the GPU TorchServe assigned, else on the CPU."""
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        model_info = context.manifest["model"]
        self.model_pt_path = os.path.join(properties["model_dir"], model_info["serializedFile"])
        self.model_version = str(model_info.get("modelVersion", "unknown"))
        self.predictor = Predictor.load(self.model_pt_path, self.model_version, self.device)
        self.model, self.exported, self.config = self.predictor.model, self.predictor.exported, self.predictor.config
        self.transform, self.calibration, self.gate = (
            self.predictor.transform,
            self.predictor.calibration,
            self.predictor.gate,
        )
        self.manifest = context.manifest
        self.initialized = True

    def check_plausible(self, image: Image.Image) -> None:
        """The model-free gate checks (size, aspect, grey, constant); PredictionException(400) on refusal."""
        try:
            self.predictor.check_plausible(image)
        except ServingError as exc:
            raise prediction_exception(exc) from exc

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        """Request rows -> batch, rows x in_channels x image_size x image_size (gate-checked images only): the
        stages `handle` applies row by row, for a batch of good rows (it raises on the first bad one)."""
        images = [decode_image(_row_body(row)) for row in data]
        for image in images:
            self.check_plausible(image)
        return self.predictor.preprocess(images)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch -> (logits rows x 2, penultimate features rows x D)."""
        return self.predictor.infer(data)

    def feature_refusals(self, features: torch.Tensor) -> dict[int, PredictionException]:
        """Rows whose features lie outside the training distribution (the gate's last check), by row index."""
        return {i: prediction_exception(exc) for i, exc in self.predictor.feature_refusals(features).items()}

    def postprocess(self, data: tuple[torch.Tensor, torch.Tensor]) -> list[dict[str, Any]]:
        """(logits, features) -> one JSON-able answer per row: calibrated P(pneumonia), label at the model's
        operating point (plain softmax and 0.5 for a model saved without calibration)."""
        return self.predictor.answers(data[0])

    def explain_images(self, images: list[Image.Image]) -> list[tuple[bytes, float]]:
        """Grad-CAM of the pneumonia output for each image -> (heat map over the image as PNG bytes, calibrated
        P(pneumonia))."""
        try:
            return self.predictor.explain_images(images)
        except ServingError as exc:
            raise prediction_exception(exc) from exc

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Answer every row of a batch on its own: a prediction (JSON), an explanation (PNG) or a 400 error."""
        start = time.perf_counter()
        self.context = context
        rows = len(data)
        images, failed = self.predictor.decode_rows([_row_body(row) for row in data])
        errors: dict[int, PredictionException] = {i: prediction_exception(exc) for i, exc in failed.items()}
        answers: list[Any] = [None] * rows
        explain = [i for i in images if _wants_explanation(context, i)]
        predict = {i: image for i, image in images.items() if i not in explain}
        for i, result in self.predictor.predict_images(predict).items():
            if isinstance(result, ServingError):
                errors[i] = prediction_exception(result)
            else:
                answers[i] = result
        if rows == 1 and errors:  # a proper status for REST and gRPC alike
            raise errors[0]
        if explain:
            for i, (png, p) in zip(explain, self.explain_images([images[i] for i in explain]), strict=True):
                answers[i] = png
                _set_header(context, i, "content-type", PNG_CONTENT_TYPE)
                _set_header(context, i, PROBABILITY_HEADER, f"{p:.6f}")
                _set_header(context, i, THRESHOLD_HEADER, f"{self.predictor.threshold:.6f}")
        for i, exc in errors.items():
            answers[i] = {"code": exc.error_code, "type": type(exc).__name__, "message": exc.message}
            if context is not None:
                context.set_response_status(code=exc.error_code, phrase="Bad Request", idx=i)
        for i in range(rows):
            _set_header(context, i, BATCH_SIZE_HEADER, str(rows))
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        logger.debug(
            "batch of %d rows: %d predictions, %d explanations, %d errors",
            rows,
            len(predict),
            len(explain),
            len(errors),
        )
        return answers


def _wants_explanation(context: Any, idx: int) -> bool:
    """Whether request `idx` came to /explanations (TorchServe marks it with the request header explain=True)."""
    return context is not None and context.get_request_header(idx, "explain") == "True"


def _set_header(context: Any, idx: int, name: str, value: str) -> None:
    if context is not None:
        context.set_response_header(idx, name, value)
