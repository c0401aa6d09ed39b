"""Pack a trained classifier checkpoint into a TorchServe model archive (.mar) with our handler.

    pneumonia archive-classifier --checkpoint models/baseline_resnet50.pth --model-name pneumonia --export-dir store

The .mar holds the checkpoint (its saved config gives the preprocessing), or a TorchScript / ONNX export of it
(`pneumonia export`, which carries the same config), services/classifier/handler.py and a
model-config.yaml with the server-side batching settings; TorchServe reads that file when the model is registered.
The handler imports `shared`, so the TorchServe that serves the archive runs in an environment with this project
installed (our classifier image, or the local .venv).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_packaging import generate_model_archive

from shared.errors import ConfigError
from shared.images import sha256_file
from shared.models.classifier import load_classifier
from shared.models.export import FORMATS as EXPORT_FORMATS
from shared.models.export import load_exported

HANDLER = Path(__file__).with_name("handler.py")
EXPORTED_SUFFIXES = frozenset(EXPORT_FORMATS.values())
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_BATCH_DELAY_MS = 50
DEFAULT_RESPONSE_TIMEOUT_S = 120


def check_model_name(name: str) -> str:
    """TorchServe model names go into URLs: letters, digits, '-' and '_' only (ConfigError otherwise)."""
    if not MODEL_NAME.match(name):
        raise ConfigError(f"invalid model name {name!r}: use 1-64 letters, digits, '-' or '_', starting alphanumeric")
    return name


def model_config_yaml(batch_size: int, max_batch_delay_ms: int, response_timeout_s: int) -> str:
    """TorchServe's per-model configuration (model-config.yaml): server-side batching and timeouts."""
    if batch_size < 1 or max_batch_delay_ms < 0 or response_timeout_s < 1:
        raise ConfigError("batch size and response timeout must be >= 1 and the batch delay >= 0")
    return (
        "minWorkers: 1\n"
        "maxWorkers: 1\n"
        f"batchSize: {batch_size}\n"
        f"maxBatchDelay: {max_batch_delay_ms}\n"
        f"responseTimeout: {response_timeout_s}\n"
    )


def build_model_archive(
    checkpoint: Path,
    export_dir: Path,
    model_name: str,
    version: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_delay_ms: int = DEFAULT_MAX_BATCH_DELAY_MS,
    response_timeout_s: int = DEFAULT_RESPONSE_TIMEOUT_S,
) -> Path:
    """Write `export_dir`/<model_name>.mar (replacing one there) and return its path.

    `version` defaults to the first 12 hex digits of the checkpoint's sha256, so the served model_version names
    the exact weights. The checkpoint is loaded first: a file that is not one of our classifiers is refused here,
    not when TorchServe first loads it.
    """
    check_model_name(model_name)
    if checkpoint.suffix in EXPORTED_SUFFIXES:  # a `pneumonia export` artifact: the handler serves it too
        load_exported(checkpoint)
    else:
        load_classifier(checkpoint, "cpu")  # CheckpointError for anything that is not a classifier checkpoint
    version = version or sha256_file(checkpoint)[:12]
    export_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp, "model-config.yaml")
        config_file.write_text(model_config_yaml(batch_size, max_batch_delay_ms, response_timeout_s))
        generate_model_archive(
            ModelArchiverConfig(
                model_name=model_name,
                handler=str(HANDLER),
                version=version,
                serialized_file=str(checkpoint),
                export_path=str(export_dir),
                config_file=str(config_file),
                force=True,
            )
        )
    return export_dir / f"{model_name}.mar"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="classifier checkpoint (.pth) or its export (.onnx, .torchscript)",
    )
    parser.add_argument("--model-name", default="pneumonia", help="TorchServe model name (the .mar's file name)")
    parser.add_argument("--export-dir", type=Path, default=Path("model-store"), help="where the .mar goes")
    parser.add_argument("--version", default=None, help="model version (default: checkpoint sha256, 12 digits)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="server-side batch size")
    parser.add_argument(
        "--max-batch-delay", type=int, default=DEFAULT_MAX_BATCH_DELAY_MS, help="ms to wait to fill a batch"
    )


def main(args: argparse.Namespace) -> int:
    path = build_model_archive(
        args.checkpoint, args.export_dir, args.model_name, args.version, args.batch_size, args.max_batch_delay
    )
    print(f"wrote {path}")
    return 0
