"""The Open Inference Protocol runtime's settings, tensor names and model directory, without kserve: clients and
tests import these (tritonclient's gRPC stubs and kserve's register the same protobuf names, so one process cannot
import both). services.classifier.oip is the server.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import field_validator
from pydantic_settings import NoDecode

from shared import layout
from shared.errors import ConfigError
from shared.images import MAX_IMAGE_PIXELS
from shared.serving.archive import check_model_name
from shared.serving.predictor import EXPORTED_SUFFIXES, Predictor
from shared.settings import Device, Port, Settings, comma_list, env_prefix, setting

IMAGE_INPUT = "image"
PROBABILITY_OUTPUT = "pneumonia_probability"
LABEL_OUTPUT = "label"
GRADCAM_OUTPUT = "gradcam_png"
EXPLAIN_PARAMETER = "explain"
ARCHIVE_SUFFIX = ".mar"
MODEL_SUFFIXES = frozenset({".pth", ARCHIVE_SUFFIX, *EXPORTED_SUFFIXES})
MAR_MANIFEST = "MAR-INF/MANIFEST.json"
MAX_MESSAGE_BYTES = 64 << 20
# Images one request may carry: the runtime keeps every decoded image of a request until it answers (up to
# MAX_IMAGE_PIXELS bytes each as grey, 21 MB), so 32 of them hold ~0.7 GB at most; clients send one image or a few.
MAX_IMAGES = 32
# Requests decoded and answered at once: each decodes its images one by one (a 16-bit DICOM at the pixel limit peaks
# near 570 MB while decoded) and keeps them until answered; 2 overlap decoding with inference and keep the worst case
# (2 x (0.7 GB + 0.6 GB)) inside the 4 GiB the Kubernetes InferenceService gives the runtime, with the model.
MAX_CONCURRENT_DECODES = 2


class OipConfig(Settings, alias_generator=env_prefix("PNEUMONIA_OIP_")):
    """The Open Inference Protocol runtime's settings, one field per PNEUMONIA_OIP_* variable."""

    host: str = setting("127.0.0.1", "address of the REST and gRPC APIs (0.0.0.0 in a container)")
    http_port: Port = setting(8085, "v2 REST (/v2/...)")
    grpc_port: Port = setting(8086, "v2 gRPC (inference.GRPCInferenceService)")
    model_dir: Path = setting(Path("/mnt/models"), "where models are read from (never written): <name>.mar or <name>/")
    models: Annotated[tuple[str, ...], NoDecode] = setting(
        (), "models loaded at start, comma-separated names", kind="comma-separated list", shown_default="every entry"
    )
    device: Device = setting("auto", "where the models run (auto: CUDA when there is one)")
    max_message_bytes: int = setting(
        MAX_MESSAGE_BYTES, "largest request (REST body, gRPC message) and gRPC answer, in bytes", ge=1 << 20
    )
    grace: int = setting(30, "seconds requests in flight get to finish on SIGTERM", ge=0)
    max_image_pixels: int = setting(
        MAX_IMAGE_PIXELS,
        "most pixels of one image (width x height x frames; 4608 x 4608 admits the largest chest radiographs, "
        "~4300 x 4300), and at most 4 bytes a pixel once decoded (samples per pixel and bits allocated counted): "
        "a larger image is refused with 400 / INVALID_ARGUMENT before it is decoded",
        ge=1,
    )
    max_images: int = setting(
        MAX_IMAGES,
        "most images (elements of the input 'image') one request may carry; more: 400 / INVALID_ARGUMENT before any "
        "is decoded (a request keeps its decoded images until it is answered)",
        ge=1,
    )
    max_concurrent_decodes: int = setting(
        MAX_CONCURRENT_DECODES,
        "requests whose images are decoded and answered at once; the others wait their turn (memory holds at most "
        "this many requests' decoded images)",
        ge=1,
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        for name in models:
            try:
                check_model_name(name)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return models


# ----------------------------------------------------------------------------------------------- the model directory


def model_file(model_dir: Path, name: str) -> Path:
    """The file model `name` is served from: <dir>/<name>.mar, else the one model file in <dir>/<name>/;
    ConfigError saying what is there instead."""
    check_model_name(name)
    archive = model_dir / f"{name}{ARCHIVE_SUFFIX}"
    if archive.is_file():
        return archive
    folder = model_dir / name
    if not folder.is_dir():
        raise ConfigError(f"no model {name!r} in {model_dir}: expected {archive.name} or a directory {name}/")
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES)
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise ConfigError(
            f"{folder} must hold exactly one model file ({', '.join(sorted(MODEL_SUFFIXES))}); found {found}"
        )
    return candidates[0]


def model_names(model_dir: Path) -> list[str]:
    """The models the directory holds: <name>.mar files and <name>/ directories."""
    if not model_dir.is_dir():
        raise ConfigError(f"model directory {model_dir} does not exist")
    names = {p.stem for p in model_dir.glob(f"*{ARCHIVE_SUFFIX}") if p.is_file()}
    names |= {p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(names)


def unpack_archive(archive: Path, into: Path) -> tuple[Path, str]:
    """The model file inside one of our .mar archives, extracted to `into`, and the archive's model version."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            manifest = json.loads(zipped.read(MAR_MANIFEST))["model"]
            serialized = manifest["serializedFile"]
            if Path(serialized).name != serialized or Path(serialized).suffix not in MODEL_SUFFIXES - {ARCHIVE_SUFFIX}:
                raise ConfigError(f"{archive}: unexpected serialized file {serialized!r}")
            target = into / serialized
            target.write_bytes(zipped.read(serialized))
            if layout.REGISTRY_FILE in zipped.namelist():  # the registry version it is (pipeline.tracking)
                (into / layout.REGISTRY_FILE).write_bytes(zipped.read(layout.REGISTRY_FILE))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{archive} is not a model archive of ours: {exc}") from exc
    return target, str(manifest.get("modelVersion") or "unknown")


def load_predictor(model_dir: Path, name: str, device: str | None, max_pixels: int = MAX_IMAGE_PIXELS) -> Predictor:
    """The Predictor of model `name` of the directory (an archive is unpacked into a private temporary directory),
    refusing images over `max_pixels`."""
    path = model_file(model_dir, name)
    chosen = None if device in (None, "auto") else device
    if path.suffix != ARCHIVE_SUFFIX:
        return Predictor.load(path, device=chosen, max_pixels=max_pixels)
    with tempfile.TemporaryDirectory(prefix="oip-") as tmp:
        inner, version = unpack_archive(path, Path(tmp))
        return Predictor.load(inner, version, chosen, max_pixels)
