"""`pneumonia download-dataset`: archives unpack safely and atomically, and every failure is a clear error.

Also `pneumonia experiment --dataset pneumoniamnist` fetching a missing npz: medmnist is pointed at 127.0.0.1 (a
local server, or a closed port for "no network"), so no test needs the network.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import logging
import socket
import stat
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from shared.datasets import download as download_command
from shared.datasets import load_dataset
from shared.datasets.download import ensure_pneumoniamnist, install_archive, kaggle_credentials_found
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


# ---- pneumoniamnist fetched by `pneumonia experiment` when --data-dir lacks it ----


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib must reach 127.0.0.1 directly, whatever proxy the machine sets."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def point_medmnist_at(monkeypatch: pytest.MonkeyPatch, url: str, md5: str = "0" * 32) -> None:
    """Make medmnist download PneumoniaMNIST from `url` (checked against `md5`) instead of Zenodo."""
    from medmnist.info import INFO

    monkeypatch.setitem(INFO["pneumoniamnist"], "url", url)
    monkeypatch.setitem(INFO["pneumoniamnist"], "MD5", md5)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(directory: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 for the files in `directory`; yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def experiment(data_dir: Path, work_dir: Path, *extra: str) -> int:
    return cli.main(
        ["experiment", "--profile", "quick", "--data-dir", str(data_dir), "--work-dir", str(work_dir), *extra]
    )


@pytest.mark.parametrize("data_exists", [False, True])
def test_experiment_without_data_or_network_stops_with_one_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_proxy: None,
    data_exists: bool,
) -> None:
    point_medmnist_at(monkeypatch, f"http://127.0.0.1:{closed_port()}/pneumoniamnist.npz")
    data, work = tmp_path / "nodata" / "pneumoniamnist", tmp_path / "runs"
    if data_exists:
        data.mkdir(parents=True)

    rc = experiment(data, work, "--dataset", "pneumoniamnist", "--via-services", "--local-services")

    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    (message,) = [line for line in err.splitlines() if "error:" in line]
    assert message.startswith("pneumonia experiment: error: PneumoniaMNIST is not in")
    assert "Connection refused" in message
    assert f"Put the file at {data / 'pneumoniamnist.npz'}:" in message
    assert "https://zenodo.org/records/10519652" in message
    assert "pneumonia download-dataset --dataset pneumoniamnist" in message and "--source FILE" in message
    assert "--dataset phantom" in message
    # nothing half-written: an empty data dir stays (it was there), a new one goes; no run, no services
    assert (data.is_dir() and list(data.iterdir()) == []) if data_exists else not (tmp_path / "nodata").exists()
    assert not work.exists()


def test_experiment_downloads_missing_data_then_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, no_proxy: None
) -> None:
    (tmp_path / "served").mkdir()
    served = write_npz(tmp_path / "served" / "pneumoniamnist.npz")
    md5 = hashlib.md5(served.read_bytes()).hexdigest()
    loaded: list[int] = []

    def run_in_process(args: argparse.Namespace) -> int:  # stop where the steps would start: load the data
        loaded.append(len(load_dataset(args.dataset, args.data_dir).labelled))
        return 0

    monkeypatch.setattr("pipeline.experiment.run_in_process", run_in_process)
    data = tmp_path / "data" / "pneumoniamnist"
    with serving(served.parent) as url, caplog.at_level(logging.INFO, logger="shared.datasets.download"):
        point_medmnist_at(monkeypatch, f"{url}/pneumoniamnist.npz", md5)
        assert experiment(data, tmp_path / "runs", "--dataset", "pneumoniamnist") == 0

    assert (data / "pneumoniamnist.npz").read_bytes() == served.read_bytes()
    assert loaded == [6] and leftovers(data) == []
    assert f"PneumoniaMNIST is not in {data}; downloading it with medmnist from {url}" in caplog.text

    # present now: the next run downloads nothing (the server is gone)
    caplog.clear()
    assert experiment(data, tmp_path / "runs", "--dataset", "pneumoniamnist") == 0
    assert loaded == [6, 6] and "downloading" not in caplog.text


def test_a_corrupt_download_is_never_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_proxy: None) -> None:
    served = write_npz(tmp_path / "pneumoniamnist.npz")
    data = tmp_path / "data"
    data.mkdir()
    with serving(tmp_path) as url:
        point_medmnist_at(monkeypatch, f"{url}/pneumoniamnist.npz", md5="0" * 32)  # not the file's checksum
        with pytest.raises(DatasetError, match=r"downloading it failed \(File not found or corrupted.\)"):
            ensure_pneumoniamnist(data)
    assert served.is_file() and list(data.iterdir()) == []


def test_other_datasets_download_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phantom_source: Path) -> None:
    def refuse(data_dir: Path) -> None:
        raise AssertionError(f"download attempted into {data_dir}")

    monkeypatch.setattr(download_command, "ensure_pneumoniamnist", refuse)
    monkeypatch.setattr("pipeline.experiment.run_in_process", lambda args: 0)
    assert experiment(phantom_source, tmp_path / "runs", "--dataset", "phantom") == 0
    assert experiment(tmp_path / "missing", tmp_path / "runs", "--dataset", "rsna") == 0
