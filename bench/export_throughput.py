"""Classifier inference: eager PyTorch vs TorchScript vs ONNX Runtime, side by side, with parity on real images.

    .venv/bin/python bench/export_throughput.py --model models/baseline_resnet18.pth \
        --data-dir ../shared/data/pneumoniamnist

Exports the checkpoint to both formats (in a temporary directory), preprocesses real images exactly as evaluation
does, then for each batch size times the three runtimes on the same batches (after a warm-up) and reports images/s,
the ratio to eager, and the largest absolute logit difference from eager over every image. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shared.datasets import load_dataset
from shared.models.classifier import classifier_transform, load_classifier
from shared.models.export import export_classifier, load_exported


def images_per_second(run, batches: list[torch.Tensor], repeats: int) -> float:
    run(batches[0])  # warm-up (allocations, ONNX Runtime's first-run optimizations)
    start = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            run(batch)
    return repeats * sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="classifier checkpoint")
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--num-images", type=int, default=512, help="real images per measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    model, config = load_classifier(args.model, "cpu")
    model.eval()
    transform = classifier_transform(config, train=False)
    images = load_dataset(args.dataset, args.data_dir).labelled
    inputs = torch.stack([transform(images.load(i)) for i in range(min(args.num_images, len(images)))])

    with tempfile.TemporaryDirectory() as tmp:
        exported = {
            fmt: load_exported(export_classifier(args.model, fmt, Path(tmp) / f"model.{fmt}"))
            for fmt in ("torchscript", "onnx")
        }

        def eager(batch: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return model(batch).numpy()

        runtimes = {"eager": eager, **{fmt: artifact.logits for fmt, artifact in exported.items()}}
        reference = eager(inputs)
        parity = {name: float(np.abs(run(inputs) - reference).max()) for name, run in runtimes.items()}

        print(
            f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads "
            f"{torch.get_num_threads()}; {config['arch']} at {config['image_size']} px, {config['in_channels']} "
            f"channel(s); {len(inputs)} real {args.dataset} images per measurement, {args.repeats} repeats\n"
        )
        print("| batch size | eager (img/s) | TorchScript (img/s) | ONNX Runtime (img/s) | TorchScript / eager "
              "| ONNX Runtime / eager |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- |")
        for size in args.batch_sizes:
            batches = list(torch.split(inputs, size))
            rates = {name: images_per_second(run, batches, args.repeats) for name, run in runtimes.items()}
            print(
                f"| {size} | {rates['eager']:,.0f} | {rates['torchscript']:,.0f} | {rates['onnx']:,.0f} "
                f"| {rates['torchscript'] / rates['eager']:.2f} | {rates['onnx'] / rates['eager']:.2f} |"
            )
        print(
            f"\nmax |logit - eager logit| over {len(inputs)} images: TorchScript {parity['torchscript']:.2e}, "
            f"ONNX Runtime {parity['onnx']:.2e}"
        )


if __name__ == "__main__":
    main()
