import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pneumonia_proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GanLoss(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GAN_LOSS_UNSPECIFIED: _ClassVar[GanLoss]
    GAN_LOSS_BCE: _ClassVar[GanLoss]
    GAN_LOSS_WGAN_GP: _ClassVar[GanLoss]

class GanTrainOn(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GAN_TRAIN_ON_UNSPECIFIED: _ClassVar[GanTrainOn]
    GAN_TRAIN_ON_POSITIVE: _ClassVar[GanTrainOn]
    GAN_TRAIN_ON_ALL: _ClassVar[GanTrainOn]

class ClassBalance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASS_BALANCE_UNSPECIFIED: _ClassVar[ClassBalance]
    CLASS_BALANCE_WEIGHTED_LOSS: _ClassVar[ClassBalance]
    CLASS_BALANCE_SAMPLER: _ClassVar[ClassBalance]
    CLASS_BALANCE_NONE: _ClassVar[ClassBalance]

class LrScheduler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LR_SCHEDULER_UNSPECIFIED: _ClassVar[LrScheduler]
    LR_SCHEDULER_NONE: _ClassVar[LrScheduler]
    LR_SCHEDULER_ONECYCLE: _ClassVar[LrScheduler]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_GAN: _ClassVar[JobKind]
    JOB_KIND_CLASSIFIER: _ClassVar[JobKind]
GAN_LOSS_UNSPECIFIED: GanLoss
GAN_LOSS_BCE: GanLoss
GAN_LOSS_WGAN_GP: GanLoss
GAN_TRAIN_ON_UNSPECIFIED: GanTrainOn
GAN_TRAIN_ON_POSITIVE: GanTrainOn
GAN_TRAIN_ON_ALL: GanTrainOn
CLASS_BALANCE_UNSPECIFIED: ClassBalance
CLASS_BALANCE_WEIGHTED_LOSS: ClassBalance
CLASS_BALANCE_SAMPLER: ClassBalance
CLASS_BALANCE_NONE: ClassBalance
LR_SCHEDULER_UNSPECIFIED: LrScheduler
LR_SCHEDULER_NONE: LrScheduler
LR_SCHEDULER_ONECYCLE: LrScheduler
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_GAN: JobKind
JOB_KIND_CLASSIFIER: JobKind

class StartGanJobRequest(_message.Message):
    __slots__ = ("dataset", "output_prefix", "epochs", "batch_size", "lr", "beta1", "latent_dim", "num_channels", "image_size", "feature_maps_g", "feature_maps_d", "train_on", "conditional", "loss", "gp_weight", "n_critic", "seed", "max_images", "sample_every", "vis_batch_size", "cpu", "resume", "idempotency_key")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MAPS_G_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MAPS_D_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ON_FIELD_NUMBER: _ClassVar[int]
    CONDITIONAL_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GP_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    N_CRITIC_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_EVERY_FIELD_NUMBER: _ClassVar[int]
    VIS_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.DatasetSource
    output_prefix: str
    epochs: int
    batch_size: int
    lr: float
    beta1: float
    latent_dim: int
    num_channels: int
    image_size: int
    feature_maps_g: int
    feature_maps_d: int
    train_on: GanTrainOn
    conditional: bool
    loss: GanLoss
    gp_weight: float
    n_critic: int
    seed: int
    max_images: int
    sample_every: int
    vis_batch_size: int
    cpu: bool
    resume: bool
    idempotency_key: str
    def __init__(self, dataset: _Optional[_Union[_common_pb2.DatasetSource, _Mapping]] = ..., output_prefix: _Optional[str] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., beta1: _Optional[float] = ..., latent_dim: _Optional[int] = ..., num_channels: _Optional[int] = ..., image_size: _Optional[int] = ..., feature_maps_g: _Optional[int] = ..., feature_maps_d: _Optional[int] = ..., train_on: _Optional[_Union[GanTrainOn, str]] = ..., conditional: _Optional[bool] = ..., loss: _Optional[_Union[GanLoss, str]] = ..., gp_weight: _Optional[float] = ..., n_critic: _Optional[int] = ..., seed: _Optional[int] = ..., max_images: _Optional[int] = ..., sample_every: _Optional[int] = ..., vis_batch_size: _Optional[int] = ..., cpu: _Optional[bool] = ..., resume: _Optional[bool] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class StartClassifierJobRequest(_message.Message):
    __slots__ = ("dataset", "synthetic", "output_prefix", "epochs", "batch_size", "lr", "unfreeze", "k_folds", "use_synthetic", "use_curriculum", "curriculum_schedule", "arch", "weights", "weights_checkpoint", "image_size", "channels", "seed", "max_images", "val_fraction", "class_balance", "scheduler", "cpu", "model_archive_name", "weight_decay", "match_compute", "stem_pool", "repeat", "idempotency_key", "shift_severities", "operating_rule", "augmentation")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    UNFREEZE_FIELD_NUMBER: _ClassVar[int]
    K_FOLDS_FIELD_NUMBER: _ClassVar[int]
    USE_SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    USE_CURRICULUM_FIELD_NUMBER: _ClassVar[int]
    CURRICULUM_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CLASS_BALANCE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARCHIVE_NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MATCH_COMPUTE_FIELD_NUMBER: _ClassVar[int]
    STEM_POOL_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SHIFT_SEVERITIES_FIELD_NUMBER: _ClassVar[int]
    OPERATING_RULE_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.DatasetSource
    synthetic: _common_pb2.ObjectPrefix
    output_prefix: str
    epochs: int
    batch_size: int
    lr: float
    unfreeze: bool
    k_folds: int
    use_synthetic: bool
    use_curriculum: bool
    curriculum_schedule: str
    arch: str
    weights: str
    weights_checkpoint: _common_pb2.ObjectRef
    image_size: int
    channels: int
    seed: int
    max_images: int
    val_fraction: float
    class_balance: ClassBalance
    scheduler: LrScheduler
    cpu: bool
    model_archive_name: str
    weight_decay: float
    match_compute: bool
    stem_pool: bool
    repeat: int
    idempotency_key: str
    shift_severities: str
    operating_rule: str
    augmentation: str
    def __init__(self, dataset: _Optional[_Union[_common_pb2.DatasetSource, _Mapping]] = ..., synthetic: _Optional[_Union[_common_pb2.ObjectPrefix, _Mapping]] = ..., output_prefix: _Optional[str] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., unfreeze: _Optional[bool] = ..., k_folds: _Optional[int] = ..., use_synthetic: _Optional[bool] = ..., use_curriculum: _Optional[bool] = ..., curriculum_schedule: _Optional[str] = ..., arch: _Optional[str] = ..., weights: _Optional[str] = ..., weights_checkpoint: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., image_size: _Optional[int] = ..., channels: _Optional[int] = ..., seed: _Optional[int] = ..., max_images: _Optional[int] = ..., val_fraction: _Optional[float] = ..., class_balance: _Optional[_Union[ClassBalance, str]] = ..., scheduler: _Optional[_Union[LrScheduler, str]] = ..., cpu: _Optional[bool] = ..., model_archive_name: _Optional[str] = ..., weight_decay: _Optional[float] = ..., match_compute: _Optional[bool] = ..., stem_pool: _Optional[bool] = ..., repeat: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., shift_severities: _Optional[str] = ..., operating_rule: _Optional[str] = ..., augmentation: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "kind", "state", "epoch", "total_epochs", "fold", "total_folds", "metrics", "message", "outputs", "created_at", "started_at", "finished_at", "model_archive")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    FOLD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FOLDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobKind
    state: _common_pb2.JobState
    epoch: int
    total_epochs: int
    fold: int
    total_folds: int
    metrics: _containers.ScalarMap[str, float]
    message: str
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectRef]
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    model_archive: _common_pb2.ObjectRef
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., epoch: _Optional[int] = ..., total_epochs: _Optional[int] = ..., fold: _Optional[int] = ..., total_folds: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., message: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.ObjectRef, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_archive: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...
