"""Pack a trained classifier checkpoint into a TorchServe model archive (.mar) with our handler.

    pneumonia archive-classifier --checkpoint models/baseline_resnet50.pth --model-name pneumonia --export-dir store

The builder and the handler it packs live in shared.serving (the trainer builds the same archive after each job).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.serving.archive import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY_MS, build_model_archive


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
