"""ObjectRef <-> its protobuf message (pneumonia.v1.ObjectRef), for every service that names stored objects."""

from __future__ import annotations

from pneumonia_proto.v1 import common_pb2

from shared.storage.base import ObjectRef


def ref_to_proto(ref: ObjectRef) -> common_pb2.ObjectRef:
    """A stored object's reference as the message the services' APIs carry."""
    return common_pb2.ObjectRef(bucket=ref.bucket, key=ref.key, sha256=ref.sha256, size=ref.size)


def ref_from_proto(message: common_pb2.ObjectRef) -> ObjectRef:
    """The message's fields as they are (no defaults, no validation: a request's reference is checked where it is
    read)."""
    return ObjectRef(message.bucket, message.key, message.sha256, message.size)
