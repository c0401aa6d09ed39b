from pneumonia_proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GeneratePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATE_PHASE_UNSPECIFIED: _ClassVar[GeneratePhase]
    GENERATE_PHASE_GENERATING: _ClassVar[GeneratePhase]
    GENERATE_PHASE_UPLOADING: _ClassVar[GeneratePhase]
    GENERATE_PHASE_DONE: _ClassVar[GeneratePhase]
GENERATE_PHASE_UNSPECIFIED: GeneratePhase
GENERATE_PHASE_GENERATING: GeneratePhase
GENERATE_PHASE_UPLOADING: GeneratePhase
GENERATE_PHASE_DONE: GeneratePhase

class GenerateRequest(_message.Message):
    __slots__ = ("checkpoint", "label", "count", "seed", "batch_size", "output_prefix")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _common_pb2.ObjectRef
    label: _common_pb2.Label
    count: int
    seed: int
    batch_size: int
    output_prefix: str
    def __init__(self, checkpoint: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., label: _Optional[_Union[_common_pb2.Label, str]] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., batch_size: _Optional[int] = ..., output_prefix: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("images", "manifest", "prefix", "reused")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectRef]
    manifest: _common_pb2.ObjectRef
    prefix: str
    reused: bool
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.ObjectRef, _Mapping]]] = ..., manifest: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., prefix: _Optional[str] = ..., reused: _Optional[bool] = ...) -> None: ...

class GenerateProgress(_message.Message):
    __slots__ = ("phase", "images_done", "images_total", "result")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_DONE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    phase: GeneratePhase
    images_done: int
    images_total: int
    result: GenerateResponse
    def __init__(self, phase: _Optional[_Union[GeneratePhase, str]] = ..., images_done: _Optional[int] = ..., images_total: _Optional[int] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...
