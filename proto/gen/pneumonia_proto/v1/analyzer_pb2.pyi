from pneumonia_proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnalyzeRequest(_message.Message):
    __slots__ = ("metrics", "models", "synthetic", "output", "dataset", "generator", "arch", "num_ssim_real", "num_ssim_synth", "num_gradcam_samples", "num_reference_real", "seed", "cpu", "memorization_threshold", "tstr_images", "tstr_epochs", "tstr_image_size", "skip_plots", "skip_ssim", "skip_gradcam", "skip_fidelity", "skip_memorization", "skip_tstr")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    NUM_SSIM_REAL_FIELD_NUMBER: _ClassVar[int]
    NUM_SSIM_SYNTH_FIELD_NUMBER: _ClassVar[int]
    NUM_GRADCAM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_REFERENCE_REAL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORIZATION_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TSTR_IMAGES_FIELD_NUMBER: _ClassVar[int]
    TSTR_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TSTR_IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SKIP_PLOTS_FIELD_NUMBER: _ClassVar[int]
    SKIP_SSIM_FIELD_NUMBER: _ClassVar[int]
    SKIP_GRADCAM_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIDELITY_FIELD_NUMBER: _ClassVar[int]
    SKIP_MEMORIZATION_FIELD_NUMBER: _ClassVar[int]
    SKIP_TSTR_FIELD_NUMBER: _ClassVar[int]
    metrics: _common_pb2.ObjectPrefix
    models: _common_pb2.ObjectPrefix
    synthetic: _common_pb2.ObjectPrefix
    output: _common_pb2.ObjectPrefix
    dataset: _common_pb2.DatasetSource
    generator: _common_pb2.ObjectRef
    arch: str
    num_ssim_real: int
    num_ssim_synth: int
    num_gradcam_samples: int
    num_reference_real: int
    seed: int
    cpu: bool
    memorization_threshold: float
    tstr_images: int
    tstr_epochs: int
    tstr_image_size: int
    skip_plots: bool
    skip_ssim: bool
    skip_gradcam: bool
    skip_fidelity: bool
    skip_memorization: bool
    skip_tstr: bool
    def __init__(self, metrics: _Optional[_Union[_common_pb2.ObjectPrefix, _Mapping]] = ..., models: _Optional[_Union[_common_pb2.ObjectPrefix, _Mapping]] = ..., synthetic: _Optional[_Union[_common_pb2.ObjectPrefix, _Mapping]] = ..., output: _Optional[_Union[_common_pb2.ObjectPrefix, _Mapping]] = ..., dataset: _Optional[_Union[_common_pb2.DatasetSource, _Mapping]] = ..., generator: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., arch: _Optional[str] = ..., num_ssim_real: _Optional[int] = ..., num_ssim_synth: _Optional[int] = ..., num_gradcam_samples: _Optional[int] = ..., num_reference_real: _Optional[int] = ..., seed: _Optional[int] = ..., cpu: _Optional[bool] = ..., memorization_threshold: _Optional[float] = ..., tstr_images: _Optional[int] = ..., tstr_epochs: _Optional[int] = ..., tstr_image_size: _Optional[int] = ..., skip_plots: _Optional[bool] = ..., skip_ssim: _Optional[bool] = ..., skip_gradcam: _Optional[bool] = ..., skip_fidelity: _Optional[bool] = ..., skip_memorization: _Optional[bool] = ..., skip_tstr: _Optional[bool] = ...) -> None: ...

class AnalyzeResponse(_message.Message):
    __slots__ = ("reports", "summary", "skipped")
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectRef]
    summary: _common_pb2.ObjectRef
    skipped: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reports: _Optional[_Iterable[_Union[_common_pb2.ObjectRef, _Mapping]]] = ..., summary: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., skipped: _Optional[_Iterable[str]] = ...) -> None: ...
