"""An ONNX classifier trained elsewhere: its served graphs, held to the source graph and to the
course's convolution, served by the server, and every refusal made before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from convserve import artifact
from convserve.artifact import FEATURES_FILE, FILTERS_FILE, ONNX_FILE, Preprocessing
from training.errors import ExportError
from training.export import TOLERANCE
from training.onnx_import import ImportedOnnx, write_onnx_served_form
from training.reference import conv2d

CLASSES = 5
RGB = Preprocessing.for_channels(3, 1 / 127.5, -1.0)
GRAY = Preprocessing.for_channels(1, 1 / 127.5, -1.0)


def _value(name: str, dims: list[Any] | None, elem: int = TensorProto.FLOAT) -> Any:
    return helper.make_tensor_value_info(name, elem, dims)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[Any],
    outputs: list[Any],
    weights: dict[str, np.ndarray],
    **fields: Any,
) -> onnx.ModelProto:
    initializers = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
    graph = helper.make_graph(nodes, "classifier", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **fields)


def _rgb_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "w1": rng.normal(0, 0.3, (4, 3, 3, 3)), "b1": rng.normal(0, 0.1, 4),
        "w2": rng.normal(0, 0.3, (6, 4, 3, 3)), "b2": rng.normal(0, 0.1, 6),
        "fc.weight": rng.normal(0, 0.5, (CLASSES, 6)), "fc.bias": rng.normal(0, 0.1, CLASSES),
    }  # fmt: skip


def _rgb_model(ending: str = "") -> onnx.ModelProto:
    """As torch.onnx.export writes it: [N, 3, 20, 24] → Conv(3→4, 3x3, pads 1) + Relu →
    Conv(4→6, 3x3, stride 2, unnamed) → GlobalAveragePool → Flatten → Gemm → logits."""
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    output = "logits"
    if ending:  # e.g. Softmax, then an Identity as exporters leave them
        nodes[-1].output[0] = "scores"
        nodes += [helper.make_node(ending, ["scores"], ["ended"], axis=1),
                  helper.make_node("Identity", ["ended"], ["output"])]  # fmt: skip
        output = "output"
    inputs, outputs = [_value("input", ["N", 3, 20, 24])], [_value(output, ["N", CLASSES])]
    return _model(nodes, inputs, outputs, _rgb_weights(), producer_name="pytorch",
                  producer_version="2.5.0")  # fmt: skip


def _gray_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """NHWC, input "pixels" [N, 16, 16, 1] and output "probabilities", as convserve's: Transpose →
    Conv(1→3, 3x3, SAME_UPPER, stride 2, no bias) + Relu → Conv(3→2, 3x3, dilation 2,
    pads 2/1) + LeakyRelu → Flatten → MatMul → Softmax."""
    rng = np.random.default_rng(2)
    weights = {"k1": rng.normal(0, 0.3, (3, 1, 3, 3)), "k2": rng.normal(0, 0.3, (2, 3, 3, 3)),
               "b2": rng.normal(0, 0.1, 2), "dense": rng.normal(0, 0.2, (96, CLASSES))}  # fmt: skip
    nodes = [
        helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv", ["nchw", "k1"], ["c1"], "conv", auto_pad="SAME_UPPER", strides=[2, 2]
        ),
        helper.make_node("Relu", ["c1"], ["conv"]),  # named as the layer's features will be
        helper.make_node(
            "Conv", ["conv", "k2", "b2"], ["c2"], "dilated", dilations=[2, 2], pads=[2, 1, 2, 1]
        ),
        helper.make_node("LeakyRelu", ["c2"], ["r2"], alpha=0.1),
        helper.make_node("Flatten", ["r2"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    inputs = [_value("pixels", ["batch", 16, 16, 1])]
    return _model(nodes, inputs, [_value("probabilities", ["batch", CLASSES])], weights), weights


def _import(
    tmp_path: Path, model: onnx.ModelProto, preprocessing: Preprocessing
) -> tuple[ImportedOnnx, Path, onnx.ModelProto]:
    source = tmp_path / "net.onnx"
    onnx.save(model, source)
    directory = tmp_path / "version"
    directory.mkdir()
    return write_onnx_served_form(source, directory, CLASSES, preprocessing), directory, model


def _run(graph: Path | onnx.ModelProto, feeds: dict[str, np.ndarray], names: Any = None) -> Any:
    data = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else str(graph)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


def _pixels(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (6, *shape)).astype(np.float32)


def _assert_close(actual: np.ndarray, expected: np.ndarray | float) -> None:
    """Within training/export.py's tolerance (float32 sums of a few dozen terms)."""
    np.testing.assert_allclose(actual, expected, rtol=TOLERANCE, atol=TOLERANCE)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def test_an_nchw_rgb_classifier_takes_nhwc_pixels_and_gives_probabilities(tmp_path: Path) -> None:
    imported, directory, source = _import(tmp_path, _rgb_model(), RGB)
    assert [entry.path for entry in imported.files] == [ONNX_FILE, FEATURES_FILE, FILTERS_FILE]
    for entry in imported.files:
        entry.verify(directory)
    session = onnxruntime.InferenceSession(
        directory / ONNX_FILE, providers=["CPUExecutionProvider"]
    )
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [
        ("pixels", ["N", 20, 24, 3], "tensor(float)")
    ]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("probabilities", ["N", 5])]
    assert (imported.layout, imported.input_shape) == ("NCHW", (20, 24, 3))
    assert imported.softmax_added
    assert (imported.producer, imported.opset) == ("pytorch 2.5.0", 17)
    assert imported.parameters == sum(w.size for w in _rgb_weights().values())

    pixels = _pixels((20, 24, 3))
    inputs = pixels * np.float32(RGB.scale) + np.float32(RGB.offset)  # what the source sees
    (probabilities,) = session.run(None, {"pixels": pixels})
    (logits,) = _run(source, {"input": inputs.transpose(0, 3, 1, 2)})
    _assert_close(probabilities, _softmax(logits))
    _assert_close(probabilities.sum(axis=1), 1)

    w = _rgb_weights()
    names = ["conv1.pre_activation", "conv1", "conv_1.pre_activation", "conv_1"]
    first_pre, first, second_pre, second = _run(
        directory / FEATURES_FILE, {"pixels": pixels}, names
    )
    kernel1, kernel2 = w["w1"].transpose(2, 3, 1, 0), w["w2"].transpose(2, 3, 1, 0)
    _assert_close(first_pre, conv2d(inputs, kernel1, w["b1"], padding="same"))
    _assert_close(first, np.maximum(first_pre, 0))
    _assert_close(second_pre, conv2d(first, kernel2, w["b2"], strides=2))
    np.testing.assert_array_equal(second, second_pre)  # no activation: the same tensor

    with np.load(directory / FILTERS_FILE) as filters:
        assert sorted(filters.files) == [
            "conv1.bias",
            "conv1.kernel",
            "conv_1.bias",
            "conv_1.kernel",
        ]
        np.testing.assert_array_equal(filters["conv1.kernel"], kernel1.astype(np.float32))
        np.testing.assert_array_equal(filters["conv_1.bias"], w["b2"].astype(np.float32))
    conv1, conv_1 = imported.layers
    assert conv1.describe() == (
        "conv1 Conv2D(4) 20x24x3 → 20x24x4, kernel 3x3, strides 1x1, dilation 1x1, "
        "padding explicit [1, 1, 1, 1], activation relu"
    )
    assert conv_1.describe() == (
        "conv_1 Conv2D(6) 20x24x4 → 9x11x6, kernel 3x3, strides 2x2, dilation 1x1, "
        "padding valid [0, 0, 0, 0], activation linear"
    )
    assert (conv1.parameters, conv_1.parameters) == (4 * 27 + 4, 6 * 36 + 6)


def test_an_nhwc_grayscale_classifier_named_pixels_and_probabilities(tmp_path: Path) -> None:
    model, w = _gray_model()
    imported, directory, source = _import(tmp_path, model, GRAY)
    served = onnx.load(directory / ONNX_FILE)
    onnx.checker.check_model(served, full_check=True)  # one producer per name
    assert [i.name for i in served.graph.input] == ["pixels"]
    assert [o.name for o in served.graph.output] == ["probabilities"]
    assert (imported.layout, imported.input_shape) == ("NHWC", (16, 16, 1))
    assert not imported.softmax_added
    assert imported.producer == ""

    pixels = _pixels((16, 16, 1))
    inputs = pixels * np.float32(GRAY.scale) + np.float32(GRAY.offset)
    (probabilities,) = _run(served, {"pixels": pixels})
    _assert_close(probabilities, _run(source, {"pixels": inputs})[0])
    _assert_close(probabilities.sum(axis=1), 1)

    names = ["conv.pre_activation", "conv", "dilated.pre_activation", "dilated"]
    first_pre, first, second_pre, second = _run(
        directory / FEATURES_FILE, {"pixels": pixels}, names
    )
    kernel1, kernel2 = w["k1"].transpose(2, 3, 1, 0), w["k2"].transpose(2, 3, 1, 0)
    # SAME_UPPER puts the odd pixel after, as TensorFlow's "same" (the reference's) does.
    expected = conv2d(inputs, kernel1, strides=2, padding="same")
    _assert_close(first_pre, expected)
    _assert_close(first, np.maximum(first_pre, 0))
    padded = np.pad(first, ((0, 0), (2, 2), (1, 1), (0, 0)))
    _assert_close(second_pre, conv2d(padded, kernel2, w["b2"], dilation=2))
    _assert_close(second, np.where(second_pre > 0, second_pre, 0.1 * second_pre))
    with np.load(directory / FILTERS_FILE) as filters:
        assert sorted(filters.files) == ["conv.kernel", "dilated.bias", "dilated.kernel"]

    conv, dilated = imported.layers
    assert (conv.input_shape, conv.output_shape) == ((16, 16, 1), (8, 8, 3))
    assert (conv.padding, conv.padding_amount, conv.activation) == ("same", (0, 1, 0, 1), "relu")
    assert (dilated.input_shape, dilated.output_shape) == ((8, 8, 3), (8, 6, 2))
    assert (dilated.padding, dilated.padding_amount) == ("explicit", (2, 2, 1, 1))
    assert (dilated.dilation_rate, dilated.activation) == ((2, 2), "leakyrelu")


@pytest.mark.parametrize(
    ("ending", "appended"), [("", "Softmax"), ("Softmax", "Identity"), ("LogSoftmax", "Exp")]
)
def test_the_served_graph_ends_in_probabilities(tmp_path: Path, ending: str, appended: str) -> None:
    imported, directory, _ = _import(tmp_path, _rgb_model(ending), RGB)
    served = onnx.load(directory / ONNX_FILE)
    assert served.graph.node[-1].op_type == appended
    assert imported.softmax_added == (ending != "Softmax")
    pixels = _pixels((20, 24, 3))
    inputs = (pixels * np.float32(RGB.scale) + np.float32(RGB.offset)).transpose(0, 3, 1, 2)
    (logits,) = _run(_rgb_model(), {"input": inputs})  # the same net without an ending
    (probabilities,) = _run(served, {"pixels": pixels})
    _assert_close(probabilities, _softmax(logits))


def test_a_classifier_without_convolutions_has_no_layers(tmp_path: Path) -> None:
    weights = {"w": np.random.default_rng(4).normal(0, 0.1, (3 * 8 * 8, CLASSES))}
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    model = _model(nodes, [_value("x", ["N", 3, 8, 8])], [_value("logits", ["N", 5])], weights)
    imported, directory, _ = _import(tmp_path, model, RGB)
    assert imported.layers == []
    with np.load(directory / FILTERS_FILE) as filters:
        assert filters.files == []


def test_the_server_serves_an_imported_version(tmp_path: Path) -> None:
    from service.model import Model

    source = tmp_path / "net.onnx"
    onnx.save(_rgb_model(), source)

    def build(directory: Path, version: int) -> artifact.Metadata:
        imported = write_onnx_served_form(source, directory, CLASSES, RGB)
        return artifact.Metadata(
            name="imported", version=version, classes=tuple("abcde"),
            input=artifact.TensorSpec("pixels", imported.input_shape),
            output=artifact.TensorSpec("probabilities", (CLASSES,)), preprocessing=RGB,
            files=tuple(imported.files), layers=tuple(imported.layers),
            parameters=imported.parameters, created_at="2026-01-01T00:00:00+00:00",
        )  # fmt: skip

    model = Model.load(artifact.publish(tmp_path / "models", "imported", build))
    pixels = _pixels((20, 24, 3))
    inputs = (pixels * np.float32(RGB.scale) + np.float32(RGB.offset)).transpose(0, 3, 1, 2)
    assert model.conv_layers == ("conv1", "conv_1")
    _assert_close(model.predict(pixels), _softmax(_run(source, {"input": inputs})[0]))
    maps, pre = model.feature_map(pixels, "conv_1", pre_activation=True)
    assert maps.shape == (6, 9, 11, 6) and pre is not None
    kernel, bias = model.filters("conv1")
    assert kernel.shape == (3, 3, 3, 4) and bias is not None


def _input(dims: list[Any], elem: int = TensorProto.FLOAT) -> Callable[[onnx.ModelProto], None]:
    return lambda model: model.graph.input[0].CopyFrom(_value("input", dims, elem))


def _output(dims: list[Any]) -> Callable[[onnx.ModelProto], None]:
    return lambda model: model.graph.output[0].CopyFrom(_value("logits", dims))


def _node(index: int, node: onnx.NodeProto) -> Callable[[onnx.ModelProto], None]:
    def replace(model: onnx.ModelProto) -> None:
        model.graph.node[index].CopyFrom(node)
        if node.domain:
            model.opset_import.append(helper.make_opsetid(node.domain, 1))

    return replace


def _batch_of_one(model: onnx.ModelProto) -> None:
    """A Reshape to a fixed batch, as `x.view(1, -1)` exports: the graph runs only on 1 image."""
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 6]), "shape"))
    model.graph.node[4].CopyFrom(helper.make_node("Reshape", ["gap", "shape"], ["flat"]))


def _conv(index: int, **attributes: Any) -> Callable[[onnx.ModelProto], None]:
    """Change the rgb model's conv node `index` (0 or 2): its name, its attributes."""
    inputs, output = (["input", "w1", "b1"], "c1") if index == 0 else (["r1", "w2", "b2"], "c2")
    return _node(index, helper.make_node("Conv", inputs, [output], **attributes))


# What each refusal's message says it found, changing the rgb model (None: as it is).
REFUSALS = [
    pytest.param(
        lambda m: m.graph.input.append(_value("mask", ["N", 1])),
        5,
        "2 graph inputs (input, mask)",
        id="inputs",
    ),
    pytest.param(_input(["N", 3, 20]), 5, "input 'input' [N, 3, 20] has rank 3", id="rank"),
    pytest.param(
        _input(["N", 3, 20, 24], TensorProto.UINT8),
        5,
        "input 'input' is UINT8, expected float32",
        id="uint8",
    ),
    pytest.param(_input([1, 3, 20, 24]), 5, "[1, 3, 20, 24] has a fixed batch size 1", id="batch"),
    pytest.param(
        _input(["N", 3, "height", 24]),
        5,
        "[N, 3, height, 24]: expected a fixed height",
        id="dynamic-height",
    ),
    pytest.param(
        _input(["N", 4, 20, 24]), 5, "[N, 4, 20, 24]: expected 1 or 3 channels", id="channels"
    ),
    pytest.param(
        lambda m: m.graph.output.append(_value("c1", ["N", 4, 20, 24])),
        5,
        "2 graph outputs (logits, c1)",
        id="outputs",
    ),
    pytest.param(_output(["N", 5, 1]), 5, "output 'logits' [N, 5, 1] has rank 3", id="output-rank"),
    pytest.param(None, 7, "output 'logits' [N, 5] has 5 classes, expected 7", id="classes"),
    pytest.param(
        _output(["N", "classes"]),
        7,
        "output 'logits' is [18, 5] for 18 images, expected [18, 7]",
        id="classes-found-by-running",
    ),
    pytest.param(
        lambda m: b"not an onnx model", 5, "not an ONNX model that passes onnx.checker", id="bytes"
    ),
    pytest.param(
        lambda m: m.graph.node.append(helper.make_node("Relu", ["nowhere"], ["y"])),
        5,
        "onnx.checker: Nodes in a graph must be topologically sorted, however input 'nowhere'",
        id="checker",
    ),
    pytest.param(
        lambda m: setattr(m.opset_import[0], "version", 99),
        5,
        "Opset 99 is under development",  # ONNX Runtime's words; onnx.checker lets it pass
        id="opset",
    ),
    pytest.param(
        _node(4, helper.make_node("Frobnicate", ["gap"], ["flat"], domain="com.example")),
        5,
        "com.example:Frobnicate(-1) is not a registered function/op",
        id="custom-op",
    ),
    pytest.param(
        _conv(2, name="conv1", strides=[2, 2]),
        5,
        "two Conv layers give the feature output 'conv1'",
        id="duplicate-name",
    ),
    pytest.param(
        _conv(0, auto_pad="SAME_UPPER", dilations=[2, 2]),
        5,
        "Dilation not supported for AutoPadType::SAME_UPPER",  # ONNX Runtime's, at run time
        id="same-dilated",
    ),
    pytest.param(
        _batch_of_one,
        5,
        "The input tensor cannot be reshaped to the requested shape",
        id="reshape-to-one",
    ),
]


@pytest.mark.parametrize(("change", "classes", "found"), REFUSALS)
def test_what_cannot_be_served_is_refused_before_anything_is_written(
    tmp_path: Path, change: Callable[[onnx.ModelProto], Any] | None, classes: int, found: str
) -> None:
    model = _rgb_model()
    data = change(model) if change else None
    source = tmp_path / "net.onnx"
    source.write_bytes(data if isinstance(data, bytes) else model.SerializeToString())
    directory = tmp_path / "version"
    directory.mkdir()
    with pytest.raises(ExportError) as refused:
        write_onnx_served_form(source, directory, classes, RGB)
    assert str(refused.value).startswith(f"{source}: ")
    assert found in str(refused.value)
    assert not any(directory.iterdir())


def test_a_served_graph_that_differs_from_the_source_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference is small enough
    source = tmp_path / "net.onnx"
    onnx.save(_rgb_model(), source)
    directory = tmp_path / "version"
    directory.mkdir()
    with pytest.raises(ExportError) as refused:
        write_onnx_served_form(source, directory, CLASSES, RGB)
    assert str(refused.value).startswith(
        f"{source} → {ONNX_FILE}: output 'probabilities' [18, 5] differs from the source graph's"
    )
    assert not any(directory.iterdir())
