"""Portable classifier artifacts: TorchScript or ONNX, carrying the checkpoint's config (preprocessing, calibration).

    pneumonia export --model models/baseline_resnet50.pth --format onnx     # -> models/baseline_resnet50.onnx

The artifact computes the same logits (batch x 2) and penultimate features (batch x D, what the plausibility gate
measures) as the eager model, for any batch size, from the same preprocessed input (batch x channels x size x size);
the checkpoint's config — architecture, input size, channels, normalization
and, when the model was calibrated, its temperature and threshold — travels inside it (TorchScript: the extra file
config.json; ONNX: the metadata property `pneumonia_config`), so a server needs nothing else.
`load_exported(path)` gives back a predictor with the same interface for both formats.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.errors import CheckpointError
from shared.models.classifier import load_classifier
from shared.models.ensemble import FoldEnsemble

log = logging.getLogger(__name__)

FORMATS = {"torchscript": ".torchscript", "onnx": ".onnx"}
CONFIG_FILE = "config.json"  # TorchScript extra file
CONFIG_PROPERTY = "pneumonia_config"  # ONNX metadata property
INPUT_NAME, OUTPUT_NAMES = "image", ("logits", "features")
ONNX_OPSET = 18
EXAMPLE_BATCH = 2


class LogitsAndFeatures(torch.nn.Module):
    """A torchvision ResNet, or a fold-ensemble of them, that also returns its penultimate features:
    x -> (logits, features)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        if isinstance(model, FoldEnsemble):
            self.body: torch.nn.Module = model.body  # the members' features side by side
        else:
            self.body = torch.nn.Sequential(*list(model.children())[:-1])  # conv stem ... layer4, global average pool
        self.fc = model.fc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.flatten(self.body(x), 1)  # batch x D
        return self.fc(features), features  # batch x 2, batch x D


def example_input(config: dict[str, Any], batch: int = EXAMPLE_BATCH) -> torch.Tensor:
    """A batch shaped like the model's preprocessed input: batch x channels x size x size."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, config["in_channels"], config["image_size"], config["image_size"], generator=generator)


def export_torchscript(model: torch.nn.Module, config: dict[str, Any], path: Path) -> None:
    """Trace the model (ResNets have no data-dependent control flow) and save it with config.json inside."""
    with torch.no_grad():
        traced = torch.jit.trace(LogitsAndFeatures(model).eval(), example_input(config))
    torch.jit.save(traced, str(path), _extra_files={CONFIG_FILE: json.dumps(config)})


def export_onnx(model: torch.nn.Module, config: dict[str, Any], path: Path) -> None:
    """Export with the dynamo exporter, a dynamic batch dimension, and the config as a metadata property."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress chatter
        program = torch.onnx.export(
            LogitsAndFeatures(model).eval(),
            (example_input(config),),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"x": {0: batch}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    proto.metadata_props.add(key=CONFIG_PROPERTY, value=json.dumps(config))
    onnx.save(proto, str(path))


def export_classifier(checkpoint: Path, fmt: str, out: Path | None = None) -> Path:
    """Write the checkpoint's classifier as `fmt` next to it (or to `out`); return the artifact's path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    model, config = load_classifier(checkpoint, "cpu")
    model.eval()
    out = out or checkpoint.with_suffix(FORMATS[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    (export_torchscript if fmt == "torchscript" else export_onnx)(model, config, tmp)
    tmp.replace(out)  # no half-written artifact under the final name
    return out


class ExportedClassifier:
    """An exported artifact: `config` (the checkpoint's) and `run(batch)` -> (logits, features) for a preprocessed
    float32 batch."""

    def __init__(
        self, config: dict[str, Any], run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], fmt: str
    ) -> None:
        self.config = config
        self.format = fmt
        self._run = run

    def run(self, batch: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """batch x channels x size x size -> (batch x 2 logits, batch x D features), numpy float32."""
        array = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        return self._run(np.ascontiguousarray(array, dtype=np.float32))

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """batch x channels x size x size -> batch x 2 logits."""
        return self.run(batch)[0]


def load_exported(path: str | Path, threads: int | None = None) -> ExportedClassifier:
    """Load a .torchscript or .onnx artifact written by export_classifier; CheckpointError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exported model not found: {path}")
    if path.suffix == FORMATS["torchscript"]:
        files = {CONFIG_FILE: ""}
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} is not a TorchScript model: {exc}") from exc
        if not files[CONFIG_FILE]:
            raise CheckpointError(f"{path} carries no {CONFIG_FILE}: not written by `pneumonia export`")
        module.eval()

        def run_torchscript(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.no_grad():
                logits, features = module(torch.from_numpy(array))
            return logits.numpy(), features.numpy()

        return ExportedClassifier(json.loads(files[CONFIG_FILE]), run_torchscript, "torchscript")
    if path.suffix == FORMATS["onnx"]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise CheckpointError(f"{path} is not an ONNX model: {exc}") from exc
        metadata = session.get_modelmeta().custom_metadata_map
        if CONFIG_PROPERTY not in metadata:
            raise CheckpointError(f"{path} carries no {CONFIG_PROPERTY}: not written by `pneumonia export`")

        def run_onnx(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            logits, features = session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
            return logits, features

        return ExportedClassifier(json.loads(metadata[CONFIG_PROPERTY]), run_onnx, "onnx")
    raise CheckpointError(f"{path}: unknown artifact type (expected {' or '.join(FORMATS.values())})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="classifier checkpoint (train-classifier)")
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx", help="artifact format")
    parser.add_argument("--output", type=Path, default=None, help="artifact path (default: next to the model)")


def main(args: argparse.Namespace) -> int:
    path = export_classifier(args.model, args.format, args.output)
    print(f"wrote {path}")
    return 0
