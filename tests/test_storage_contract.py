"""One contract for every ObjectStore: LocalStore in a temp dir and S3Store against a real S3 server."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from minio import Minio
from storage_server import ACCESS_KEY, SECRET_KEY, S3TestServer, free_port, s3_server  # noqa: F401 (fixture)

from shared.errors import ConfigError, PneumoniaError
from shared.storage import (
    InvalidKeyError,
    LocalStore,
    NotFoundError,
    ObjectRef,
    ObjectStore,
    S3Store,
    StorageConfig,
    StorageError,
    StorageUnavailableError,
    open_store,
)
from shared.storage.sync import download_prefix, upload_dir


def s3_store(server: S3TestServer, retries: int = 2, retry_delay: float = 0.01) -> S3Store:
    return S3Store(
        server.endpoint, server.access_key, server.secret_key, secure=False, retries=retries, retry_delay=retry_delay
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "storage")
    return s3_store(request.getfixturevalue("s3_server"))


@pytest.fixture
def bucket(store: ObjectStore) -> str:
    """A fresh bucket per test (the S3 server is shared by the session)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(name)
    return name


def write_behind_the_store(store: ObjectStore, bucket: str, key: str, data: bytes, sha256: str | None) -> None:
    """Store `data` with the given stored sha256 (or none), bypassing the store: a damaged or foreign object."""
    if isinstance(store, LocalStore):
        (store.root / bucket / key).write_bytes(data)
        sha256_path = store.root / ".sha256" / bucket / key
        if sha256 is None:
            sha256_path.unlink()
        else:
            sha256_path.write_text(sha256)
    else:
        host = store.url.removeprefix("http://")
        client = Minio(host, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)
        metadata = None if sha256 is None else {"sha256": sha256}
        client.put_object(bucket, key, io.BytesIO(data), len(data), metadata=metadata)


def files_under(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())


# ---------------------------------------------------------------- the contract, for both backends


def test_put_bytes_round_trip_with_sha256(store: ObjectStore, bucket: str) -> None:
    data = b"\x89PNG fake image bytes \x00\xff"
    ref = store.put_bytes(bucket, "images/patient-1/0001.png", data, content_type="image/png")

    assert ref == ObjectRef(bucket, "images/patient-1/0001.png", hashlib.sha256(data).hexdigest(), len(data))
    assert store.get_bytes(bucket, ref.key) == data
    assert store.stat(bucket, ref.key) == ref
    assert store.exists(bucket, ref.key)
    assert ref.uri == f"s3://{bucket}/images/patient-1/0001.png"


def test_put_file_and_get_file_round_trip(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(6 * 1024 * 1024 + 3)  # several read chunks; a multipart upload on S3
    source = tmp_path / "model.pt"
    source.write_bytes(data)

    ref = store.put_file(bucket, "models/classifier.pt", source)
    assert (ref.sha256, ref.size) == (hashlib.sha256(data).hexdigest(), len(data))

    target = tmp_path / "downloads" / "nested" / "copy.pt"
    assert store.get_file(bucket, "models/classifier.pt", target) == ref
    assert target.read_bytes() == data
    assert files_under(tmp_path / "downloads") == ["nested/copy.pt"]  # no temp file left behind


def test_empty_object_and_long_unicode_key(store: ObjectStore, bucket: str) -> None:
    key = "/".join(["é" * 100] * 5) + "/" + "x" * 19  # exactly 1024 bytes of UTF-8, segments under 255
    assert len(key.encode()) == 1024
    assert store.put_bytes(bucket, key, b"").size == 0
    assert store.get_bytes(bucket, key) == b""
    with pytest.raises(InvalidKeyError, match="longer than 1024 bytes"):
        store.put_bytes(bucket, key + "x", b"")


def test_overwrite_replaces_the_object(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(bucket, "report.json", b"version 1")
    ref = store.put_bytes(bucket, "report.json", b"version 2, longer")

    assert store.get_bytes(bucket, "report.json") == b"version 2, longer"
    assert store.stat(bucket, "report.json") == ref
    assert list(store.list(bucket)) == [ref]


def test_list_is_sorted_and_filtered_by_prefix(store: ObjectStore, bucket: str) -> None:
    keys = ["c", "a/2", "ab", "a/10", "b/x/y", "a/1"]
    refs = {key: store.put_bytes(bucket, key, key.encode() * 3) for key in keys}

    assert list(store.list(bucket)) == [refs[key] for key in sorted(keys)]
    assert [ref.key for ref in store.list(bucket, prefix="a/")] == ["a/1", "a/10", "a/2"]
    assert [ref.key for ref in store.list(bucket, prefix="a")] == ["a/1", "a/10", "a/2", "ab"]
    assert [ref.key for ref in store.list(bucket, prefix="b/x/")] == ["b/x/y"]
    assert list(store.list(bucket, prefix="zz")) == []


def test_delete_removes_the_object_and_is_idempotent(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(bucket, "runs/1/a.txt", b"a")
    kept = store.put_bytes(bucket, "runs/2/b.txt", b"b")

    store.delete(bucket, "runs/1/a.txt")
    store.delete(bucket, "runs/1/a.txt")

    assert not store.exists(bucket, "runs/1/a.txt")
    with pytest.raises(NotFoundError, match="runs/1/a.txt"):
        store.get_bytes(bucket, "runs/1/a.txt")
    assert list(store.list(bucket)) == [kept]


def test_missing_objects_and_buckets_raise_not_found(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    for operation in (
        lambda: store.get_bytes(bucket, "missing.png"),
        lambda: store.get_file(bucket, "missing.png", target),
        lambda: store.stat(bucket, "missing.png"),
    ):
        with pytest.raises(NotFoundError, match="missing.png"):
            operation()
    assert not target.exists()
    assert not store.exists(bucket, "missing.png")

    for operation in (
        lambda: store.put_bytes("no-such-bucket", "a", b"x"),
        lambda: store.get_bytes("no-such-bucket", "a"),
        lambda: list(store.list("no-such-bucket")),
    ):
        with pytest.raises(NotFoundError, match="no-such-bucket"):
            operation()


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "..", "a/./b", "a//b", "dir/", "a\\b", "nul\x00", "line\nbreak", "del\x7f"]
)
def test_invalid_keys_are_rejected(store: ObjectStore, bucket: str, key: str) -> None:
    with pytest.raises(InvalidKeyError, match="invalid object key"):
        store.put_bytes(bucket, key, b"x")
    with pytest.raises(InvalidKeyError, match="invalid object key"):
        store.get_bytes(bucket, key)
    assert list(store.list(bucket)) == []


@pytest.mark.parametrize(
    "name", ["ab", "Upper-case", "under_score", "-dash-first", "dash-last-", "a..b", "a.-b", "192.168.1.1", "x" * 64]
)
def test_invalid_bucket_names_are_rejected(store: ObjectStore, name: str) -> None:
    with pytest.raises(InvalidKeyError, match="invalid bucket name"):
        store.ensure_bucket(name)
    with pytest.raises(InvalidKeyError, match="invalid bucket name"):
        store.put_bytes(name, "a", b"x")


def test_invalid_listing_prefix_is_rejected(store: ObjectStore, bucket: str) -> None:
    with pytest.raises(InvalidKeyError, match="prefix"):
        store.list(bucket, prefix="a/../")


def test_corrupt_object_is_detected_and_get_file_keeps_the_old_file(
    store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    good = store.put_bytes(bucket, "scan.png", b"original bytes")
    write_behind_the_store(store, bucket, "scan.png", b"bit-rotted bytes", good.sha256)

    with pytest.raises(StorageError, match="corrupt"):
        store.get_bytes(bucket, "scan.png")
    target = tmp_path / "downloads" / "scan.png"
    target.parent.mkdir()
    target.write_bytes(b"what was here before")
    with pytest.raises(StorageError, match="corrupt"):
        store.get_file(bucket, "scan.png", target)
    assert target.read_bytes() == b"what was here before"
    assert files_under(target.parent) == ["scan.png"]  # the partial download was removed


def test_object_without_stored_sha256_is_refused(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(bucket, "foreign.bin", b"x")
    write_behind_the_store(store, bucket, "foreign.bin", b"written by another tool", None)

    for operation in (lambda: store.stat(bucket, "foreign.bin"), lambda: store.get_bytes(bucket, "foreign.bin")):
        with pytest.raises(StorageError, match="no stored sha256"):
            operation()


def test_storage_errors_are_user_facing_errors() -> None:
    for error in (StorageError, StorageUnavailableError, NotFoundError, InvalidKeyError):
        assert issubclass(error, StorageError) and issubclass(error, PneumoniaError)


# ---------------------------------------------------------------- LocalStore specifics


def test_local_objects_are_plain_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.ensure_bucket("images")
    ref = store.put_bytes("images", "p1/scan.png", b"png")
    assert (tmp_path / "images" / "p1" / "scan.png").read_bytes() == b"png"
    assert (tmp_path / ".sha256" / "images" / "p1" / "scan.png").read_text().strip() == ref.sha256


def test_local_failed_write_leaves_no_object_and_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.ensure_bucket("runs")
    kept = store.put_bytes("runs", "a/b", b"kept")
    before = files_under(tmp_path)

    with pytest.raises(StorageError, match="cannot write s3://runs/a"):
        store.put_bytes("runs", "a", b"a key that is already a directory")
    if Path("/proc/self/mem").is_file():  # a readable-looking file whose first read fails (EIO): a mid-stream error
        with pytest.raises(StorageError, match="s3://runs/unreadable"):
            store.put_file("runs", "unreadable", "/proc/self/mem")
    with pytest.raises(StorageError, match="file to upload not found"):
        store.put_file("runs", "missing", tmp_path / "no-such-file")

    assert files_under(tmp_path) == before
    assert [ref.key for ref in store.list("runs")] == ["a/b"]
    assert store.get_bytes("runs", "a/b") == b"kept" and store.stat("runs", "a/b") == kept


def test_local_delete_prunes_empty_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.ensure_bucket("runs")
    store.put_bytes("runs", "a/b/c", b"x")
    store.delete("runs", "a/b/c")

    assert not (tmp_path / "runs" / "a").exists()
    assert store.put_bytes("runs", "a", b"now a plain object").key == "a"


# ---------------------------------------------------------------- S3Store outages


def test_s3_outage_raises_unavailable_after_the_retries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = S3TestServer(tmp_path / "s3-data")
    server.start()
    try:
        store = s3_store(server, retries=3, retry_delay=0.01)
        store.ensure_bucket("outage")
        ref = store.put_bytes("outage", "model.pt", b"weights")
    finally:
        server.stop()

    caplog.set_level(logging.WARNING, logger="shared.storage.s3")
    started = time.monotonic()
    with pytest.raises(
        StorageUnavailableError,
        match=rf"object storage at http://127\.0\.0\.1:{server.port} is unreachable after 3 attempts: .*refused",
    ):
        store.get_bytes("outage", "model.pt")
    assert time.monotonic() - started < 5
    retries = [record for record in caplog.records if "retrying" in record.getMessage()]
    assert len(retries) == 2
    assert server.secret_key not in caplog.text

    server.start()  # the server comes back: the same store works again
    try:
        assert store.stat("outage", "model.pt") == ref
    finally:
        server.stop()


def test_s3_retries_ride_out_a_short_outage(tmp_path: Path) -> None:
    server = S3TestServer(tmp_path / "s3-data")
    server.start()
    try:
        store = s3_store(server, retries=8, retry_delay=0.05)
        store.ensure_bucket("blip")
        store.put_bytes("blip", "x", b"survives")
    finally:
        server.stop()

    restart = threading.Timer(0.3, server.start)
    restart.start()
    try:
        assert store.get_bytes("blip", "x") == b"survives"
    finally:
        restart.join()
        server.stop()


# ---------------------------------------------------------------- configuration


def test_config_defaults_to_a_local_store() -> None:
    config = StorageConfig.from_env({})
    assert config == StorageConfig(backend="local", root=Path("storage"), secure=True, retries=4, retry_delay=0.5)
    assert isinstance(open_store(config), LocalStore)


def test_config_from_env_opens_a_working_s3_store(s3_server: S3TestServer) -> None:  # noqa: F811 (fixture)
    env = {
        "PNEUMONIA_STORAGE_BACKEND": "s3",
        "PNEUMONIA_S3_ENDPOINT": s3_server.endpoint,
        "PNEUMONIA_S3_ACCESS_KEY": s3_server.access_key,
        "PNEUMONIA_S3_SECRET_KEY": s3_server.secret_key,
        "PNEUMONIA_S3_SECURE": "false",
        "PNEUMONIA_S3_REGION": "",
        "PNEUMONIA_STORAGE_RETRIES": "2",
        "PNEUMONIA_STORAGE_RETRY_DELAY": "0.01",
    }
    config = StorageConfig.from_env(env)
    assert (config.retries, config.retry_delay, config.secure, config.region) == (2, 0.01, False, None)
    assert s3_server.secret_key not in repr(config) and s3_server.access_key not in repr(config)

    store = open_store(config)
    store.ensure_bucket("from-env")
    assert store.get_bytes("from-env", store.put_bytes("from-env", "k", b"v").key) == b"v"

    closed = open_store(StorageConfig.from_env({**env, "PNEUMONIA_S3_ENDPOINT": f"127.0.0.1:{free_port()}"}))
    with pytest.raises(StorageUnavailableError, match="unreachable after 2 attempts"):
        closed.ensure_bucket("from-env")


S3_ENV = {
    "PNEUMONIA_STORAGE_BACKEND": "s3",
    "PNEUMONIA_S3_ENDPOINT": "minio:9000",
    "PNEUMONIA_S3_ACCESS_KEY": "key",
    "PNEUMONIA_S3_SECRET_KEY": "secret",
}


@pytest.mark.parametrize("missing", ["PNEUMONIA_S3_ENDPOINT", "PNEUMONIA_S3_ACCESS_KEY", "PNEUMONIA_S3_SECRET_KEY"])
def test_config_names_the_missing_s3_variable(missing: str) -> None:
    with pytest.raises(ConfigError, match=f"{missing} must be set"):
        StorageConfig.from_env({name: value for name, value in S3_ENV.items() if name != missing})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PNEUMONIA_STORAGE_BACKEND", "gcs"),
        ("PNEUMONIA_S3_SECURE", "yes"),
        ("PNEUMONIA_STORAGE_RETRIES", "0"),
        ("PNEUMONIA_STORAGE_RETRIES", "two"),
        ("PNEUMONIA_STORAGE_RETRY_DELAY", "-1"),
        ("PNEUMONIA_S3_ENDPOINT", "http://minio:9000"),
    ],
)
def test_config_rejects_bad_values_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        StorageConfig.from_env({**S3_ENV, name: value})


# --- shared.storage.sync: whole prefixes to and from a directory, on both backends ---------------------------------


def test_upload_dir_then_download_prefix_round_trips_a_tree(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)))
    uploaded = upload_dir(store, src, bucket, "runs/r1")
    assert [ref.key for ref in uploaded] == ["runs/r1/a.txt", "runs/r1/sub/b.bin"]
    store.put_bytes(bucket, "runs/r10/other.txt", b"a sibling prefix that must not be downloaded")

    dest = tmp_path / "dest"
    downloaded = download_prefix(store, bucket, "runs/r1", dest)
    assert [ref.key for ref in downloaded] == ["runs/r1/a.txt", "runs/r1/sub/b.bin"]
    assert (dest / "a.txt").read_bytes() == b"alpha"
    assert (dest / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert not (dest / "other.txt").exists()


def test_download_prefix_replaces_a_stale_local_copy_and_keeps_a_current_one(
    store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    store.put_bytes(bucket, "data/x.txt", b"stored")
    store.put_bytes(bucket, "data/y.txt", b"same")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x.txt").write_bytes(b"stale!")
    (dest / "y.txt").write_bytes(b"same")
    mtime = (dest / "y.txt").stat().st_mtime_ns
    download_prefix(store, bucket, "data/", dest)
    assert (dest / "x.txt").read_bytes() == b"stored"
    assert (dest / "y.txt").stat().st_mtime_ns == mtime  # already current: not downloaded again


def test_upload_dir_skips_objects_already_stored_unchanged(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    (tmp_path / "same.txt").write_bytes(b"unchanged")
    (tmp_path / "new.txt").write_bytes(b"version 2")
    store.put_bytes(bucket, "d/same.txt", b"unchanged")
    store.put_bytes(bucket, "d/new.txt", b"version 1")
    kept = store.stat(bucket, "d/same.txt")
    local_file = store.root / bucket / "d/same.txt" if isinstance(store, LocalStore) else None
    before = local_file.stat().st_mtime_ns if local_file else None
    refs = {ref.key: ref for ref in upload_dir(store, tmp_path, bucket, "d/")}
    assert refs["d/same.txt"] == kept
    if local_file is not None:  # not written again
        assert local_file.stat().st_mtime_ns == before
    assert store.get_bytes(bucket, "d/new.txt") == b"version 2" and refs["d/new.txt"].size == len(b"version 2")


def test_download_prefix_of_nothing_is_not_found(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no objects under"):
        download_prefix(store, bucket, "missing/", tmp_path)


def test_s3_store_shared_by_threads_keeps_its_connections(
    s3_server: S3TestServer,  # noqa: F811 (fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A service's threads share one store: urllib3 must not discard connections ("Connection pool is full"), as it
    did with its default of one connection per host."""
    store = s3_store(s3_server)
    store.ensure_bucket("pool")

    def round_trip(index: int) -> bytes:
        store.put_bytes("pool", f"object-{index}", bytes([index]) * 1000)
        return store.get_bytes("pool", f"object-{index}")

    with caplog.at_level(logging.WARNING, logger="urllib3"), ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(round_trip, range(64)))
    assert results == [bytes([index]) * 1000 for index in range(64)]
    assert not [r for r in caplog.records if "Connection pool is full" in r.getMessage()]


# ---------------------------------------------------------------- LocalStore: a writer killed mid-put

KILLED_WRITER = """
import os, signal, sys
from shared.storage import LocalStore

root, key, moment = sys.argv[1:]
store = LocalStore(root)
replace = os.replace

def replace_then_maybe_die(src, dst):  # os.replace(temp file, object) is the moment the bytes change
    if moment == "before the bytes" and os.fspath(dst).endswith(key) and "/.sha256/" not in os.fspath(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)
    if moment == "after the bytes" and os.fspath(dst).endswith(key) and "/.sha256/" not in os.fspath(dst):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_maybe_die
store.put_bytes("runs", key, b"the new bytes")
"""


@pytest.mark.parametrize("moment", ["before the bytes", "after the bytes"])
def test_local_writer_killed_mid_put_leaves_a_readable_object(tmp_path: Path, moment: str) -> None:
    """kill -9 between writing an object's bytes and its checksum (or just before the bytes): the object reads as
    the complete old or new version, never as corrupt, and reopening the store later sweeps what the writer left."""
    store = LocalStore(tmp_path)
    store.ensure_bucket("runs")
    old = store.put_bytes("runs", "a/model.pth", b"the old bytes")
    result = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path), "a/model.pth", moment], capture_output=True, timeout=60
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]

    reopened = LocalStore(tmp_path)  # what was left is younger than STALE_AFTER_S: kept
    expected = b"the old bytes" if moment == "before the bytes" else b"the new bytes"
    assert reopened.get_bytes("runs", "a/model.pth") == expected
    ref = reopened.stat("runs", "a/model.pth")
    assert ref.sha256 == hashlib.sha256(expected).hexdigest() and (ref == old) == (moment == "before the bytes")
    assert [item.key for item in reopened.list("runs")] == ["a/model.pth"]

    # before the bytes: its temp file and pending checksum; after: the reader above completed the put
    assert reopened.sweep_stale(older_than_s=0) == (2 if moment == "before the bytes" else 0)
    leftovers = [path for path in files_under(tmp_path) if path.startswith((".tmp/", ".pending/"))]
    assert leftovers == []
    assert LocalStore(tmp_path).get_bytes("runs", "a/model.pth") == expected


def test_local_sweep_completes_a_put_killed_after_its_bytes_before_removing_it(tmp_path: Path) -> None:
    """A pending checksum left by a killed writer whose bytes are in place: the sweep completes the put."""
    store = LocalStore(tmp_path)
    store.ensure_bucket("runs")
    result = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path), "new.bin", "after the bytes"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL
    assert not (tmp_path / ".sha256" / "runs" / "new.bin").exists()  # killed before its checksum
    assert store.sweep_stale(older_than_s=0) == 1
    assert (tmp_path / ".sha256" / "runs" / "new.bin").read_text().strip() == hashlib.sha256(
        b"the new bytes"
    ).hexdigest()
    assert store.get_bytes("runs", "new.bin") == b"the new bytes"
