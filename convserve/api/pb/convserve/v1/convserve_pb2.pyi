from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]

class ExplainMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPLAIN_METHOD_GRAD_CAM: _ClassVar[ExplainMethod]
    EXPLAIN_METHOD_HIRES_CAM: _ClassVar[ExplainMethod]
    EXPLAIN_METHOD_OCCLUSION: _ClassVar[ExplainMethod]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_FLOAT32: DataType
EXPLAIN_METHOD_GRAD_CAM: ExplainMethod
EXPLAIN_METHOD_HIRES_CAM: ExplainMethod
EXPLAIN_METHOD_OCCLUSION: ExplainMethod

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "content")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    content: bytes
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., content: _Optional[bytes] = ...) -> None: ...

class EncodedImages(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, files: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Images(_message.Message):
    __slots__ = ("tensor", "encoded")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    encoded: EncodedImages
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., encoded: _Optional[_Union[EncodedImages, _Mapping]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "images", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    images: Images
    top_k: int
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("index", "name", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    score: float
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("top",)
    TOP_FIELD_NUMBER: _ClassVar[int]
    top: _containers.RepeatedCompositeFieldContainer[ClassScore]
    def __init__(self, top: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "probabilities", "predictions", "class_names")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    probabilities: Tensor
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("name", "type", "input_shape", "output_shape", "parameters", "filters", "kernel_size", "strides", "padding", "padding_amount", "dilation_rate", "activation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDES_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    PADDING_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DILATION_RATE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    parameters: int
    filters: int
    kernel_size: _containers.RepeatedScalarFieldContainer[int]
    strides: _containers.RepeatedScalarFieldContainer[int]
    padding: str
    padding_amount: _containers.RepeatedScalarFieldContainer[int]
    dilation_rate: _containers.RepeatedScalarFieldContainer[int]
    activation: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., output_shape: _Optional[_Iterable[int]] = ..., parameters: _Optional[int] = ..., filters: _Optional[int] = ..., kernel_size: _Optional[_Iterable[int]] = ..., strides: _Optional[_Iterable[int]] = ..., padding: _Optional[str] = ..., padding_amount: _Optional[_Iterable[int]] = ..., dilation_rate: _Optional[_Iterable[int]] = ..., activation: _Optional[str] = ...) -> None: ...

class FeatureMapRequest(_message.Message):
    __slots__ = ("model", "images", "layer", "include_pre_activation", "include_images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PRE_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    images: Images
    layer: str
    include_pre_activation: bool
    include_images: bool
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., layer: _Optional[str] = ..., include_pre_activation: _Optional[bool] = ..., include_images: _Optional[bool] = ...) -> None: ...

class FeatureMapResponse(_message.Message):
    __slots__ = ("model", "layer", "activations", "pre_activations", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    PRE_ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    layer: Layer
    activations: Tensor
    pre_activations: Tensor
    images: Tensor
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., layer: _Optional[_Union[Layer, _Mapping]] = ..., activations: _Optional[_Union[Tensor, _Mapping]] = ..., pre_activations: _Optional[_Union[Tensor, _Mapping]] = ..., images: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "images", "layer", "class_index", "method")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    images: Images
    layer: str
    class_index: int
    method: ExplainMethod
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., layer: _Optional[str] = ..., class_index: _Optional[int] = ..., method: _Optional[_Union[ExplainMethod, str]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "layer", "heatmaps", "class_indices", "probabilities", "class_names", "method")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDICES_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    layer: Layer
    heatmaps: Tensor
    class_indices: _containers.RepeatedScalarFieldContainer[int]
    probabilities: Tensor
    class_names: _containers.RepeatedScalarFieldContainer[str]
    method: ExplainMethod
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., layer: _Optional[_Union[Layer, _Mapping]] = ..., heatmaps: _Optional[_Union[Tensor, _Mapping]] = ..., class_indices: _Optional[_Iterable[int]] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., method: _Optional[_Union[ExplainMethod, str]] = ...) -> None: ...

class FiltersRequest(_message.Message):
    __slots__ = ("model", "layer")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    layer: str
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., layer: _Optional[str] = ...) -> None: ...

class FiltersResponse(_message.Message):
    __slots__ = ("model", "layer", "kernels", "biases")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    BIASES_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    layer: Layer
    kernels: Tensor
    biases: Tensor
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., layer: _Optional[_Union[Layer, _Mapping]] = ..., kernels: _Optional[_Union[Tensor, _Mapping]] = ..., biases: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("model", "versions", "class_names", "input", "preprocessing_scale", "preprocessing_offset", "layers", "parameters", "test_accuracy", "test_loss", "created_at", "metadata_json", "origin")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_SCALE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEST_LOSS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    versions: _containers.RepeatedScalarFieldContainer[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    input: InputSpec
    preprocessing_scale: float
    preprocessing_offset: float
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    parameters: int
    test_accuracy: float
    test_loss: float
    created_at: str
    metadata_json: str
    origin: str
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., versions: _Optional[_Iterable[int]] = ..., class_names: _Optional[_Iterable[str]] = ..., input: _Optional[_Union[InputSpec, _Mapping]] = ..., preprocessing_scale: _Optional[float] = ..., preprocessing_offset: _Optional[float] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., parameters: _Optional[int] = ..., test_accuracy: _Optional[float] = ..., test_loss: _Optional[float] = ..., created_at: _Optional[str] = ..., metadata_json: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "versions", "latest_version", "is_default", "class_names", "origin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[int]
    latest_version: int
    is_default: bool
    class_names: _containers.RepeatedScalarFieldContainer[str]
    origin: str
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[int]] = ..., latest_version: _Optional[int] = ..., is_default: _Optional[bool] = ..., class_names: _Optional[_Iterable[str]] = ..., origin: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...
