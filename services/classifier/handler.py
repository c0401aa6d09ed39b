"""TorchServe handler for the pneumonia classifier: PNG, JPEG or DICOM chest X-ray in, P(pneumonia) out.

The .mar's serialized file is one of our classifier checkpoints (`save_classifier`); its saved config gives the
preprocessing, so the served model sees exactly what it saw in evaluation. Each answer is
{"label": "pneumonia" | "normal", "pneumonia_probability": float, "model_version": str}.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from typing import Any

import numpy as np
import pydicom
import torch
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from shared.datasets.base import CLASS_NAMES, NORMAL, PNEUMONIA
from shared.images import MAX_IMAGE_PIXELS
from shared.models.classifier import classifier_transform, load_classifier

logger = logging.getLogger(__name__)

BAD_REQUEST = 400
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
THRESHOLD = 0.5


def bad_request(message: str) -> PredictionException:
    """An error TorchServe returns to the client as HTTP 400 with `message`."""
    return PredictionException(message, BAD_REQUEST)


def check_pixel_count(width: int, height: int, frames: int = 1) -> None:
    """Refuse images too large to decode safely (decompression bombs), before decoding them."""
    if width * height * frames > MAX_IMAGE_PIXELS:
        raise bad_request(
            f"image too large: {width} x {height} x {frames} pixels exceeds the limit of {MAX_IMAGE_PIXELS} "
            "(decompression bomb?)"
        )


def decode_picture(body: bytes) -> Image.Image:
    """PNG / JPEG / any PIL format -> fully decoded grayscale image."""
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
        return img.convert("L")


def decode_dicom(body: bytes) -> Image.Image:
    """DICOM -> grayscale image: one frame, MONOCHROME1 inverted, rescaled to 0..255 by its min and max."""
    try:
        ds = pydicom.dcmread(io.BytesIO(body), force=False)
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
    pixels = pixels.astype(np.float64)
    low, high = pixels.min(), pixels.max()
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # MONOCHROME1: low values are white
        scaled = 255.0 - scaled
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def decode_image(body: Any) -> Image.Image:
    """A request body (bytes) -> grayscale PIL image; PredictionException(400) naming the problem otherwise."""
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
    """Serves one classifier checkpoint. One bad request row fails the whole batch with HTTP 400: TorchServe's
    handler contract returns either one answer per row or a single error."""

    def initialize(self, context: Any) -> None:
        """Load the .mar's classifier checkpoint on the GPU TorchServe assigned, else on the CPU."""
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        model_info = context.manifest["model"]
        self.model_pt_path = os.path.join(properties["model_dir"], model_info["serializedFile"])
        self.model, self.config = load_classifier(self.model_pt_path, self.device)
        self.transform = classifier_transform(self.config, train=False)
        self.model_version = str(model_info.get("modelVersion", "unknown"))
        self.manifest = context.manifest
        self.initialized = True
        logger.info("loaded %s (version %s) on %s", self.model_pt_path, self.model_version, self.device)

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        """Request rows -> batch, rows x in_channels x image_size x image_size."""
        images = [decode_image(row.get("data") or row.get("body")) for row in data]
        return torch.stack([self.transform(img) for img in images]).to(self.device)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Batch -> P(pneumonia) per row."""
        with torch.no_grad():
            return torch.softmax(self.model(data), dim=1)[:, PNEUMONIA]

    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        """P(pneumonia) per row -> one JSON-able answer per row."""
        return [
            {
                "label": CLASS_NAMES[PNEUMONIA if p >= THRESHOLD else NORMAL],
                "pneumonia_probability": p,
                "model_version": self.model_version,
            }
            for p in data.cpu().tolist()
        ]
