"""Fetch a dataset into --data-dir: RSNA from Kaggle, PneumoniaMNIST from a local npz or MedMNIST, or phantom.

rsna needs Kaggle credentials (~/.kaggle/kaggle.json, $KAGGLE_CONFIG_DIR/kaggle.json, or KAGGLE_USERNAME and
KAGGLE_KEY). Every dataset is checked before it is moved into place, so a failed download leaves nothing behind.
`pneumonia experiment --dataset pneumoniamnist` calls `ensure_pneumoniamnist` first: it downloads the npz when the
data directory lacks it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from shared.datasets import DATASETS, DatasetSplits
from shared.datasets.phantom import write_phantom_dataset
from shared.datasets.pneumoniamnist import FILENAME as PNEUMONIAMNIST_FILE
from shared.datasets.pneumoniamnist import load_pneumoniamnist
from shared.datasets.rsna import TRAIN_CSV, load_rsna
from shared.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

KAGGLE_DATASET = "iamtapendu/rsna-pneumonia-processed-dataset"
PNEUMONIAMNIST_RECORD = "https://zenodo.org/records/10519652"  # MedMNIST v2 on Zenodo: pneumoniamnist.npz
DOWNLOAD_TIMEOUT_S = 60.0  # per connection attempt or read: no network fails in a minute, never hangs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="rsna", help="which dataset to fetch")
    parser.add_argument("--data-dir", type=Path, default=Path("./data/processed"), help="destination directory")
    parser.add_argument("--kaggle-dataset", default=KAGGLE_DATASET, help="rsna: Kaggle dataset slug owner/name")
    parser.add_argument("--source", type=Path, help="pneumoniamnist: copy this local npz instead of downloading")
    parser.add_argument("--num-patients", type=int, default=400, help="phantom: number of labelled patients")
    parser.add_argument("--image-size", type=int, default=64, help="phantom: image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="phantom: random seed")
    parser.add_argument("--force", action="store_true", help="replace a dataset already in --data-dir")


def main(args: argparse.Namespace) -> None:
    if args.source is not None and args.dataset != "pneumoniamnist":
        raise ConfigError("--source applies to --dataset pneumoniamnist only")
    data_dir: Path = args.data_dir.resolve()  # a relative "." would have no name to stage beside
    if args.dataset == "rsna":
        check_replaceable_dir(data_dir, args.force)
        splits = download_rsna(args.kaggle_dataset, data_dir)
    elif args.dataset == "phantom":
        check_replaceable_dir(data_dir, args.force)
        with staging_dir(data_dir) as staged:
            write_phantom_dataset(
                staged / "phantom", num_patients=args.num_patients, image_size=args.image_size, seed=args.seed
            )
            replace_dir(staged / "phantom", data_dir)
        splits = load_rsna(data_dir, name="phantom")
    else:
        if args.source is None:
            logger.info("downloading PneumoniaMNIST with medmnist from %s into %s", medmnist_url(), data_dir)
        splits = install_pneumoniamnist(args.source, data_dir, args.force)
    counts = splits.labelled.class_counts()
    test = f", official test {len(splits.official_test)}" if splits.official_test is not None else ""
    print(
        f"{splits.name} ready in {data_dir}: {len(splits.labelled)} labelled images "
        f"({counts['normal']} normal, {counts['pneumonia']} pneumonia){test}, {len(splits.unlabelled)} unlabelled"
    )


def check_replaceable_dir(data_dir: Path, force: bool) -> None:
    """Refuse to overwrite a dataset without --force, and never replace a directory that holds something else."""
    if not data_dir.exists() or (data_dir.is_dir() and not any(data_dir.iterdir())):
        return
    if not (data_dir / TRAIN_CSV).is_file():
        raise DatasetError(f"{data_dir} exists and does not hold an RSNA-layout dataset; choose another --data-dir")
    if not force:
        raise DatasetError(f"{data_dir} already holds a dataset; pass --force to replace it")


# ---- rsna: Kaggle ----


def kaggle_credentials_found() -> bool:
    """True when the kaggle package can authenticate without asking: env variables, a token or kaggle.json."""
    if (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) or os.environ.get("KAGGLE_API_TOKEN"):
        return True
    home_dir = Path.home() / ".kaggle"
    config_dirs = [Path(os.environ["KAGGLE_CONFIG_DIR"])] if os.environ.get("KAGGLE_CONFIG_DIR") else []
    config_dirs += [home_dir, Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"]
    return any((d / "kaggle.json").is_file() for d in config_dirs) or (home_dir / "access_token").is_file()


def download_rsna(slug: str, data_dir: Path) -> DatasetSplits:
    """Download the Kaggle dataset `slug` as a zip next to `data_dir`, then install it there."""
    if not kaggle_credentials_found():
        raise DatasetError(
            "no Kaggle credentials: put kaggle.json (from kaggle.com > Settings > API > Create New Token) in "
            "~/.kaggle/ or $KAGGLE_CONFIG_DIR, or set KAGGLE_USERNAME and KAGGLE_KEY; "
            "or use --dataset phantom / --dataset pneumoniamnist"
        )
    with staging_dir(data_dir) as staged:
        logger.info("downloading %s from Kaggle into %s", slug, staged)
        try:
            # Importing kaggle authenticates at once and calls sys.exit when that fails.
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
            api.dataset_download_files(slug, path=str(staged), quiet=False, unzip=False)
        except (Exception, SystemExit) as exc:
            raise DatasetError(f"Kaggle download of {slug} failed: {exc!r}") from exc
        archives = sorted(staged.glob("*.zip"))
        if len(archives) != 1:
            raise DatasetError(f"Kaggle download of {slug} gave {len(archives)} zip files, expected one")
        return install_archive(archives[0], data_dir)


def install_archive(zip_path: Path, dest: Path) -> DatasetSplits:
    """Unpack an RSNA-layout zip into `dest` atomically: check every member and the layout before the move.

    The archive may hold the dataset at its root or inside one folder. Members with absolute paths, `..` or
    symlinks are refused. On any failure `dest` is left as it was.
    """
    with staging_dir(dest) as staged:
        extract_safely(zip_path, staged / "unpacked")
        roots = sorted(csv.parent for csv in (staged / "unpacked").rglob(TRAIN_CSV))
        if len(roots) != 1:
            found = ", ".join(str(root) for root in roots) or "none"
            raise DatasetError(f"{zip_path} must hold exactly one {TRAIN_CSV}; found {found}")
        try:
            load_rsna(roots[0])
        except DatasetError as exc:
            raise DatasetError(f"{zip_path} is not a complete RSNA dataset: {exc}") from exc
        replace_dir(roots[0], dest)
    return load_rsna(dest)


def extract_safely(zip_path: Path, out_dir: Path) -> None:
    """Extract every member of `zip_path` under `out_dir`, refusing any that could land outside it."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.infolist():
                parts = PurePosixPath(member.filename.replace("\\", "/")).parts
                unsafe = (
                    member.filename.startswith(("/", "\\"))
                    or ".." in parts
                    or (parts and parts[0].endswith(":"))  # a Windows drive, C:
                    or stat.S_ISLNK(member.external_attr >> 16)
                )
                if unsafe:
                    raise DatasetError(f"{zip_path}: refusing unsafe member {member.filename!r}")
            archive.extractall(out_dir)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"cannot unpack {zip_path}: {exc}") from exc


# ---- pneumoniamnist ----


def install_pneumoniamnist(source: Path | None, data_dir: Path, force: bool) -> DatasetSplits:
    """Copy `source` (or MedMNIST's download) to data_dir/pneumoniamnist.npz once it reads cleanly."""
    dest = data_dir / PNEUMONIAMNIST_FILE
    if source is not None and source.is_dir():
        source = source / PNEUMONIAMNIST_FILE
    if dest.exists() and not force:
        raise DatasetError(f"{dest} already exists; pass --force to replace it")
    data_dir.mkdir(parents=True, exist_ok=True)
    with staging_dir(dest) as staged:
        if source is None:  # medmnist writes pneumoniamnist.npz into its root: not the staged file itself
            (staged / "medmnist").mkdir()
            source = download_medmnist(staged / "medmnist")
        load_pneumoniamnist(source)  # refuse a bad file before it replaces a good one
        shutil.copyfile(source, staged / PNEUMONIAMNIST_FILE)
        os.replace(staged / PNEUMONIAMNIST_FILE, dest)
    return load_pneumoniamnist(dest)


def ensure_pneumoniamnist(data_dir: Path) -> None:
    """Download PneumoniaMNIST into `data_dir` unless its npz is there; on failure say which file to put where.

    A failure leaves nothing behind: no partial npz, no staging directory, and no directory this call created.
    """
    if data_dir.is_file() or data_dir.suffix == ".npz":  # a file path: the loader reads it, or says it is missing
        return
    dest = data_dir.absolute() / PNEUMONIAMNIST_FILE
    if dest.is_file():
        return
    logger.info(
        "PneumoniaMNIST is not in %s; downloading it with medmnist from %s into %s",
        dest.parent,
        medmnist_url(),
        dest.parent,
    )
    created = first_missing(dest.parent)
    try:
        install_pneumoniamnist(None, dest.parent, force=False)
    except DatasetError as exc:
        reason = exc.reason if isinstance(exc, DownloadError) else str(exc)
        raise DatasetError(
            f"PneumoniaMNIST is not in {dest.parent} and downloading it failed ({reason}). Put the file at "
            f"{dest}: download pneumoniamnist.npz from {PNEUMONIAMNIST_RECORD} and copy it there, or install it "
            f"with `pneumonia download-dataset --dataset pneumoniamnist --data-dir {dest.parent} --source FILE`. "
            "Or run with --dataset phantom, which needs no download."
        ) from exc
    finally:
        if not dest.is_file():
            remove_empty_dirs(dest.parent, created)
    logger.info("PneumoniaMNIST downloaded to %s", dest)


def medmnist_url() -> str:
    """Where medmnist downloads the 28 px PneumoniaMNIST from (its INFO table); the Zenodo record without it."""
    try:
        from medmnist.info import INFO
    except ImportError:
        return PNEUMONIAMNIST_RECORD
    return str(INFO["pneumoniamnist"]["url"])


class DownloadError(DatasetError):
    """A download that failed; `reason` is the cause in a few words (e.g. the network error)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def download_medmnist(out_dir: Path) -> Path:
    """PneumoniaMNIST (28 px, all three splits) downloaded by the optional `medmnist` package (a tqdm bar shows)."""
    try:
        from medmnist import PneumoniaMNIST
    except ImportError as exc:
        raise DatasetError(
            "the medmnist package is not installed: pass --source path/to/pneumoniamnist.npz "
            "(from https://medmnist.com), or `pip install medmnist`"
        ) from exc
    logger.debug("medmnist downloads PneumoniaMNIST from %s into %s", medmnist_url(), out_dir)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # medmnist's urllib calls set none
    try:
        PneumoniaMNIST(split="train", download=True, root=str(out_dir))
    except Exception as exc:  # network and checksum errors vary with the medmnist version
        # medmnist catches everything, Ctrl-C included, and raises a long RuntimeError: report the first cause.
        cause = exc.__context__ if isinstance(exc, RuntimeError) and exc.__context__ is not None else exc
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from exc
        reason = str(cause).strip() or repr(cause)
        raise DownloadError(
            f"PneumoniaMNIST download failed ({reason}); pass --source with a local npz", reason
        ) from exc
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return out_dir / PNEUMONIAMNIST_FILE


# ---- atomic installation ----


@contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """A temporary directory beside `dest` (same filesystem, so moves are atomic), removed afterwards."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.staging-"))
    try:
        yield staged
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def replace_dir(new: Path, dest: Path) -> None:
    """Move directory `new` (on dest's filesystem) to `dest`; an existing `dest` is deleted only after the move."""
    if not dest.exists():
        os.replace(new, dest)
        return
    with staging_dir(dest) as trash:
        os.replace(dest, trash / "previous")
        try:
            os.replace(new, dest)
        except OSError:
            os.replace(trash / "previous", dest)
            raise


def first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` (itself or an ancestor) that does not exist yet; None if it exists."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def remove_empty_dirs(path: Path, up_to: Path | None) -> None:
    """Remove `path` and its parents up to `up_to` (included) while they are empty: what a failed install made."""
    if up_to is None:
        return
    for directory in (path, *path.parents):
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # not empty: someone else's
            return
        if directory == up_to:
            return
