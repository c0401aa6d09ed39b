"""The serving logic both runtimes share, free of any server framework: a classifier checkpoint (or its export) in,
raw image bytes (PNG, JPEG, DICOM) in, answers and Grad-CAM PNGs out.

    predictor = Predictor.load(Path("model.pth"), version="1.0")
    images, errors = predictor.decode_rows([png_bytes, dicom_bytes])   # errors: {row: ServingError}
    results = predictor.predict_images(images)                         # {row: answer dict | ServingError}
    (png, p), = predictor.explain_images([images[0]])                  # Grad-CAM over the image, P(pneumonia)

The TorchServe handler (shared.serving.handler) and the Open Inference Protocol runtime (services.classifier.oip)
are thin front ends over this: the same decoding, plausibility gate, preprocessing (the checkpoint's saved config),
calibrated probability, label at the operating point and Grad-CAM. A refused row is a ServingError carrying the
HTTP status (400) and, for the plausibility gate, its reason code; each front end turns it into its own error.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError

from shared import layout
from shared.calibration import Calibration, calibrated_probability, decision_threshold, recalibrate
from shared.datasets.base import CLASS_NAMES, NORMAL, PNEUMONIA
from shared.dicom import DicomError, display_values, read_dicom
from shared.errors import PneumoniaError
from shared.images import MAX_BYTES_PER_PIXEL, MAX_IMAGE_PIXELS, sha256_file
from shared.models.classifier import classifier_transform, load_classifier, penultimate_features
from shared.models.ensemble import describe_model
from shared.models.export import FORMATS as EXPORT_FORMATS
from shared.models.export import load_exported
from shared.plausibility import GRAY_MODES, ImplausibleImageError, PlausibilityGate, check_features, check_image

logger = logging.getLogger(__name__)

BAD_REQUEST = 400
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
EXPORTED_SUFFIXES = frozenset(EXPORT_FORMATS.values())
VERSION_DIGITS = 12  # an unversioned model's version: the first digits of its file's sha256 (like the .mar's)
# Bytes a pixel takes once PIL has decoded it, by mode: one byte for 1, L and P, two for 16-bit grey, four for the
# rest (PIL keeps RGB, LA and the other multi-band modes in 32 bits a pixel, I and F too).
PIL_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


class ServingError(PneumoniaError):
    """A request row the model cannot answer: `status` is the HTTP status to give (400), `reason` the plausibility
    gate's reason code when the gate refused it (else None); the message says what is wrong."""

    def __init__(self, message: str, status: int = BAD_REQUEST, reason: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.reason = message, status, reason


def bad_request(message: str) -> ServingError:
    """An error to return to the client as HTTP 400 (gRPC INVALID_ARGUMENT) with `message`."""
    return ServingError(message, BAD_REQUEST)


def implausible(exc: ImplausibleImageError) -> ServingError:
    """HTTP 400 / gRPC INVALID_ARGUMENT for an input the plausibility gate refused; its reason code leads the
    message."""
    return ServingError(f"implausible input [{exc.reason}]: {exc}", BAD_REQUEST, exc.reason)


def check_pixel_count(
    width: int, height: int, frames: int = 1, bytes_per_pixel: int = 1, max_pixels: int = MAX_IMAGE_PIXELS
) -> None:
    """Refuse, before decoding it, an image too large to decode safely (a decompression bomb): more than `max_pixels`
    pixels (width x height x frames), or more than `max_pixels` x MAX_BYTES_PER_PIXEL bytes as the decoder allocates
    them (`bytes_per_pixel`: every sample of a pixel, at the size the decoder stores it)."""
    pixels = width * height * frames
    decoded, max_bytes = pixels * bytes_per_pixel, max_pixels * MAX_BYTES_PER_PIXEL
    if pixels > max_pixels or decoded > max_bytes:
        raise bad_request(
            f"image too large: {width} x {height} x {frames} pixels of {bytes_per_pixel} bytes ({decoded} bytes "
            f"decoded) exceeds the limit of {max_pixels} pixels, {max_bytes} bytes (decompression bomb?)"
        )


def dicom_bytes_per_pixel(ds: Any) -> int:
    """The bytes pydicom's pixel_array gives one pixel of `ds`: its samples at the bits allocated, rounded up to
    whole bytes (1-bit data is unpacked to one byte a sample)."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    return max(samples, 1) * max(1, -(-bits // 8))


def decode_picture(body: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """PNG / JPEG / any PIL format -> fully decoded image, grey ('L') or, if it has colour, 'RGB'; refused (400) when
    its header declares more than check_pixel_count allows."""
    try:
        # PIL warns between its MAX_IMAGE_PIXELS and twice that: check_pixel_count below decides (and refuses those
        # over `max_pixels`); PIL's own error, past twice its limit, stays a second guard.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(body))
    except UnidentifiedImageError as exc:
        raise bad_request("request body is not an image (expected PNG, JPEG or DICOM)") from exc
    except Image.DecompressionBombError as exc:
        raise bad_request(f"image too large (decompression bomb?): {exc}") from exc
    with img:
        frames = getattr(img, "n_frames", 1)
        check_pixel_count(img.width, img.height, frames, PIL_BYTES_PER_PIXEL.get(img.mode, 4), max_pixels)
        try:
            img.load()  # full decode, so a truncated file fails here
        except (OSError, SyntaxError, ValueError) as exc:
            raise bad_request(f"truncated or corrupt {img.format} image: {exc}") from exc
        return img.convert("L" if img.mode in GRAY_MODES else "RGB")  # colour stays visible to the gate


def decode_dicom(body: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """DICOM -> grayscale image of one frame as a viewer shows it (shared.dicom: Modality LUT, VOI window or LUT,
    MONOCHROME1), a deflated file's inflated size bounded as it is inflated (shared.dicom.read_dicom); refused (400)
    before its pixel data is decoded when its header declares more than check_pixel_count allows (its samples per
    pixel and bits allocated counted) or anything but one grayscale frame."""
    try:
        ds = read_dicom(body)
    except DicomError as exc:
        raise bad_request(str(exc)) from exc
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise bad_request(f"truncated or corrupt DICOM file: {exc}") from exc
    if "PixelData" not in ds:
        raise bad_request("DICOM file has no pixel data")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
    check_pixel_count(columns, rows, frames, dicom_bytes_per_pixel(ds), max_pixels)
    if frames != 1 or samples != 1:
        raise bad_request(
            f"DICOM file has {frames} frames of {samples} samples per pixel; expected one grayscale frame "
            "(rows x columns)"
        )
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


def decode_image(body: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A request body (bytes) -> PIL image ('L', or 'RGB' when in colour); ServingError(400) naming the problem
    otherwise, an image over `max_pixels` (check_pixel_count) before it is decoded."""
    if not body:
        raise bad_request("empty request body: send the image bytes (PNG, JPEG or DICOM)")
    if not isinstance(body, (bytes, bytearray)):
        raise bad_request(
            f"request body must be raw image bytes, got {type(body).__name__} "
            "(send Content-Type: application/octet-stream)"
        )
    body = bytes(body)
    if body[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return decode_dicom(body, max_pixels)
    return decode_picture(body, max_pixels)


def read_registry(folder: Path) -> dict[str, str] | None:
    """The registry entry (layout.REGISTRY_FILE: name, version, uri) in `folder`, or None; ServingError(500) for
    one that is not such an entry, so that a model never answers under a wrong name."""
    path = Path(folder) / layout.REGISTRY_FILE
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if not all(isinstance(entry.get(key), str) and entry[key] for key in ("name", "version", "uri")):
            raise ValueError("needs the strings name, version and uri")
    except ValueError as exc:
        raise ServingError(f"{path} is not a registry entry: {exc}", status=500) from exc
    return {key: entry[key] for key in ("name", "version", "uri")}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """One served classifier: a checkpoint (Grad-CAM available) or its ONNX / TorchScript export (predictions
    only), with the calibration and plausibility gate saved in its config."""

    def __init__(
        self,
        path: Path,
        version: str,
        device: torch.device,
        registered: dict[str, str] | None = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.path, self.version, self.device = Path(path), version, device
        self.max_pixels = max_pixels  # the largest image decode_rows decodes (check_pixel_count)
        self.registered = registered  # the MLflow registry version it is (layout.REGISTRY_FILE), when one says so
        self.model: torch.nn.Module | None = None
        self.exported: Any = None
        if self.path.suffix in EXPORTED_SUFFIXES:  # `pneumonia export` artifact
            self.exported = load_exported(self.path)
            self.config: dict[str, Any] = self.exported.config
        else:
            self.model, self.config = load_classifier(self.path, device)
        self.transform = classifier_transform(self.config, train=False)
        calibration, gate = self.config.get("calibration"), self.config.get("plausibility")
        self.calibration = Calibration.from_dict(calibration) if calibration else None
        self.gate = PlausibilityGate.from_dict(gate) if gate else None
        logger.info("loaded %s (version %s) on %s", self.path, self.version, self.device)

    @classmethod
    def load(
        cls,
        path: Path,
        version: str | None = None,
        device: torch.device | str | None = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> Predictor:
        """The model at `path` (.pth checkpoint, .onnx or .torchscript export); `version` defaults to the first
        12 hex digits of the file's sha256, `device` to CUDA when there is one; the registry version from
        layout.REGISTRY_FILE beside the file, when there is one; images over `max_pixels` are refused."""
        chosen = torch.device(device) if device is not None else default_device()
        path = Path(path)
        version = version or sha256_file(path)[:VERSION_DIGITS]
        return cls(path, version, chosen, read_registry(path.parent), max_pixels)

    @property
    def format(self) -> str:
        """'checkpoint', or the export's format ('onnx', 'torchscript')."""
        return "checkpoint" if self.exported is None else self.exported.format

    @property
    def explains(self) -> bool:
        """Whether Grad-CAM explanations are available (they need the PyTorch checkpoint)."""
        return self.model is not None

    # stages
    def check_plausible(self, image: Image.Image) -> None:
        """The model-free gate checks (size, aspect, grey, constant); ServingError(400) on refusal."""
        if self.gate is not None:
            try:
                check_image(image, self.gate)
            except ImplausibleImageError as exc:
                raise implausible(exc) from exc

    def decode_rows(self, bodies: list[Any]) -> tuple[dict[int, Image.Image], dict[int, ServingError]]:
        """Decode and gate-check every row on its own: ({row: image}, {row: error})."""
        images: dict[int, Image.Image] = {}
        errors: dict[int, ServingError] = {}
        for i, body in enumerate(bodies):
            try:
                image = decode_image(body, self.max_pixels)
                self.check_plausible(image)
            except ServingError as exc:
                errors[i] = exc
            else:
                images[i] = image
        return images, errors

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Images -> batch, rows x in_channels x image_size x image_size, on the model's device."""
        return torch.stack([self.transform(img.convert("L")) for img in images]).to(self.device)

    def infer(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch -> (logits rows x 2, penultimate features rows x D)."""
        if self.exported is not None:
            logits, features = self.exported.run(batch)
            return torch.from_numpy(logits), torch.from_numpy(features)
        assert self.model is not None
        with torch.no_grad():
            return penultimate_features(self.model, batch)

    def feature_refusals(self, features: torch.Tensor) -> dict[int, ServingError]:
        """Rows whose features lie outside the training distribution (the gate's last check), by row index."""
        refusals: dict[int, ServingError] = {}
        if self.gate is None:
            return refusals
        for i, row in enumerate(features.cpu().numpy()):
            try:
                check_features(row[None], self.gate)
            except ImplausibleImageError as exc:
                refusals[i] = implausible(exc)
        return refusals

    @property
    def threshold(self) -> float:
        """The operating point: P(pneumonia) at or above it is labelled pneumonia (0.5 without calibration)."""
        return float(decision_threshold(self.calibration))

    @property
    def operating_rule(self) -> str:
        """The rule the threshold follows, as a user states it (shared.operating_rule): "prevalence", "youden", ...;
        "0.5" for a model saved without calibration."""
        return str(self.calibration.rule) if self.calibration is not None else "0.5"

    @property
    def model_description(self) -> str:
        """What is served, in a few words: "fold-ensemble of 3 resnet18 models (...)" or "one resnet18 model"."""
        return describe_model(self.config)

    def answers(self, logits: torch.Tensor) -> list[dict[str, Any]]:
        """Logits -> one answer per row: calibrated P(pneumonia), label at the model's operating point (plain
        softmax and 0.5 for a model saved without calibration), that threshold and the rule that chose it, what the
        model is (a fold-ensemble or one model), its version, and the MLflow registry version when it names one."""
        values = logits.detach().double().cpu().numpy()
        threshold = self.threshold
        registry = {"registered_model": self.registered["uri"]} if self.registered else {}
        return [
            {
                "label": CLASS_NAMES[PNEUMONIA if p >= threshold else NORMAL],
                "pneumonia_probability": float(p),
                "decision_threshold": threshold,
                "operating_rule": self.operating_rule,
                "model": self.model_description,
                "model_version": self.version,
                **registry,
            }
            for p in calibrated_probability(values, self.calibration)
        ]

    # whole rows
    def predict_images(self, images: dict[int, Image.Image]) -> dict[int, dict[str, Any] | ServingError]:
        """Gate-checked images by row -> {row: answer, or the feature check's refusal}, in one forward pass."""
        if not images:
            return {}
        rows = list(images)
        logits, features = self.infer(self.preprocess([images[i] for i in rows]))
        results: dict[int, dict[str, Any] | ServingError] = {
            rows[j]: exc for j, exc in self.feature_refusals(features).items()
        }
        kept = [j for j, i in enumerate(rows) if i not in results]
        if kept:
            for j, answer in zip(kept, self.answers(logits[kept]), strict=True):
                results[rows[j]] = answer
        return results

    def explain_images(self, images: list[Image.Image]) -> list[tuple[bytes, float]]:
        """Grad-CAM of the pneumonia output for each image -> (heat map over the image as PNG bytes, calibrated
        P(pneumonia)); ServingError(400) for a model served from an export."""
        if self.model is None:
            raise bad_request(
                f"explanations need the PyTorch checkpoint; this model is served from a {self.format} export"
            )
        from shared.gradcam import gradcam_samples, heatmap_overlay  # pytorch-grad-cam is slow to import

        results = []
        grey = [image.convert("L") for image in images]
        for image, (_, heat, p) in zip(grey, gradcam_samples(self.model, self.config, grey, self.device), strict=True):
            buffer = io.BytesIO()
            heatmap_overlay(image, heat).save(buffer, format="PNG")
            results.append((buffer.getvalue(), recalibrate(p, self.calibration)))
        return results
