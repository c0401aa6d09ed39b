"""`pneumonia generate-synthetic` and the synthetic folder: determinism, manifest, labels, refusals."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline import cli
from services.generator import generate_synthetic
from services.generator.generate_synthetic import generate_images, latent_batch
from services.trainer import train_gan
from shared.checkpoints import save_checkpoint
from shared.configs import GanTrainingConfig, GenerationConfig
from shared.configs.limits import MAX_SHARD_IMAGES
from shared.errors import CheckpointError, ConfigError, DatasetError
from shared.images import sha256_file
from shared.models.dcgan import Discriminator, Generator, for_inference
from shared.synthetic import (
    MANIFEST_COLUMNS,
    SHARD_MANIFEST_COLUMNS,
    ManifestRow,
    load_synthetic,
    read_layout,
    read_manifest,
    write_manifest,
)

CPU = torch.device("cpu")


def make_generator(path: Path, *train_options: str, channels: int = 1) -> Path:
    """A generator checkpoint as train-gan writes it (config from train-gan's own options), untrained weights."""
    parser = argparse.ArgumentParser()
    train_gan.add_arguments(parser)
    args = parser.parse_args(
        ["--image-size", "16", "--num-channels", str(channels), "--latent-dim", "8", "--feature-maps-g", "4"]
        + list(train_options)
    )
    config = train_gan.training_config(GanTrainingConfig.from_args(args))
    torch.manual_seed(0)
    generator = Generator(8, 4, channels, 16, config["num_classes"])
    save_checkpoint(path, "dcgan-generator", config, state_dict=for_inference(generator).state_dict())
    return path


def generate(*argv: str) -> int:
    """Run the subcommand as the CLI does: parse the options, then main."""
    parser = argparse.ArgumentParser()
    generate_synthetic.add_arguments(parser)
    return generate_synthetic.main(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def pneumonia_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_generator(tmp_path_factory.mktemp("gen") / "generator_final.pth")


@pytest.fixture(scope="module")
def conditional_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_generator(tmp_path_factory.mktemp("gen") / "conditional.pth", "--conditional")


def png_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*.png"))}


def test_same_seed_gives_byte_identical_images_another_seed_others(pneumonia_generator: Path, tmp_path: Path) -> None:
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        output = str(tmp_path / name)
        generate(
            "--model-path", str(pneumonia_generator), "--output-dir", output, "--num-images", "5", "--seed", seed,
            "--layout", "png",
        )  # fmt: skip
    a, b, c = (png_bytes(tmp_path / name) for name in "abc")
    assert list(a) == [f"synthetic_pneumonia_{i:06d}.png" for i in range(5)]
    assert a == b
    assert a.keys() == c.keys() and all(a[name] != c[name] for name in a)
    assert len(set(a.values())) == 5  # every index has its own latent


def test_shards_are_the_default_and_byte_identical_for_the_same_seed(pneumonia_generator: Path, tmp_path: Path) -> None:
    for name, seed, batch in (("a", "0", "2"), ("b", "0", "5"), ("c", "1", "2")):
        output = str(tmp_path / name)
        generate(
            "--model-path", str(pneumonia_generator), "--output-dir", output, "--num-images", "5", "--seed", seed,
            "--shard-size", "2", "--batch-size", batch,
        )  # fmt: skip
    a, b, c = ({p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.npz"))} for name in "abc")
    assert list(a) == [
        f"synthetic_pneumonia_{span}.npz" for span in ("000000-000001", "000002-000003", "000004-000004")
    ]
    assert not list((tmp_path / "a").glob("*.png"))
    assert a == b  # another batch size, the same bytes
    assert a.keys() == c.keys() and all(a[name] != c[name] for name in a)


def test_latents_depend_on_seed_and_index_only() -> None:
    whole = latent_batch(7, range(0, 6), 8)
    assert torch.equal(whole[2:5], latent_batch(7, range(2, 5), 8))  # batching does not change a latent
    assert not torch.equal(whole, latent_batch(8, range(0, 6), 8))


def test_manifest_matches_files_and_generator(pneumonia_generator: Path, tmp_path: Path) -> None:
    rows = generate_images(pneumonia_generator, tmp_path, 3, None, 4, 64, CPU, layout="png")
    with open(tmp_path / "manifest.csv", newline="") as fh:
        records = list(csv.reader(fh))
    assert tuple(records[0]) == MANIFEST_COLUMNS == ("file", "label", "seed", "index", "generator_sha256")
    assert read_manifest(tmp_path) == rows
    digest = sha256_file(pneumonia_generator)
    assert rows == [ManifestRow(f"synthetic_pneumonia_{i:06d}.png", 1, 4, i, digest) for i in range(3)]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [row.file for row in rows]
    with Image.open(tmp_path / rows[0].file) as image:
        assert (image.mode, image.size) == ("L", (16, 16))

    images = load_synthetic(tmp_path)
    assert images.labels.tolist() == [1, 1, 1]
    assert images.patient_ids.tolist() == [f"synthetic-{row.file}" for row in rows]
    assert images.load(0).size == (16, 16)


def test_shard_manifest_matches_shards_and_generator(pneumonia_generator: Path, tmp_path: Path) -> None:
    rows = generate_images(pneumonia_generator, tmp_path, 3, None, 4, 2, CPU, shard_size=2)
    digest = sha256_file(pneumonia_generator)
    assert rows == [ManifestRow(f"synthetic_pneumonia_{i:06d}.png", 1, 4, i, digest) for i in range(3)]
    assert read_manifest(tmp_path) == rows  # one row per image, whichever the layout
    with open(tmp_path / "manifest.csv", newline="") as fh:
        records = list(csv.reader(fh))
    assert tuple(records[0]) == SHARD_MANIFEST_COLUMNS
    shards = read_layout(tmp_path).shards
    assert [(s.shard, s.first_index, s.count) for s in shards] == [
        ("synthetic_pneumonia_000000-000001.npz", 0, 2),
        ("synthetic_pneumonia_000002-000002.npz", 2, 1),
    ]
    assert [s.sha256 for s in shards] == [sha256_file(tmp_path / s.shard) for s in shards]
    assert {(s.label, s.seed, s.generator_sha256) for s in shards} == {(1, 4, digest)}


def test_three_channel_generator_writes_rgb(tmp_path: Path) -> None:
    checkpoint = make_generator(tmp_path / "rgb.pth", channels=3)
    (row,) = generate_images(checkpoint, tmp_path / "out", 1, None, 0, 64, CPU, layout="png")
    with Image.open(tmp_path / "out" / row.file) as image:
        assert (image.mode, image.size) == ("RGB", (16, 16))
    generate_images(checkpoint, tmp_path / "shards", 1, None, 0, 64, CPU)
    from_png, from_shard = load_synthetic(tmp_path / "out"), load_synthetic(tmp_path / "shards")
    assert from_shard.load(0).mode == "L"
    assert from_shard.load(0).tobytes() == from_png.load(0).tobytes()  # the same grey conversion


def test_both_labels_merge_into_one_manifest(conditional_generator: Path, tmp_path: Path) -> None:
    generate_images(conditional_generator, tmp_path, 3, 0, 0, 64, CPU, layout="png")
    generate_images(conditional_generator, tmp_path, 3, 1, 0, 64, CPU, layout="png")
    generate_images(conditional_generator, tmp_path, 2, 0, 5, 64, CPU, layout="png")  # redo normal 0, 1 with seed 5
    rows = {row.file: row for row in read_manifest(tmp_path)}
    assert sorted(rows) == sorted(p.name for p in tmp_path.glob("*.png"))
    assert {(row.file.split("_")[1], row.label) for row in rows.values()} == {("normal", 0), ("pneumonia", 1)}
    assert [rows[f"synthetic_normal_{i:06d}.png"].seed for i in range(3)] == [5, 5, 0]
    assert len(rows) == 6
    # same seed and index, so the same latent: only the class differs (manifest rows are sorted by file)
    images = load_synthetic(tmp_path)
    assert images.patient_ids[[2, 5]].tolist() == [
        "synthetic-synthetic_normal_000002.png",
        "synthetic-synthetic_pneumonia_000002.png",
    ]
    assert images.load(2).tobytes() != images.load(5).tobytes()


def test_both_labels_merge_into_one_shard_manifest(conditional_generator: Path, tmp_path: Path) -> None:
    generate_images(conditional_generator, tmp_path, 3, 0, 0, 64, CPU, shard_size=2)
    generate_images(conditional_generator, tmp_path, 3, 1, 0, 64, CPU, shard_size=2)
    generate_images(conditional_generator, tmp_path, 2, 0, 5, 64, CPU, shard_size=2)  # redo normal 0 and 1, seed 5
    shards = read_layout(tmp_path).shards
    assert [(s.shard, s.seed) for s in shards] == [
        ("synthetic_normal_000000-000001.npz", 5),  # replaced the seed-0 shard of the same name
        ("synthetic_normal_000002-000002.npz", 0),  # does not overlap: kept
        ("synthetic_pneumonia_000000-000001.npz", 0),
        ("synthetic_pneumonia_000002-000002.npz", 0),
    ]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == [s.shard for s in shards]
    images = load_synthetic(tmp_path)
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images.patient_ids[[2, 5]].tolist() == [
        "synthetic-synthetic_normal_000002.png",
        "synthetic-synthetic_pneumonia_000002.png",
    ]
    assert images.load(2).tobytes() != images.load(5).tobytes()
    generate_images(conditional_generator, tmp_path, 3, 0, 0, 64, CPU, shard_size=3)  # overlaps both normal shards
    assert [s.shard for s in read_layout(tmp_path).shards][:2] == [
        "synthetic_normal_000000-000002.npz",
        "synthetic_pneumonia_000000-000001.npz",
    ]
    assert len(load_synthetic(tmp_path)) == 6 and len(list(tmp_path.glob("*.npz"))) == 3


def test_one_folder_holds_one_layout(pneumonia_generator: Path, tmp_path: Path) -> None:
    generate_images(pneumonia_generator, tmp_path, 2, None, 0, 64, CPU, layout="png")
    with pytest.raises(ConfigError, match="holds the png layout: write the shards layout to another folder"):
        generate_images(pneumonia_generator, tmp_path, 2, None, 0, 64, CPU)


def test_labels_must_agree_with_the_generator(
    pneumonia_generator: Path, conditional_generator: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="conditional generator: choose the class with --label"):
        generate_images(conditional_generator, tmp_path, 1, None, 0, 64, CPU)
    with pytest.raises(CheckpointError, match="only generates pneumonia images, not normal"):
        generate("--model-path", str(pneumonia_generator), "--output-dir", str(tmp_path), "--label", "normal")
    unlabelled = make_generator(tmp_path / "all.pth", "--train-on", "all")
    with pytest.raises(CheckpointError, match="trained on all classes: its images have no label"):
        generate_images(unlabelled, tmp_path, 1, None, 0, 64, CPU)
    assert not list(tmp_path.glob("*.png"))
    labelled = ["--output-dir", str(tmp_path), "--label", "pneumonia", "--num-images", "1"]
    assert generate("--model-path", str(pneumonia_generator), *labelled) == 0


def test_explicit_flags_must_match_the_checkpoint(pneumonia_generator: Path, tmp_path: Path) -> None:
    base = ["--model-path", str(pneumonia_generator), "--output-dir", str(tmp_path), "--num-images", "1"]
    with pytest.raises(CheckpointError, match="--latent-dim 100 contradicts .* latent_dim = 8"):
        generate(*base, "--latent-dim", "100")  # the default value, but given explicitly
    with pytest.raises(CheckpointError, match="--feature-maps-g 64 contradicts"):
        generate(*base, "--feature-maps-g", "64")
    assert not list(tmp_path.glob("*.png"))
    assert generate(*base) == 0  # omitted: the checkpoint's 8 and 4 are used
    assert generate(*base, "--latent-dim", "8", "--feature-maps-g", "4") == 0


def test_cli_reports_a_contradicting_flag(
    pneumonia_generator: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["generate-synthetic", "--model-path", str(pneumonia_generator), "--output-dir", str(tmp_path)]
    assert cli.main([*base, "--num-images", "2", "--latent-dim", "100"]) == 2
    assert "error: --latent-dim 100 contradicts" in capsys.readouterr().err
    assert cli.main([*base, "--num-images", "2"]) == 0
    assert len(read_manifest(tmp_path)) == 2


def test_wrong_checkpoint_kind_and_bad_counts_are_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "d.pth", "dcgan-discriminator", {}, state_dict=Discriminator(4, 1, 16).state_dict())
    with pytest.raises(CheckpointError, match="expected dcgan-generator"):
        generate_images(tmp_path / "d.pth", tmp_path, 1, None, 0, 64, CPU)
    with pytest.raises(CheckpointError, match="not found"):
        generate_images(tmp_path / "missing.pth", tmp_path, 1, None, 0, 64, CPU)
    checkpoint = make_generator(tmp_path / "g.pth")
    with pytest.raises(ConfigError, match="must be positive"):
        generate_images(checkpoint, tmp_path, 0, None, 0, 64, CPU)


def test_load_synthetic_refuses_incomplete_folders(pneumonia_generator: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_synthetic(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty"):
        load_synthetic(tmp_path / "empty")
    (tmp_path / "loose").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "loose" / "x.png")
    with pytest.raises(DatasetError, match="no manifest.csv"):
        load_synthetic(tmp_path / "loose")

    rows = generate_images(pneumonia_generator, tmp_path / "out", 2, None, 0, 64, CPU, layout="png")
    (tmp_path / "out" / rows[1].file).unlink()
    with pytest.raises(DatasetError, match=f"lists {rows[1].file}, which is missing"):
        load_synthetic(tmp_path / "out")
    write_manifest(tmp_path / "out", [ManifestRow(rows[0].file, 2, 0, 0, "x")])
    with pytest.raises(DatasetError, match="label must be 0 or 1"):
        load_synthetic(tmp_path / "out")
    (tmp_path / "out" / "manifest.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(DatasetError, match="expected columns"):
        load_synthetic(tmp_path / "out")

    shards = generate_images(pneumonia_generator, tmp_path / "shards", 2, None, 0, 64, CPU, shard_size=1)
    (tmp_path / "shards" / "synthetic_pneumonia_000001-000001.npz").unlink()
    with pytest.raises(DatasetError, match="lists synthetic_pneumonia_000001-000001.npz, which is missing"):
        load_synthetic(tmp_path / "shards")
    assert len(shards) == 2


def test_shard_size_and_layout_are_bounded_options(pneumonia_generator: Path, tmp_path: Path) -> None:
    base = ["generate-synthetic", "--model-path", str(pneumonia_generator), "--output-dir", str(tmp_path)]
    for bad in ("0", str(MAX_SHARD_IMAGES + 1)):
        with pytest.raises(ConfigError, match="--shard-size"):
            GenerationConfig.from_argv([*base[1:], "--shard-size", bad])
    assert GenerationConfig.from_argv(base[1:]).layout == "shards"  # the fast path is the default
    assert cli.main([*base, "--num-images", "3", "--shard-size", "2", "--batch-size", "3"]) == 0
    assert [row.count for row in read_layout(tmp_path).shards] == [2, 1]
