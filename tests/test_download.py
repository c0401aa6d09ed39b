"""`pneumonia download-dataset`: archives unpack safely and atomically, and every failure is a clear error."""

from __future__ import annotations

import argparse
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from shared.datasets import download as download_command
from shared.datasets import load_dataset
from shared.datasets.download import install_archive, kaggle_credentials_found
from shared.datasets.phantom import write_phantom_dataset
from shared.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def phantom_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("source"), num_patients=20, image_size=16, num_test=2)


def zip_dataset(source: Path, zip_path: Path, prefix: str = "", skip: str | None = None) -> Path:
    """Zip every file under `source` with `prefix` before its path, leaving out files whose name is `skip`."""
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.name != skip:
                archive.write(path, prefix + path.relative_to(source).as_posix())
    return zip_path


def run(*argv: str) -> None:
    """The command's own parser and main, as the CLI calls them."""
    parser = argparse.ArgumentParser()
    download_command.add_arguments(parser)
    download_command.main(parser.parse_args(list(argv)))


def leftovers(parent: Path) -> list[str]:
    """Staging directories left beside a destination: there must never be any."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("prefix", ["", "rsna-pneumonia-processed-dataset/"])
def test_install_archive_flat_or_nested(tmp_path: Path, phantom_source: Path, prefix: str) -> None:
    archive = zip_dataset(phantom_source, tmp_path / "data.zip", prefix)
    dest = tmp_path / "out" / "rsna"

    splits = install_archive(archive, dest)

    assert sorted(splits.labelled.patient_ids) == sorted(load_dataset("phantom", phantom_source).labelled.patient_ids)
    assert all(path.parent == dest / "Training" / "Images" for path in splits.labelled.paths)
    assert (dest / "Training" / "Images" / "phantom-00003.png").read_bytes() == (
        phantom_source / "Training" / "Images" / "phantom-00003.png"
    ).read_bytes()
    assert len(splits.unlabelled) == 2
    assert leftovers(dest.parent) == []


def test_install_archive_replaces_existing_dataset(tmp_path: Path, phantom_source: Path) -> None:
    dest = write_phantom_dataset(tmp_path / "rsna", num_patients=10, image_size=16, num_test=0, seed=5)
    install_archive(zip_dataset(phantom_source, tmp_path / "data.zip"), dest)
    assert len(load_dataset("rsna", dest).labelled) == 20
    assert leftovers(tmp_path) == []


def unsafe_archive(path: Path, source: Path, member: str) -> Path:
    zip_dataset(source, path)
    with zipfile.ZipFile(path, "a") as archive:
        if member == "symlink":
            link = zipfile.ZipInfo("Training/Images/link.png")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(link, "/etc/passwd")
        else:
            archive.writestr(member, "escaped")
    return path


@pytest.mark.parametrize("member", ["../escaped.txt", "Training/../../escaped.txt", "/tmp/escaped.txt", "symlink"])
def test_install_archive_refuses_zip_slip(tmp_path: Path, phantom_source: Path, member: str) -> None:
    archive = unsafe_archive(tmp_path / "evil.zip", phantom_source, member)
    dest = tmp_path / "out" / "rsna"
    with pytest.raises(DatasetError, match="evil.zip: refusing unsafe member"):
        install_archive(archive, dest)
    assert not dest.exists()
    assert leftovers(dest.parent) == []
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "escaped.txt").exists()


@pytest.mark.parametrize(
    ("skip", "message"),
    [
        ("stage2_train_metadata.csv", "must hold exactly one stage2_train_metadata.csv; found none"),
        ("phantom-00007.png", "not a complete RSNA dataset: 1 image.*phantom-00007.png"),
    ],
)
def test_install_archive_incomplete_leaves_dest_untouched(
    tmp_path: Path, phantom_source: Path, skip: str, message: str
) -> None:
    archive = zip_dataset(phantom_source, tmp_path / "partial.zip", skip=skip)
    dest = write_phantom_dataset(tmp_path / "rsna", num_patients=10, image_size=16, num_test=0, seed=5)
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}

    with pytest.raises(DatasetError, match=message):
        install_archive(archive, dest)

    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == []


def test_install_archive_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "data.zip").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DatasetError, match="cannot unpack .*data.zip"):
        install_archive(tmp_path / "data.zip", tmp_path / "rsna")
    assert list(tmp_path.iterdir()) == [tmp_path / "data.zip"]


# ---- Kaggle credentials ----


@pytest.fixture
def no_kaggle_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home without Kaggle credentials; returns the config dir the kaggle package would read."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    return tmp_path / "kaggle-config"


def test_missing_credentials_clear_error_without_network(
    no_kaggle_credentials: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "kaggle", None)  # importing kaggle (which goes online) would now fail
    dest = tmp_path / "data" / "processed"
    with pytest.raises(DatasetError, match="no Kaggle credentials: put kaggle.json .*--dataset phantom"):
        run("--dataset", "rsna", "--data-dir", str(dest))
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_cli_prints_the_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "stage2_train_metadata.csv").write_text("patientId,Target\n")  # looks like a dataset
    code = cli.main(["download-dataset", "--dataset", "phantom", "--data-dir", str(tmp_path)])
    assert code == 2
    assert "pneumonia download-dataset: error: " in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["stage2_train_metadata.csv"]


def test_credentials_found_in_config_dir_or_environment(
    no_kaggle_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not kaggle_credentials_found()
    no_kaggle_credentials.mkdir()
    (no_kaggle_credentials / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert kaggle_credentials_found()
    (no_kaggle_credentials / "kaggle.json").unlink()
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    assert not kaggle_credentials_found()  # a username alone is not enough
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert kaggle_credentials_found()


# ---- phantom ----


def test_phantom_written_then_refused_then_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "data" / "processed"
    args = ["--dataset", "phantom", "--data-dir", str(dest), "--num-patients", "30", "--image-size", "16"]

    run(*args)
    assert "phantom ready in" in capsys.readouterr().out
    first = load_dataset("phantom", dest)
    assert first.labelled.class_counts() == {"normal": 18, "pneumonia": 12}
    assert first.labelled.load(0).size == (16, 16)
    image_before = (dest / "Training" / "Images" / "phantom-00000.png").read_bytes()

    with pytest.raises(DatasetError, match="already holds a dataset; pass --force"):
        run(*args, "--seed", "1")
    assert (dest / "Training" / "Images" / "phantom-00000.png").read_bytes() == image_before

    run(*args, "--seed", "1", "--force", "--num-patients", "40")
    assert len(load_dataset("phantom", dest).labelled) == 40
    assert (dest / "Training" / "Images" / "phantom-00000.png").read_bytes() != image_before
    assert leftovers(dest.parent) == []


def test_force_never_replaces_a_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="does not hold an RSNA-layout dataset"):
        run("--dataset", "phantom", "--data-dir", str(tmp_path), "--force", "--num-patients", "20")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_source_only_for_pneumoniamnist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--source applies to --dataset pneumoniamnist only"):
        run("--dataset", "phantom", "--data-dir", str(tmp_path / "d"), "--source", str(tmp_path))


# ---- pneumoniamnist ----


def write_npz(path: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        train_images=rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
        train_labels=(np.arange(count) % 2).astype(np.uint8).reshape(-1, 1),
    )
    return path


def test_pneumoniamnist_from_local_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_npz(tmp_path / "downloaded.npz")
    dest = tmp_path / "data"

    run("--dataset", "pneumoniamnist", "--data-dir", str(dest), "--source", str(source))

    assert (dest / "pneumoniamnist.npz").read_bytes() == source.read_bytes()
    assert "pneumoniamnist ready in" in capsys.readouterr().out
    assert len(load_dataset("pneumoniamnist", dest).labelled) == 6
    with pytest.raises(DatasetError, match="already exists; pass --force"):
        run("--dataset", "pneumoniamnist", "--data-dir", str(dest), "--source", str(source))

    (tmp_path / "dir-source").mkdir()  # --source may also name a directory holding pneumoniamnist.npz
    write_npz(tmp_path / "dir-source" / "pneumoniamnist.npz", count=8)
    run("--dataset", "pneumoniamnist", "--data-dir", str(dest), "--source", str(tmp_path / "dir-source"), "--force")
    assert len(load_dataset("pneumoniamnist", dest).labelled) == 8
    assert leftovers(dest) == []


def test_pneumoniamnist_bad_source_keeps_the_good_file(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    run("--dataset", "pneumoniamnist", "--data-dir", str(dest), "--source", str(write_npz(tmp_path / "good.npz")))
    (tmp_path / "bad.npz").write_bytes(b"not an npz")

    with pytest.raises(DatasetError, match="bad.npz is not an npz file"):
        run("--dataset", "pneumoniamnist", "--data-dir", str(dest), "--source", str(tmp_path / "bad.npz"), "--force")

    assert (dest / "pneumoniamnist.npz").read_bytes() == (tmp_path / "good.npz").read_bytes()
    assert leftovers(dest) == []


def test_pneumoniamnist_without_source_or_medmnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "medmnist", None)  # makes `import medmnist` fail, installed or not
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match="medmnist package is not installed: pass --source"):
        run("--dataset", "pneumoniamnist", "--data-dir", str(dest))
    assert not (dest / "pneumoniamnist.npz").exists()
    assert leftovers(dest) == []
