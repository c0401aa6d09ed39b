"""Object storage: one ObjectStore interface, a LocalStore (directory) and an S3Store (MinIO or any S3).

from shared.storage import open_store
store = open_store()                      # configured by PNEUMONIA_* variables, see shared.storage.config
store.ensure_bucket("models")
ref = store.put_file("models", "classifier/best.pt", "runs/best.pt")   # ObjectRef(bucket, key, sha256, size)
store.get_file(ref.bucket, ref.key, "/tmp/best.pt")                     # verified against ref's sha256
"""

from shared.storage.base import (
    CorruptObjectError,
    InvalidKeyError,
    NotFoundError,
    ObjectRef,
    ObjectStore,
    StorageError,
    StorageUnavailableError,
)
from shared.storage.config import StorageConfig, open_store
from shared.storage.local import LocalStore
from shared.storage.s3 import S3Store

__all__ = [
    "CorruptObjectError",
    "InvalidKeyError",
    "LocalStore",
    "NotFoundError",
    "ObjectRef",
    "ObjectStore",
    "S3Store",
    "StorageConfig",
    "StorageError",
    "StorageUnavailableError",
    "open_store",
]
