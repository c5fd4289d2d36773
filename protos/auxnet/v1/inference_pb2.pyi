from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_TYPE_UNSPECIFIED: _ClassVar[PixelType]
    PIXEL_TYPE_UINT8: _ClassVar[PixelType]
    PIXEL_TYPE_FLOAT32: _ClassVar[PixelType]

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_CONFIDENCE: _ClassVar[StopReason]
    STOP_REASON_BUDGET: _ClassVar[StopReason]
    STOP_REASON_FINAL: _ClassVar[StopReason]
    STOP_REASON_MAX_EXIT: _ClassVar[StopReason]
    STOP_REASON_CONTINUED: _ClassVar[StopReason]
PIXEL_TYPE_UNSPECIFIED: PixelType
PIXEL_TYPE_UINT8: PixelType
PIXEL_TYPE_FLOAT32: PixelType
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_CONFIDENCE: StopReason
STOP_REASON_BUDGET: StopReason
STOP_REASON_FINAL: StopReason
STOP_REASON_MAX_EXIT: StopReason
STOP_REASON_CONTINUED: StopReason

class RawImage(_message.Message):
    __slots__ = ("data", "height", "width", "channels", "pixel_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PIXEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    height: int
    width: int
    channels: int
    pixel_type: PixelType
    def __init__(self, data: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., pixel_type: _Optional[_Union[PixelType, str]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "encoded", "raw", "budget_ms", "min_confidence", "top_k", "max_exit", "request_id", "calibrated_policy", "priority")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_EXIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_POLICY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    encoded: bytes
    raw: RawImage
    budget_ms: float
    min_confidence: float
    top_k: int
    max_exit: int
    request_id: str
    calibrated_policy: bool
    priority: int
    def __init__(self, model: _Optional[str] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., budget_ms: _Optional[float] = ..., min_confidence: _Optional[float] = ..., top_k: _Optional[int] = ..., max_exit: _Optional[int] = ..., request_id: _Optional[str] = ..., calibrated_policy: _Optional[bool] = ..., priority: _Optional[int] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("label", "class_name", "confidence")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    label: int
    class_name: str
    confidence: float
    def __init__(self, label: _Optional[int] = ..., class_name: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("label", "class_name", "confidence", "top_k", "exit_index", "exit_layer", "stop_reason", "server_latency_ms", "budget_met", "model", "model_version", "request_id")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    EXIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    SERVER_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MET_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    label: int
    class_name: str
    confidence: float
    top_k: _containers.RepeatedCompositeFieldContainer[ClassScore]
    exit_index: int
    exit_layer: int
    stop_reason: StopReason
    server_latency_ms: float
    budget_met: bool
    model: str
    model_version: str
    request_id: str
    def __init__(self, label: _Optional[int] = ..., class_name: _Optional[str] = ..., confidence: _Optional[float] = ..., top_k: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., exit_index: _Optional[int] = ..., exit_layer: _Optional[int] = ..., stop_reason: _Optional[_Union[StopReason, str]] = ..., server_latency_ms: _Optional[float] = ..., budget_met: _Optional[bool] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ClassifyRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ClassifyRequest, _Mapping]]] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ClassifyResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[ClassifyResponse, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ExitInfo(_message.Message):
    __slots__ = ("index", "layer", "params", "mflops", "val_top1", "temperature", "default_threshold", "latency_ms_batch1", "latency_ms_per_image_batched")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MFLOPS_FIELD_NUMBER: _ClassVar[int]
    VAL_TOP1_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_BATCH1_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_PER_IMAGE_BATCHED_FIELD_NUMBER: _ClassVar[int]
    index: int
    layer: int
    params: int
    mflops: float
    val_top1: float
    temperature: float
    default_threshold: float
    latency_ms_batch1: float
    latency_ms_per_image_batched: float
    def __init__(self, index: _Optional[int] = ..., layer: _Optional[int] = ..., params: _Optional[int] = ..., mflops: _Optional[float] = ..., val_top1: _Optional[float] = ..., temperature: _Optional[float] = ..., default_threshold: _Optional[float] = ..., latency_ms_batch1: _Optional[float] = ..., latency_ms_per_image_batched: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "architecture", "classes", "input_shape", "exits", "training_method", "dataset", "policy_val_accuracy", "policy_mean_mflops", "backend", "max_batch_size", "precision", "policy_score")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    EXITS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_METHOD_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    POLICY_VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    POLICY_MEAN_MFLOPS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    POLICY_SCORE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    architecture: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    exits: _containers.RepeatedCompositeFieldContainer[ExitInfo]
    training_method: str
    dataset: str
    policy_val_accuracy: float
    policy_mean_mflops: float
    backend: str
    max_batch_size: int
    precision: str
    policy_score: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., architecture: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., input_shape: _Optional[_Iterable[int]] = ..., exits: _Optional[_Iterable[_Union[ExitInfo, _Mapping]]] = ..., training_method: _Optional[str] = ..., dataset: _Optional[str] = ..., policy_val_accuracy: _Optional[float] = ..., policy_mean_mflops: _Optional[float] = ..., backend: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., precision: _Optional[str] = ..., policy_score: _Optional[str] = ...) -> None: ...
