"""TorchServe handler for the pneumonia classifier: PNG, JPEG or DICOM chest X-ray in, P(pneumonia) out.

The .mar's serialized file is one of our classifier checkpoints (`save_classifier`); its saved config gives the
preprocessing, so the served model sees exactly what it saw in evaluation. Each answer is
{"label": "pneumonia" | "normal", "pneumonia_probability": float, "model_version": str}.

/explanations/{model} answers a PNG (Content-Type image/png): the input with the Grad-CAM map of the pneumonia output
over it (shared.gradcam), and the header X-Pneumonia-Probability.

Server-side batching: TorchServe hands `handle` up to batch_size requests at once, possibly from different clients
and of both kinds (predictions and explanations); each row is answered on its own. A bad row (not an image,
truncated, empty, too large, DICOM without pixels) gets HTTP 400 with {"code", "type", "message"} while the other
rows of its batch are answered normally; a batch of one bad row raises PredictionException, which TorchServe turns
into HTTP 400 or gRPC INVALID_ARGUMENT with the message. (TorchServe's gRPC API ignores per-row statuses: a bad row
of a larger batch reaches a gRPC client as status OK with the error JSON as its prediction -- our client raises on
it.) Every answer carries the header X-Batch-Size: the number of rows the model saw in that batch.
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from typing import Any

import numpy as np
import pydicom
import torch
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from shared.calibration import Calibration, calibrated_probability, decision_threshold, recalibrate
from shared.datasets.base import CLASS_NAMES, NORMAL, PNEUMONIA
from shared.dicom import DicomError, check_inflated_size, display_values
from shared.images import MAX_IMAGE_PIXELS
from shared.models.classifier import classifier_transform, load_classifier, penultimate_features
from shared.models.export import FORMATS as EXPORT_FORMATS
from shared.models.export import load_exported
from shared.plausibility import GRAY_MODES, ImplausibleImageError, PlausibilityGate, check_features, check_image

logger = logging.getLogger(__name__)

BAD_REQUEST = 400
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
PNG_CONTENT_TYPE = "image/png"
EXPORTED_SUFFIXES = frozenset(EXPORT_FORMATS.values())
BATCH_SIZE_HEADER = "X-Batch-Size"
PROBABILITY_HEADER = "X-Pneumonia-Probability"


def bad_request(message: str) -> PredictionException:
    """An error TorchServe returns to the client as HTTP 400 with `message`."""
    return PredictionException(message, BAD_REQUEST)


def implausible(exc: ImplausibleImageError) -> PredictionException:
    """HTTP 400 / gRPC INVALID_ARGUMENT for an input the plausibility gate refused; its reason code leads the
    message."""
    return PredictionException(f"implausible input [{exc.reason}]: {exc}", BAD_REQUEST)


def check_pixel_count(width: int, height: int, frames: int = 1) -> None:
    """Refuse images too large to decode safely (decompression bombs), before decoding them."""
    if width * height * frames > MAX_IMAGE_PIXELS:
        raise bad_request(
            f"image too large: {width} x {height} x {frames} pixels exceeds the limit of {MAX_IMAGE_PIXELS} "
            "(decompression bomb?)"
        )


def decode_picture(body: bytes) -> Image.Image:
    """PNG / JPEG / any PIL format -> fully decoded image, grey ('L') or, if it has colour, 'RGB'."""
    try:
        with warnings.catch_warnings():  # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(body))
    except UnidentifiedImageError as exc:
        raise bad_request("request body is not an image (expected PNG, JPEG or DICOM)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise bad_request(f"image too large (decompression bomb?): {exc}") from exc
    with img:
        check_pixel_count(img.width, img.height, getattr(img, "n_frames", 1))
        try:
            img.load()  # full decode, so a truncated file fails here
        except (OSError, SyntaxError, ValueError) as exc:
            raise bad_request(f"truncated or corrupt {img.format} image: {exc}") from exc
        return img.convert("L" if img.mode in GRAY_MODES else "RGB")  # colour stays visible to the gate


def decode_dicom(body: bytes) -> Image.Image:
    """DICOM -> grayscale image of one frame as a viewer shows it (shared.dicom: Modality LUT, VOI window or LUT,
    MONOCHROME1), a deflated file's size bounded before it is inflated."""
    try:
        check_inflated_size(body)
        ds = pydicom.dcmread(io.BytesIO(body), force=False)
    except DicomError as exc:
        raise bad_request(str(exc)) from exc
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise bad_request(f"truncated or corrupt DICOM file: {exc}") from exc
    if "PixelData" not in ds:
        raise bad_request("DICOM file has no pixel data")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    check_pixel_count(columns, rows, int(ds.get("NumberOfFrames", 1) or 1))
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable or inconsistent pixel data
        raise bad_request(f"cannot decode DICOM pixel data: {exc}") from exc
    if pixels.ndim == 3 and pixels.shape[0] == 1:  # a single frame: 1 x rows x columns
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise bad_request(f"DICOM pixel data has shape {pixels.shape}; expected one grayscale frame (rows x columns)")
    try:
        shown = display_values(ds, pixels)
    except DicomError as exc:
        raise bad_request(str(exc)) from exc
    except Exception as exc:  # an inconsistent Modality or VOI LUT
        raise bad_request(f"cannot apply the DICOM file's Modality or VOI LUT: {exc}") from exc
    return Image.fromarray(np.round(shown * 255.0).astype(np.uint8), mode="L")


def decode_image(body: Any) -> Image.Image:
    """A request body (bytes) -> PIL image ('L', or 'RGB' when in colour); PredictionException(400) naming the
    problem otherwise."""
    if not body:
        raise bad_request("empty request body: send the image bytes (PNG, JPEG or DICOM)")
    if not isinstance(body, (bytes, bytearray)):
        raise bad_request(
            f"request body must be raw image bytes, got {type(body).__name__} "
            "(send Content-Type: application/octet-stream)"
        )
    body = bytes(body)
    if body[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return decode_dicom(body)
    return decode_picture(body)


class PneumoniaHandler(BaseHandler):
    """Serves one classifier checkpoint (or its export). `handle` answers each row of a batch on its own, a bad row
    with its own HTTP 400 (module docstring); the stages it uses are public so that they can be tested one by one."""

    def initialize(self, context: Any) -> None:
        """Load the .mar's classifier checkpoint on the GPU TorchServe assigned, else on the CPU."""
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        model_info = context.manifest["model"]
        self.model_pt_path = os.path.join(properties["model_dir"], model_info["serializedFile"])
        self.model, self.exported = None, None
        if os.path.splitext(self.model_pt_path)[1] in EXPORTED_SUFFIXES:  # `pneumonia export` artifact
            self.exported = load_exported(self.model_pt_path)
            self.config = self.exported.config
        else:
            self.model, self.config = load_classifier(self.model_pt_path, self.device)
        self.transform = classifier_transform(self.config, train=False)
        calibration, gate = self.config.get("calibration"), self.config.get("plausibility")
        self.calibration = Calibration.from_dict(calibration) if calibration else None
        self.gate = PlausibilityGate.from_dict(gate) if gate else None
        self.model_version = str(model_info.get("modelVersion", "unknown"))
        self.manifest = context.manifest
        self.initialized = True
        logger.info("loaded %s (version %s) on %s", self.model_pt_path, self.model_version, self.device)

    def check_plausible(self, image: Image.Image) -> None:
        """The model-free gate checks (size, aspect, grey, constant); PredictionException(400) on refusal."""
        if self.gate is not None:
            try:
                check_image(image, self.gate)
            except ImplausibleImageError as exc:
                raise implausible(exc) from exc

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        """Request rows -> batch, rows x in_channels x image_size x image_size (gate-checked images only): the
        stages `handle` applies row by row, for a batch of good rows (it raises on the first bad one)."""
        images = [decode_image(row.get("data") or row.get("body")) for row in data]
        for image in images:
            self.check_plausible(image)
        return torch.stack([self.transform(img.convert("L")) for img in images]).to(self.device)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch -> (logits rows x 2, penultimate features rows x D)."""
        if self.exported is not None:
            logits, features = self.exported.run(data)
            return torch.from_numpy(logits), torch.from_numpy(features)
        with torch.no_grad():
            return penultimate_features(self.model, data)

    def feature_refusals(self, features: torch.Tensor) -> dict[int, PredictionException]:
        """Rows whose features lie outside the training distribution (the gate's last check), by row index."""
        refusals: dict[int, PredictionException] = {}
        if self.gate is None:
            return refusals
        for i, row in enumerate(features.cpu().numpy()):
            try:
                check_features(row[None], self.gate)
            except ImplausibleImageError as exc:
                refusals[i] = implausible(exc)
        return refusals

    def postprocess(self, data: tuple[torch.Tensor, torch.Tensor]) -> list[dict[str, Any]]:
        """(logits, features) -> one JSON-able answer per row: calibrated P(pneumonia), label at the model's
        operating point (plain softmax and 0.5 for a model saved without calibration)."""
        logits = data[0].detach().double().cpu().numpy()
        threshold = decision_threshold(self.calibration)
        return [
            {
                "label": CLASS_NAMES[PNEUMONIA if p >= threshold else NORMAL],
                "pneumonia_probability": float(p),
                "model_version": self.model_version,
            }
            for p in calibrated_probability(logits, self.calibration)
        ]

    def explain_images(self, images: list[Image.Image]) -> list[tuple[bytes, float]]:
        """Grad-CAM of the pneumonia output for each image -> (heat map over the image as PNG bytes, calibrated
        P(pneumonia))."""
        if self.model is None:
            raise bad_request(
                f"explanations need the PyTorch checkpoint; this model is served from a {self.exported.format} export"
            )
        from shared.gradcam import gradcam_samples, heatmap_overlay  # pytorch-grad-cam is slow to import

        results = []
        for image, (_, heat, p) in zip(
            images, gradcam_samples(self.model, self.config, images, self.device), strict=True
        ):
            buffer = io.BytesIO()
            heatmap_overlay(image, heat).save(buffer, format="PNG")
            results.append((buffer.getvalue(), recalibrate(p, self.calibration)))
        return results

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Answer every row of a batch on its own: a prediction (JSON), an explanation (PNG) or a 400 error."""
        start = time.perf_counter()
        self.context = context
        rows = len(data)
        images: dict[int, Image.Image] = {}
        errors: dict[int, PredictionException] = {}
        for i, row in enumerate(data):
            try:
                images[i] = decode_image(row.get("data") or row.get("body"))
                self.check_plausible(images[i])
            except PredictionException as exc:
                errors[i] = exc
                images.pop(i, None)
        answers: list[Any] = [None] * rows
        explain = [i for i in images if _wants_explanation(context, i)]
        predict = [i for i in images if i not in explain]
        if predict:
            batch = torch.stack([self.transform(images[i].convert("L")) for i in predict]).to(self.device)
            logits, features = self.inference(batch)
            refused = {predict[j]: exc for j, exc in self.feature_refusals(features).items()}
            errors.update(refused)
            kept = [j for j, i in enumerate(predict) if i not in refused]
            if kept:
                for j, answer in zip(kept, self.postprocess((logits[kept], features[kept])), strict=True):
                    answers[predict[j]] = answer
        if rows == 1 and errors:  # a proper status for REST and gRPC alike
            raise errors[0]
        if explain:
            for i, (png, p) in zip(
                explain, self.explain_images([images[i].convert("L") for i in explain]), strict=True
            ):
                answers[i] = png
                _set_header(context, i, "content-type", PNG_CONTENT_TYPE)
                _set_header(context, i, PROBABILITY_HEADER, f"{p:.6f}")
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
