"""Classifier training speed on this machine: the ways one could train the same ResNet-18 faster, side by side.

Each row trains the same number of optimizer steps on real images and prints images per second and the ratio to the
first row (today's path: PIL images through torchvision transforms in a DataLoader, fp32). The rows add, one at a
time: images held in memory as one tensor with the augmentation applied to the whole batch (affine_grid), bf16
autocast (CPUs with avx512_bf16 / AMX), channels_last, and a cheaper stem (stride-1 conv + max-pool: 14 x 14 maps
after the stem instead of 28 x 28). The modes take turns in several rounds, so that a slow minute hits all of them.

    .venv/bin/python bench/classifier_training_speed.py --data-dir ../shared/data/pneumoniamnist
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from shared.datasets import TorchImageDataset, load_dataset
from shared.models.classifier import GRAY_MEAN, GRAY_STD, build_classifier, classifier_config, classifier_transform


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    return parser


def resnet(maxpool: bool, channels_last: bool) -> nn.Module:
    model = build_classifier("resnet18", 2, 1, 28, "none")
    if maxpool:
        model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def pil_batches(images, batch_size: int) -> DataLoader:
    config = classifier_config("resnet18", 1, 28, "baseline", "none")
    return DataLoader(TorchImageDataset(images, classifier_transform(config, train=True)), batch_size, shuffle=True)


def random_affine(batch: torch.Tensor) -> torch.Tensor:
    """classifier_transform's augmentation for a whole batch (B x 1 x S x S in [0, 1]): rotation up to 10 degrees,
    shifts up to 5%, zoom 0.9-1.1, black outside, as one affine_grid + grid_sample."""
    u = torch.rand(batch.shape[0], 4)
    angle, zoom = (u[:, 0] * 2 - 1) * math.radians(10), 0.9 + 0.2 * u[:, 1]
    shift = (u[:, 2:] * 2 - 1) * 0.1  # grid coordinates span 2: 5% of the side is 0.1
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )  # B x 2 x 3
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, padding_mode="zeros", align_corners=False)


def collate_in_memory(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.stack([p for p, _ in items]).float() / 255  # B x 1 x S x S
    return (random_affine(pixels) - GRAY_MEAN[0]) / GRAY_STD[0], torch.stack([label for _, label in items])


def tensor_batches(images, batch_size: int) -> DataLoader:
    """The images decoded once into one uint8 tensor, augmented a batch at a time."""
    pixels = torch.from_numpy(np.stack([np.asarray(images.load(i)) for i in range(len(images))])[:, None])
    dataset = TensorDataset(pixels, torch.from_numpy(images.labels))
    return DataLoader(dataset, batch_size, shuffle=True, collate_fn=collate_in_memory)


def measure(model: nn.Module, batches, steps: int, bf16: bool, channels_last: bool) -> float:
    """Images per second over `steps` optimizer steps (after one warm-up step)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen, started, it = 0, 0.0, iter(batches)
    for step in range(steps + 1):
        try:
            images, labels = next(it)
        except StopIteration:
            it = iter(batches)
            images, labels = next(it)
        if step == 1:
            started, seen = time.perf_counter(), 0
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen / (time.perf_counter() - started)


def main(args: argparse.Namespace) -> None:
    images = load_dataset(args.dataset, args.data_dir).labelled.subset(np.arange(2048))
    modes = {
        "PIL + DataLoader, fp32 (the old path)": (pil_batches, False, False, False),
        "in-memory tensors + batch augmentation, fp32": (tensor_batches, False, False, False),
        "  + bf16 autocast": (tensor_batches, True, False, False),
        "  + channels_last": (tensor_batches, False, True, False),
        "  + bf16 + channels_last": (tensor_batches, True, True, False),
        "PIL + DataLoader, max-pool stem (14 x 14 maps)": (pil_batches, False, False, True),
        "in-memory tensors, max-pool stem": (tensor_batches, False, False, True),
        "in-memory tensors, max-pool stem + bf16 autocast": (tensor_batches, True, False, True),
        "in-memory tensors, max-pool stem + channels_last": (tensor_batches, False, True, True),
    }
    rates: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, (source, bf16, channels_last, maxpool) in modes.items():
            torch.manual_seed(0)
            model = resnet(maxpool, channels_last)
            rates[name].append(measure(model, source(images, args.batch_size), args.steps, bf16, channels_last))
    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; ResNet-18, 28 px, "
        f"1 channel, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds (median)\n"
    )
    first = float(np.median(rates[next(iter(modes))]))
    print("| mode | images/s | ratio to the old path |\n| --- | --- | --- |")
    for name, values in rates.items():
        rate = float(np.median(values))
        print(f"| {name} | {rate:.0f} | {rate / first:.2f} |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
