"""Test helpers shared by the training test modules: tiny train-gan and train-classifier runs, a synthetic folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cli import build_parser
from shared.configs import ClassifierTrainingConfig, GanTrainingConfig
from shared.images import save_png
from shared.synthetic import ManifestRow, write_manifest

SIZE = 16  # the tiny GAN's image side
MAX_IMAGES = 40  # the tiny classifier runs' development subset


def output_args(root: Path) -> list[str]:
    """train-classifier's output folders (and its synthetic folder) under `root`."""
    return [
        "--synthetic-dir", str(root / "synthetic"), "--model-dir", str(root / "models"),
        "--results-dir", str(root / "metrics"), "--figures-dir", str(root / "figures"),
    ]  # fmt: skip


def gan_argv(npz: Path, work: Path, *extra: str) -> list[str]:
    """A tiny run: 16 px, one channel, narrow networks, in-process loading, on the CPU."""
    return [
        "--dataset", "pneumoniamnist", "--data-dir", str(npz),
        "--model-dir", str(work / "models"), "--output-dir", str(work / "results"),
        "--results-dir", str(work / "results/metrics"), "--figures-dir", str(work / "results/figures"),
        "--image-size", str(SIZE), "--num-channels", "1", "--feature-maps-g", "8", "--feature-maps-d", "8",
        "--latent-dim", "16", "--batch-size", "8", "--vis-batch-size", "8", "--workers", "0", "--cpu",
        *extra,
    ]  # fmt: skip


def gan_options(argv: list[str]) -> GanTrainingConfig:
    return GanTrainingConfig.from_argv(argv)


FAST = [
    "--dataset", "phantom", "--arch", "resnet18", "--weights", "none", "--unfreeze", "--image-size", "16",
    "--channels", "1", "--epochs", "2", "--batch-size", "20", "--max-images", str(MAX_IMAGES), "--workers", "0",
    "--cpu",
]  # fmt: skip


def classifier_options(argv: list[str]) -> ClassifierTrainingConfig:
    """The config `pneumonia train-classifier ...` (argv[0] is the subcommand) trains with."""
    return ClassifierTrainingConfig.from_args(build_parser().parse_args(argv))


def write_synthetic_folder(directory: Path, count: int) -> Path:
    """PNGs plus manifest.csv, the layout `pneumonia generate-synthetic` writes; half of each class."""
    rng = np.random.default_rng(3)
    rows = []
    for index in range(count):
        name = f"synthetic_{index:04d}.png"
        save_png(rng.integers(0, 256, (32, 32), dtype=np.uint8), directory / name)
        rows.append(ManifestRow(file=name, label=index % 2, seed=3, index=index, generator_sha256="0" * 64))
    write_manifest(directory, rows)
    return directory
