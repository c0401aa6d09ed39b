"""Synthetic images as shards (shared.shards, shared.synthetic): the format round-trips, a shard that is not the one
its manifest lists is refused, the trainer reads shards and the per-image PNG layout alike, a killed generation
resumes, shards export to PNGs and merge, and the background writer stays bounded."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import FAST

from pipeline.cli import main as pneumonia
from services.generator import export_pngs as export_cli
from services.trainer import train_gan
from shared import layout as layout_names
from shared.checkpoints import save_checkpoint
from shared.configs import GanTrainingConfig
from shared.datasets.phantom import write_phantom_dataset
from shared.errors import DatasetError
from shared.generation import generate_images
from shared.models.dcgan import Generator, for_inference
from shared.shards import (
    BoundedWriter,
    Shard,
    ShardIntegrityError,
    decode_shard,
    encode_shard,
    shard_name,
)
from shared.storage import StorageUnavailableError
from shared.synthetic import (
    MANIFEST_NAME,
    SYNTHETIC_PREFIX,
    export_pngs,
    load_synthetic,
    merge_synthetic_folders,
    read_layout,
    read_manifest,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def conditional(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny conditional generator (both classes), 16 px gray, as train-gan writes its checkpoint; untrained."""
    parser = argparse.ArgumentParser()
    train_gan.add_arguments(parser)
    argv = ["--image-size", "16", "--num-channels", "1", "--latent-dim", "8", "--feature-maps-g", "4", "--conditional"]
    config = train_gan.training_config(GanTrainingConfig.from_args(parser.parse_args(argv)))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gen") / "conditional.pth"
    save_checkpoint(path, "dcgan-generator", config, state_dict=for_inference(Generator(8, 4, 1, 16, 2)).state_dict())
    return path


def both_classes(checkpoint: Path, folder: Path, count: int, **options: object) -> Path:
    for label in (0, 1):
        generate_images(checkpoint, folder, count, label, 7, 4, CPU, **options)
    return folder


# ---------------------------------------------------------------- the format


def test_a_shard_round_trips_and_its_bytes_are_deterministic() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    shard = Shard.of(images, 1, 10, seed=5, generator_sha256="a" * 64)
    data = encode_shard(shard)
    assert encode_shard(Shard.of(images.copy(), 1, 10, 5, "a" * 64)) == data  # no timestamps in the bytes
    decoded = decode_shard(data, "s.npz")
    np.testing.assert_array_equal(decoded.images, images)
    assert decoded.ids.tolist() == [f"synthetic_pneumonia_{i:06d}.png" for i in (10, 11, 12)]
    assert decoded.labels.tolist() == [1, 1, 1] and decoded.indices.tolist() == [10, 11, 12]
    assert (decoded.seed, decoded.generator_sha256) == (5, "a" * 64)
    assert shard_name(0, 1024, 1024) == "synthetic_normal_001024-002047.npz"

    rgb = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    assert decode_shard(encode_shard(Shard.of(rgb, 0, 0, 0, "b" * 64)), "rgb.npz").images.shape == (2, 4, 4, 3)
    with pytest.raises(DatasetError, match="bad.npz: not a readable shard"):
        decode_shard(data[: len(data) // 2], "bad.npz")
    with pytest.raises(ValueError, match="uint8"):
        encode_shard(Shard.of(images.astype(np.float32), 1, 0, 0, "a" * 64))


def test_a_shard_whose_sha256_is_not_the_manifests_is_refused(conditional: Path, tmp_path: Path) -> None:
    folder = both_classes(conditional, tmp_path / "shards", 3, shard_size=2)
    shard = read_layout(folder).shards[1]
    path = folder / shard.shard
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    message = f"{path}: sha256 [0-9a-f]{{64}} does not match the manifest's {shard.sha256}: the shard is corrupt"
    with pytest.raises(ShardIntegrityError, match=message):
        load_synthetic(folder)
    with pytest.raises(ShardIntegrityError, match="regenerate the synthetic images"):
        export_pngs(folder, tmp_path / "png")
    with pytest.raises(ShardIntegrityError):
        merge_synthetic_folders([folder], tmp_path / "merged")
    assert len(read_manifest(folder)) == 6  # the manifest alone (matched compute counts it) still reads


def test_a_manifest_row_must_match_its_shard(conditional: Path, tmp_path: Path) -> None:
    folder = both_classes(conditional, tmp_path / "shards", 2)
    text = (folder / MANIFEST_NAME).read_text()
    (folder / MANIFEST_NAME).write_text(text.replace(",7,0,2,", ",8,0,2,"))  # claims another seed
    with pytest.raises(DatasetError, match="seed or generator differ from its manifest row"):
        load_synthetic(folder)
    (folder / MANIFEST_NAME).write_text(text.replace(".npz,", "/x.npz,", 1))
    with pytest.raises(DatasetError, match="shard must be a .npz name inside the folder"):
        load_synthetic(folder)


# ---------------------------------------------------------------- reading: the trainer's view


def test_shards_and_pngs_load_as_the_same_images(conditional: Path, tmp_path: Path) -> None:
    shards = both_classes(conditional, tmp_path / "shards", 5, shard_size=2)
    pngs = both_classes(conditional, tmp_path / "pngs", 5, layout="png")
    from_shards, from_pngs = load_synthetic(shards), load_synthetic(pngs)
    assert from_shards.patient_ids.tolist() == from_pngs.patient_ids.tolist()
    assert all(pid.startswith(SYNTHETIC_PREFIX) for pid in from_shards.patient_ids)  # kept out of evaluation
    assert from_shards.labels.tolist() == from_pngs.labels.tolist() == [0] * 5 + [1] * 5
    for i in range(len(from_pngs)):
        assert from_shards.load(i).tobytes() == from_pngs.load(i).tobytes()
    assert read_manifest(shards) == read_manifest(pngs)


@pytest.fixture(scope="module")
def phantom16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom16s"), num_patients=60, image_size=16, seed=2)


def test_the_trainer_trains_the_same_on_shards_and_on_pngs(conditional: Path, phantom16: Path, tmp_path: Path) -> None:
    """train-classifier --use-synthetic on either layout of the same images: the same pool, the same losses, and no
    synthetic image among the validated or tested ones (the trainer's guards)."""
    histories = {}
    for layout in ("shards", "png"):
        synthetic = both_classes(conditional, tmp_path / layout / "synthetic", 6, layout=layout, shard_size=4)
        root = tmp_path / layout
        argv = [
            "train-classifier", "--data-dir", str(phantom16), "--synthetic-dir", str(synthetic),
            "--model-dir", str(root / "models"), "--results-dir", str(root / "metrics"),
            "--figures-dir", str(root / "figures"), *FAST, "--epochs", "1", "--k-folds", "1", "--use-synthetic",
        ]  # fmt: skip
        assert pneumonia(argv) == 0
        histories[layout] = json.loads((root / "metrics" / "augmented_training_history.json").read_text())
        predictions = (root / "metrics" / layout_names.holdout_predictions_name("augmented")).read_text()
        assert predictions.count("\n") > 2 and SYNTHETIC_PREFIX not in predictions  # hold-out: real images only
    (shard_epoch,), (png_epoch,) = (h["folds"][0]["epochs"] for h in (histories["shards"], histories["png"]))
    assert shard_epoch["n_synthetic"] == png_epoch["n_synthetic"] == 12
    assert shard_epoch["train_loss"] == pytest.approx(png_epoch["train_loss"], rel=1e-6)
    assert shard_epoch["val_loss"] == pytest.approx(png_epoch["val_loss"], rel=1e-6)


# ---------------------------------------------------------------- resume, export, merge


def test_a_killed_generation_resumes_from_the_shards_it_wrote(conditional: Path, tmp_path: Path) -> None:
    straight = generate_images(conditional, tmp_path / "straight", 9, 1, 3, 2, CPU, shard_size=2)

    def killed(done: int) -> None:
        if done >= 6:
            raise KeyboardInterrupt  # as a kill would, after three batches

    with pytest.raises(KeyboardInterrupt):
        generate_images(conditional, tmp_path / "killed", 9, 1, 3, 2, CPU, on_batch=killed, shard_size=2)
    written = sorted(p.name for p in (tmp_path / "killed").glob("*.npz"))
    assert not (tmp_path / "killed" / MANIFEST_NAME).exists()
    assert written == [shard_name(1, i, 2) for i in range(0, 2 * len(written), 2)] and 1 <= len(written) <= 3

    progress: list[int] = []
    resumed = generate_images(conditional, tmp_path / "killed", 9, 1, 3, 4, CPU, on_batch=progress.append, shard_size=2)
    kept = 2 * len(written)
    assert progress[0] == min(kept + 4, 9) and progress[-1] == 9  # the kept shards are not drawn again
    assert resumed == straight
    assert read_layout(tmp_path / "killed").shards == read_layout(tmp_path / "straight").shards  # same sha256s


def test_a_stored_shard_of_another_request_is_redrawn_not_kept(conditional: Path, tmp_path: Path) -> None:
    generate_images(conditional, tmp_path, 4, 1, 3, 2, CPU, shard_size=2)
    first = read_layout(tmp_path).shards
    (tmp_path / MANIFEST_NAME).unlink()  # as if killed before the manifest, then rerun with another seed
    progress: list[int] = []
    generate_images(conditional, tmp_path, 4, 1, 4, 2, CPU, on_batch=progress.append, shard_size=2)
    assert progress == [2, 4]  # nothing kept: the stored shards hold seed 3's images
    assert all(a.sha256 != b.sha256 for a, b in zip(first, read_layout(tmp_path).shards, strict=True))


def test_export_pngs_gives_the_png_layout_byte_for_byte(
    conditional: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = both_classes(conditional, tmp_path / "shards", 3, shard_size=2)
    pngs = both_classes(conditional, tmp_path / "pngs", 3, layout="png")
    assert export_cli.main([str(shards), str(tmp_path / "exported")]) == 0
    assert "6 PNG files and manifest.csv" in capsys.readouterr().out
    exported = {p.name: p.read_bytes() for p in (tmp_path / "exported").iterdir()}
    assert exported == {p.name: p.read_bytes() for p in pngs.iterdir()}
    assert export_cli.main([str(pngs), str(tmp_path / "again")]) == 1
    assert "already holds one PNG per image" in capsys.readouterr().err


def test_merging_shard_folders_keeps_shards_and_a_png_folder_makes_pngs(conditional: Path, tmp_path: Path) -> None:
    normal = generate_images(conditional, tmp_path / "n", 3, 0, 1, 4, CPU, shard_size=2)
    pneumonia_rows = generate_images(conditional, tmp_path / "p", 3, 1, 1, 4, CPU, shard_size=2)
    merged = merge_synthetic_folders([tmp_path / "n", tmp_path / "p"], tmp_path / "merged")
    assert merged == normal + pneumonia_rows
    assert read_layout(tmp_path / "merged").layout == "shards" and len(list((tmp_path / "merged").glob("*.npz"))) == 4
    assert len(load_synthetic(tmp_path / "merged")) == 6

    generate_images(conditional, tmp_path / "old", 3, 1, 1, 4, CPU, layout="png")  # a stored run from before shards
    mixed = merge_synthetic_folders([tmp_path / "n", tmp_path / "old"], tmp_path / "mixed")
    assert read_layout(tmp_path / "mixed").layout == "png" and [row.file for row in mixed] == [
        *(row.file for row in normal),
        *(row.file for row in pneumonia_rows),
    ]
    assert load_synthetic(tmp_path / "mixed").load(0).tobytes() == load_synthetic(tmp_path / "merged").load(0).tobytes()
    with pytest.raises(DatasetError, match="is in more than one synthetic folder"):
        merge_synthetic_folders([tmp_path / "p", tmp_path / "old"], tmp_path / "clash")


# ---------------------------------------------------------------- the background writer


def test_the_writer_keeps_at_most_max_pending_jobs_and_reports_in_order() -> None:
    release = threading.Event()

    def job(i: int) -> int:
        release.wait(5)
        return i

    with BoundedWriter[int](workers=2, max_pending=3) as writer:
        for i in range(3):
            writer.submit(job, i)
        blocked = threading.Thread(target=writer.submit, args=(job, 3))
        blocked.start()
        blocked.join(0.2)
        assert blocked.is_alive()  # a fourth job waits for a free slot: memory stays bounded
        assert writer.completed() == []
        release.set()
        blocked.join(5)
        assert writer.rest() == [0, 1, 2, 3] and writer.results() == [0, 1, 2, 3]


def test_a_failed_write_stops_the_writer_with_its_error() -> None:
    def job(i: int) -> int:
        if i == 1:
            raise StorageUnavailableError("storage down")
        return i

    with pytest.raises(StorageUnavailableError, match="storage down"), BoundedWriter[int](workers=1) as writer:
        for i in range(4):
            writer.submit(job, i)
        writer.rest()
