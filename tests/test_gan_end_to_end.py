"""Phantom chest X-rays -> a short GAN run -> synthetic images, through the `pneumonia` command."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main as pneumonia
from services.generator.generate_synthetic import load_generator
from shared.checkpoints import load_checkpoint
from shared.datasets import PNEUMONIA, load_dataset
from shared.images import sha256_file
from shared.models.dcgan import Generator, for_inference
from shared.quality import pixel_frechet_distance
from shared.splits import develop_and_holdout

GAN_FLAGS = [
    "--image-size", "32", "--num-channels", "1", "--latent-dim", "32", "--feature-maps-g", "16",
    "--feature-maps-d", "16", "--batch-size", "8", "--lr", "0.0005", "--workers", "0", "--vis-batch-size", "16",
    "--cpu",
]  # fmt: skip


def train_gan(data: Path, work: Path, *extra: str) -> None:
    argv = ["train-gan", "--dataset", "phantom", "--data-dir", str(data), "--model-dir", str(work / "models"),
            "--output-dir", str(work / "results"), "--results-dir", str(work / "results/metrics"),
            "--figures-dir", str(work / "results/figures"), *GAN_FLAGS, *extra]  # fmt: skip
    assert pneumonia(argv) == 0


def generate(model: Path, out: Path, seed: int) -> None:
    argv = ["generate-synthetic", "--model-path", str(model), "--output-dir", str(out), "--num-images", "64",
            "--batch-size", "24", "--seed", str(seed), "--layout", "png", "--cpu"]  # fmt: skip
    assert pneumonia(argv) == 0


def as_array(paths: list[Path]) -> np.ndarray:
    """Images as N x H x W floats in [0, 1]."""
    return np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float64) / 255 for p in paths])


@pytest.fixture(scope="module")
def trained(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("gan-e2e")
    train_gan(phantom_dir, work, "--epochs", "8")
    return work


def test_gan_writes_every_output_and_a_usable_generator(trained: Path) -> None:
    assert len(list((trained / "results/gan_images").glob("epoch_*.png"))) == 8
    for name in ("gan_loss_curve.png", "gan_real_vs_synthetic.png"):
        Image.open(trained / "results/figures" / name).load()
    assert (trained / "results/metrics/gan_training_history.json").is_file()
    generator, config = load_generator(trained / "models/gan/generator_final.pth", torch.device("cpu"))
    assert config["label"] == PNEUMONIA and config["image_size"] == 32


def test_generation_is_deterministic_and_the_manifest_matches(trained: Path, tmp_path: Path) -> None:
    model = trained / "models/gan/generator_final.pth"
    generate(model, tmp_path / "a", seed=3)
    generate(model, tmp_path / "b", seed=3)
    generate(model, tmp_path / "c", seed=4)
    a, b, c = (sorted((tmp_path / d).glob("*.png")) for d in "abc")
    assert len(a) == 64
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]
    with open(tmp_path / "a/manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(row["file"] for row in rows) == [p.name for p in a]
    assert {row["generator_sha256"] for row in rows} == {sha256_file(model)}
    assert {row["label"] for row in rows} == {str(PNEUMONIA)} and {row["seed"] for row in rows} == {"3"}
    for path in a[:5]:
        with Image.open(path) as image:
            image.load()
            assert image.size == (32, 32) and image.mode == "L"


def test_trained_generator_is_closer_to_real_pneumonia_images_than_an_untrained_one(
    trained: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    develop, _ = develop_and_holdout(load_dataset("phantom", phantom_dir))
    positives = develop.subset(np.flatnonzero(develop.labels == PNEUMONIA))
    real = np.stack([np.asarray(positives.load(i).resize((32, 32)), dtype=np.float64) / 255 for i in range(64)])

    generate(trained / "models/gan/generator_final.pth", tmp_path / "trained", seed=0)
    config = load_checkpoint(trained / "models/gan/generator_final.pth", "dcgan-generator")["config"]
    torch.manual_seed(0)
    untrained = for_inference(Generator.from_config(config), seed=0)
    with torch.no_grad():
        noise = untrained(torch.randn(64, config["latent_dim"]))  # 64 x 1 x 32 x 32 in [-1, 1]
    untrained_images = ((noise[:, 0].numpy() + 1) / 2).clip(0, 1)

    trained_distance = pixel_frechet_distance(real, as_array(sorted((tmp_path / "trained").glob("*.png"))))
    untrained_distance = pixel_frechet_distance(real, untrained_images)
    assert trained_distance < 0.6 * untrained_distance


def test_a_killed_run_resumes_to_the_same_weights(phantom_dir: Path, tmp_path: Path) -> None:
    train_gan(phantom_dir, tmp_path / "straight", "--epochs", "2", "--max-images", "48")
    train_gan(phantom_dir, tmp_path / "killed", "--epochs", "1", "--max-images", "48")  # as if killed after epoch 1
    train_gan(phantom_dir, tmp_path / "killed", "--epochs", "2", "--max-images", "48", "--resume")
    straight = load_checkpoint(tmp_path / "straight/models/gan/checkpoint_last.pth", "gan-training-state")
    resumed = load_checkpoint(tmp_path / "killed/models/gan/checkpoint_last.pth", "gan-training-state")
    for network in ("generator", "discriminator"):
        for name, tensor in straight[network].items():
            assert torch.equal(tensor, resumed[network][name]), f"{network}.{name}"
