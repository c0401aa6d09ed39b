"""`pneumonia train-gan`: outputs, data selection, exact resume, refusals, and that training helps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import SIZE, gan_argv, gan_options

from pipeline import cli
from services.generator.generate_synthetic import generate_images
from services.trainer import train_gan
from services.trainer.hooks import TrainingStopped
from shared.checkpoints import load_checkpoint, save_checkpoint
from shared.configs import GanTrainingConfig
from shared.diversity import collapse_suspected, mean_pairwise_ms_ssim
from shared.errors import CheckpointError, ConfigError
from shared.models.dcgan import Generator
from shared.quality import pixel_frechet_distance
from shared.synthetic import load_synthetic


def parse_cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_gan.add_arguments(parser)
    return parser.parse_args(argv)


def train(npz: Path, work: Path, *extra: str) -> int:
    return train_gan.main(parse_cli(gan_argv(npz, work, *extra)))


DIVERSITY_KEYS = {"ms_ssim_synthetic", "ms_ssim_synthetic_se", "ms_ssim_real"}


def test_train_gan_writes_every_output(blob_npz: Path, tmp_path: Path) -> None:
    assert cli.main(["train-gan", *gan_argv(blob_npz, tmp_path, "--epochs", "2")]) == 0

    generator = load_checkpoint(tmp_path / "models/gan/generator_final.pth", "dcgan-generator")
    config = generator["config"]
    assert {k: config[k] for k in ("latent_dim", "feature_maps_g", "image_size", "num_channels")} == {
        "latent_dim": 16, "feature_maps_g": 8, "image_size": SIZE, "num_channels": 1,
    }  # fmt: skip
    assert config["num_classes"] == 0 and config["conditional"] is False
    assert config["train_on"] == "positive" and config["label"] == 1  # unconditional: its images are pneumonia
    assert (config["loss"], config["dataset"], config["seed"], config["epochs"]) == ("bce", "pneumoniamnist", 0, 2)
    Generator(16, 8, 1, SIZE).load_state_dict(generator["state_dict"])
    discriminator = load_checkpoint(tmp_path / "models/gan/discriminator_final.pth", "dcgan-discriminator")
    assert discriminator["config"] == config
    last = load_checkpoint(tmp_path / "models/gan/checkpoint_last.pth", train_gan.TRAINING_STATE)
    assert last["epoch"] == 2 and len(last["history"]) == 2

    for epoch in (1, 2):  # 8 images in one row of 16 px tiles with 2 px padding
        with Image.open(tmp_path / f"results/gan_images/epoch_{epoch:03d}.png") as grid:
            grid.load()
            assert grid.size == (8 * (SIZE + 2) + 2, SIZE + 4)

    history = json.loads((tmp_path / "results/metrics/gan_training_history.json").read_text())
    assert history["config"] == config
    assert [row["epoch"] for row in history["epochs"]] == [1, 2]
    for row in history["epochs"]:
        assert set(row) == {"epoch", "loss_d", "loss_g", "d_real", "d_fake", "seconds"} | DIVERSITY_KEYS
        assert 0 < row["ms_ssim_synthetic"] <= 1 and 0 < row["ms_ssim_real"] <= 1
        assert np.isfinite([row["loss_d"], row["loss_g"]]).all() and row["seconds"] > 0
        assert 0 < row["d_real"] < 1 and 0 < row["d_fake"] < 1  # mean discriminator probabilities

    with Image.open(tmp_path / "results/figures/gan_loss_curve.png") as curve:
        curve.load()
        assert curve.width > 100
    with Image.open(tmp_path / "results/figures/gan_real_vs_synthetic.png") as comparison:
        comparison.load()
        assert comparison.width > comparison.height  # two panels side by side
    with Image.open(tmp_path / "results/figures/gan_diversity.png") as diversity:
        diversity.load()
        assert diversity.width > 100


def test_a_collapsed_generator_is_flagged_against_the_real_sample(blob_npz: Path, tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["train-gan", *gan_argv(blob_npz, tmp_path, "--epochs", "1")])
    config = train_gan.training_config(GanTrainingConfig.from_args(args))
    real = mean_pairwise_ms_ssim(train_gan.diversity_sample(train_gan.training_images(config), config, 8), 28)
    generator = Generator(16, 8, 1, SIZE)
    for parameter in generator.parameters():  # every latent gives the same (constant) image
        torch.nn.init.zeros_(parameter)
    noise, labels = train_gan.fixed_latents(config, 8, torch.device("cpu"))
    collapsed = train_gan.synthetic_diversity(generator, noise, labels, seed=0)
    assert collapsed.mean == pytest.approx(1.0) and real.mean < 0.9
    assert collapse_suspected(real, collapsed) and not collapse_suspected(real, real)


def test_gan_learns_from_development_images_only(blob_npz: Path) -> None:
    data = np.load(blob_npz)
    train_val_labels = np.concatenate([data["train_labels"], data["val_labels"]]).ravel()

    positive = train_gan.training_images(train_gan.training_config(gan_options(gan_argv(blob_npz, Path("w")))))
    assert len(positive) == int(train_val_labels.sum())
    assert (positive.labels == 1).all()
    assert not any(pid.startswith("test-") for pid in positive.patient_ids)  # the hold-out is never seen

    everything = train_gan.training_images(
        train_gan.training_config(gan_options(gan_argv(blob_npz, Path("w"), "--train-on", "all")))
    )
    assert len(everything) == len(train_val_labels)
    assert not any(pid.startswith("test-") for pid in everything.patient_ids)

    subset = train_gan.training_images(
        train_gan.training_config(gan_options(gan_argv(blob_npz, Path("w"), "--conditional", "--max-images", "36")))
    )
    assert len(subset) == 36
    assert subset.class_counts() == {"normal": 13, "pneumonia": 23}  # half of train + val's 26 and 46


def test_stratified_subset_is_seeded_and_keeps_proportions() -> None:
    labels = np.array([0] * 30 + [1] * 70)
    chosen = train_gan.stratified_subset(labels, 10, seed=1)
    assert len(np.unique(chosen)) == 10 and np.bincount(labels[chosen]).tolist() == [3, 7]
    assert np.array_equal(chosen, train_gan.stratified_subset(labels, 10, seed=1))
    assert not np.array_equal(chosen, train_gan.stratified_subset(labels, 10, seed=2))
    assert np.array_equal(train_gan.stratified_subset(labels, 500, seed=1), np.arange(100))


@pytest.mark.parametrize(
    "options",
    [
        ["--loss", "bce"],
        ["--loss", "wgan-gp", "--n-critic", "2", "--conditional", "--workers", "2"],
    ],
    ids=["bce", "conditional-wgan-gp-2-workers"],
)
def test_resume_is_bit_identical_to_an_uninterrupted_run(blob_npz: Path, tmp_path: Path, options: list[str]) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(blob_npz, straight, "--epochs", "2", *options)
    train(blob_npz, interrupted, "--epochs", "1", *options)
    train(blob_npz, interrupted, "--epochs", "2", "--resume", *options)

    a = load_checkpoint(straight / "models/gan/checkpoint_last.pth", train_gan.TRAINING_STATE)
    b = load_checkpoint(interrupted / "models/gan/checkpoint_last.pth", train_gan.TRAINING_STATE)
    assert a["epoch"] == b["epoch"] == 2
    for network in ("generator", "discriminator"):
        assert a[network].keys() == b[network].keys()
        for name, tensor in a[network].items():
            assert torch.equal(tensor, b[network][name]), f"{network}.{name} differs after resume"
    for name in ("generator_final.pth", "discriminator_final.pth"):
        kind = "dcgan-" + name.split("_")[0]
        final_a = load_checkpoint(straight / "models/gan" / name, kind)["state_dict"]
        final_b = load_checkpoint(interrupted / "models/gan" / name, kind)["state_dict"]
        assert all(torch.equal(tensor, final_b[key]) for key, tensor in final_a.items())
    history = json.loads((interrupted / "results/metrics/gan_training_history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1, 2]
    assert history["config"]["epochs"] == 2


def test_progress_after_each_epoch_and_a_stop_that_leaves_the_run_resumable(blob_npz: Path, tmp_path: Path) -> None:
    events: list[dict] = []
    with pytest.raises(TrainingStopped, match="before epoch 2"):
        train_gan.train(
            gan_options(gan_argv(blob_npz, tmp_path, "--epochs", "3")),
            progress=events.append,
            should_stop=lambda: len(events) == 1,
        )
    assert [(e["epoch"], e["epochs"]) for e in events] == [(1, 3)]
    assert {"loss_d", "loss_g", "d_real", "d_fake"} <= set(events[0])
    assert (tmp_path / "models/gan/checkpoint_last.pth").is_file()
    assert not (tmp_path / "models/gan/generator_final.pth").exists()

    path = train_gan.train(
        gan_options(gan_argv(blob_npz, tmp_path, "--epochs", "3", "--resume")), progress=events.append
    )
    assert [e["epoch"] for e in events] == [1, 2, 3]
    assert path == tmp_path / "models/gan/generator_final.pth" and path.is_file()


def test_resume_refuses_a_checkpoint_trained_with_other_options(blob_npz: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        train(blob_npz, tmp_path, "--epochs", "1", "--resume")
    train(blob_npz, tmp_path, "--epochs", "1")
    with pytest.raises(CheckpointError, match=r"lr: 0\.0002 in the checkpoint, 0\.001 now"):
        train(blob_npz, tmp_path, "--epochs", "2", "--resume", "--lr", "0.001")
    with pytest.raises(CheckpointError, match="feature_maps_g"):
        train(blob_npz, tmp_path, "--epochs", "2", "--resume", "--feature-maps-g", "16")


def test_cli_reports_a_refused_option(blob_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train-gan", *gan_argv(blob_npz, tmp_path, "--image-size", "20")]) == 2
    assert "pneumonia train-gan: error: --image-size: image_size must be a power of two >= 16, got 20" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--conditional", "--train-on", "positive"], "cannot use --train-on positive"),
        (["--image-size", "48"], "--image-size: image_size must be a power of two"),
        (["--epochs", "0"], "--epochs: input should be greater than 0"),
        (["--max-images", "0"], "--max-images: input should be greater than 0"),
    ],
)
def test_unworkable_options_are_refused(blob_npz: Path, tmp_path: Path, options: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train(blob_npz, tmp_path, *options)
    assert not (tmp_path / "models").exists()


def test_briefly_trained_generator_is_closer_to_the_data_than_an_untrained_one(blob_npz: Path, tmp_path: Path) -> None:
    argv = gan_argv(blob_npz, tmp_path, "--epochs", "8", "--batch-size", "4", "--lr", "0.001", "--feature-maps-g", "16")
    options = gan_options(argv)
    train_gan.train(options)
    config = train_gan.training_config(options)
    untrained = tmp_path / "untrained.pth"
    torch.manual_seed(1)
    save_checkpoint(untrained, "dcgan-generator", config, state_dict=Generator(16, 16, 1, SIZE).state_dict())

    develop = train_gan.training_images(config)  # the pneumonia development images the GAN learnt from
    real = np.stack([np.asarray(develop.load(i).resize((SIZE, SIZE), Image.BILINEAR)) for i in range(len(develop))])

    def generated(checkpoint: Path, name: str) -> np.ndarray:
        generate_images(checkpoint, tmp_path / name, 64, None, 0, 64, torch.device("cpu"))
        images = load_synthetic(tmp_path / name)
        return np.stack([np.asarray(images.load(i)) for i in range(len(images))])

    trained_fd = pixel_frechet_distance(real / 255, generated(tmp_path / "models/gan/generator_final.pth", "a") / 255)
    untrained_fd = pixel_frechet_distance(real / 255, generated(untrained, "b") / 255)
    assert trained_fd < 0.6 * untrained_fd
