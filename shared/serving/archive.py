"""Pack a trained classifier checkpoint into a TorchServe model archive (.mar) with our handler.

The .mar holds the checkpoint (its saved config gives the preprocessing), or a TorchScript / ONNX export of it
(`pneumonia export`, which carries the same config), shared/serving/handler.py and a model-config.yaml with the
server-side batching settings; TorchServe reads that file when the model is registered. The handler imports
`shared`, so the TorchServe that serves the archive runs in an environment with this project installed (the
classifier image, or the local .venv). The trainer builds one after each classifier job; `pneumonia
archive-classifier` (services.classifier.archive) builds one by hand.
"""

from __future__ import annotations

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
