"""The served form of an ONNX classifier trained elsewhere (e.g. PyTorch → ONNX), checked
against the source graph.

The source graph is kept as it is and wrapped with onnx.helper: the preprocessing (and a
transpose, for a channels-first source) in front, a softmax behind when it ends in logits, so
that it takes and gives what convserve's own graphs do (see convserve.artifact). Nothing is
written until ONNX Runtime has run the wrapped graphs and the source on the same images and
every output agrees (within training/export.py's TOLERANCE, see `beyond_tolerance`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import helper, numpy_helper

from convserve import artifact
from convserve.artifact import (
    FEATURES_FILE,
    FILTERS_FILE,
    ONNX_FILE,
    ONNX_LOG_ERRORS_ONLY,
    PIXELS,
    PROBABILITIES,
    FileEntry,
    Layer,
    Preprocessing,
)
from training.errors import ExportError
from training.export import beyond_tolerance
from training.reference import output_size, same_padding

__all__ = ["ACTIVATIONS", "ImportedOnnx", "write_onnx_served_form"]

# The ops that are a conv layer's activation when they are the convolution's one consumer.
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Elu", "Selu",
                         "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Clip", "Gelu",
                         "Mish"})  # fmt: skip
CHECK_IMAGES = 16  # seeded random images the graphs are checked on, with an all-0 and all-255
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
FLOAT = onnx.TensorProto.FLOAT
FLOAT_TYPES = {FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class ImportedOnnx:
    """What `write_onnx_served_form` wrote and what it found in the source, for metadata.json."""

    files: list[FileEntry]  # model.onnx, features.onnx, filters.npz
    input_shape: tuple[int, int, int]  # height, width, channels: what callers send (NHWC)
    layout: str  # "NCHW" or "NHWC": the source graph's input layout
    layers: list[Layer]  # one per 2-D convolution, in graph order
    parameters: int  # the elements of the graph's float initializers
    producer: str  # e.g. "pytorch 2.5.0"; "" if the file names none
    opset: int  # of the default domain
    softmax_added: bool  # the graph ended in logits (or log-probabilities), not probabilities


@dataclass(frozen=True)
class _Conv:
    """A Conv node with a 4-D weight initializer, and the activation after it if any."""

    name: str
    node: onnx.NodeProto
    weight: np.ndarray  # [C_out, C_in/group, KH, KW]
    bias: np.ndarray | None
    activation: onnx.NodeProto | None

    @property
    def output(self) -> str:
        """The tensor the layer shows: the activation's output, else the convolution's."""
        return (self.activation or self.node).output[0]

    @property
    def feature_names(self) -> tuple[str, str]:
        """The names of its outputs in features.onnx: its maps and its pre-activations."""
        return self.name, artifact.pre_activation(self.name)


@dataclass(frozen=True)
class _Source:
    """A source graph that passed the refusals."""

    model: onnx.ModelProto
    input: str
    layout: str
    input_shape: tuple[int, int, int]
    output: str
    convs: list[_Conv]


def write_onnx_served_form(
    source: Path, directory: Path, classes: int, preprocessing: Preprocessing
) -> ImportedOnnx:
    """Write model.onnx, features.onnx and filters.npz into `directory` for the ONNX classifier
    `source` of `classes` classes, whose graph takes pixels · scale + offset (`preprocessing`)
    of a batch of images [N, C, H, W] or [N, H, W, C] and gives [N, classes].

    Raises ExportError naming `source` for a graph that cannot be served as convserve serves
    (see convserve.artifact), or whose served form ONNX Runtime does not compute as it computes
    the source; nothing is written into `directory` then.
    """
    read = _read(source, classes)
    rng = np.random.default_rng(0)
    random = rng.integers(0, 256, (CHECK_IMAGES, *read.input_shape)).astype(np.float32)
    pixels = np.concatenate([random, np.zeros_like(random[:1]), np.full_like(random[:1], 255)])
    images = pixels.transpose(TO_NCHW) if read.layout == "NCHW" else pixels
    feed = {read.input: images * np.float32(preprocessing.scale) + np.float32(preprocessing.offset)}
    (outputs,) = _run(str(source), read.model, feed, [read.output])
    if outputs.shape != (len(pixels), classes):
        raise ExportError(
            f"{source}: output {read.output!r} is {list(outputs.shape)} for {len(pixels)} "
            f"images, expected [{len(pixels)}, {classes}] ({classes} classes)"
        )
    # The source's own intermediate tensors, NCHW: each conv's input, output and activation.
    taps = [(conv.node.input[0], conv.node.output[0], conv.output) for conv in read.convs]
    names = [name for name in dict.fromkeys(sum(taps, ())) if name != read.input]
    found = dict(feed)
    if names:
        tapped = _run(str(source), _with_outputs(read.model, names), feed, names)
        found |= zip(names, tapped, strict=True)
    layers = [_layer(source, conv, found) for conv in read.convs]

    served, renames, ending = _wrap(read, classes, preprocessing)
    if ending == "LogSoftmax":
        outputs = np.exp(outputs)
    elif ending != "Softmax":
        exp = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        outputs = exp / exp.sum(axis=1, keepdims=True)
    _check(f"{source} → {ONNX_FILE}", served, pixels, {PROBABILITIES: outputs})
    features = _features(served, read.convs, layers, renames)
    maps = {}
    for conv in read.convs:
        maps[artifact.pre_activation(conv.name)] = found[conv.node.output[0]].transpose(TO_NHWC)
        maps[conv.name] = found[conv.output].transpose(TO_NHWC)
    _check(f"{source} → {FEATURES_FILE}", features, pixels, maps)

    (directory / ONNX_FILE).write_bytes(served.SerializeToString())
    (directory / FEATURES_FILE).write_bytes(features.SerializeToString())
    filters = {artifact.kernel(conv.name): conv.weight.transpose(2, 3, 1, 0) for conv in read.convs}
    filters |= {artifact.bias(conv.name): conv.bias for conv in read.convs if conv.bias is not None}
    np.savez(directory / FILTERS_FILE, **filters)  # type: ignore[arg-type]
    model = read.model
    return ImportedOnnx(
        files=[FileEntry.of(directory / name) for name in (ONNX_FILE, FEATURES_FILE, FILTERS_FILE)],
        input_shape=read.input_shape,
        layout=read.layout,
        layers=layers,
        parameters=sum(
            int(np.prod(init.dims))
            for init in model.graph.initializer
            if init.data_type in FLOAT_TYPES
        ),
        producer=" ".join(filter(None, (model.producer_name, model.producer_version))),
        opset=next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0),
        softmax_added=ending != "Softmax",
    )


def _read(source: Path, classes: int) -> _Source:
    """The source graph, or ExportError for one the server could not feed or read."""
    try:
        model = onnx.load(source)
        onnx.checker.check_model(model)
    except Exception as exc:  # OSError, protobuf's DecodeError, the checker's ValidationError
        raise ExportError(f"{source}: not an ONNX model that passes onnx.checker: {exc}") from exc
    graph = model.graph
    initializers = {init.name for init in graph.initializer}  # old IR versions list them too
    inputs = [value for value in graph.input if value.name not in initializers]
    for kind, values in (("inputs", inputs), ("outputs", list(graph.output))):
        if len(values) != 1:
            raise ExportError(
                f"{source}: {len(values)} graph {kind} ({', '.join(v.name for v in values)}), "
                f"expected one: a batch of images → [N, {classes}] class scores"
            )
    (value,), output = inputs, graph.output[0]
    where = f"{source}: input {value.name!r}"
    dims = _dims(where, value, 4, "[N, C, H, W] or [N, H, W, C]")
    if dims is None:
        raise ExportError(f"{where} has no shape, expected [N, C, H, W] or [N, H, W, C]")
    where += f" {_show(dims)}"
    if isinstance(dims[0], int):
        raise ExportError(
            f"{where} has a fixed batch size {dims[0]}, expected a dynamic one (a dim_param "
            "such as 'N': torch.onnx.export's dynamic_axes or dynamic_shapes)"
        )
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise ExportError(f"{where}: expected a fixed height, width and channels")
    first, middle, last = (int(d) for d in dims[1:])
    if first in (1, 3):
        layout, shape = "NCHW", (middle, last, first)
    elif last in (1, 3):
        layout, shape = "NHWC", (first, middle, last)
    else:
        raise ExportError(f"{where}: expected 1 or 3 channels (grayscale or RGB), first or last")
    scores = _dims(f"{source}: output {output.name!r}", output, 2, f"[N, {classes}]")
    if scores is not None and isinstance(scores[1], int) and scores[1] != classes:
        raise ExportError(
            f"{source}: output {output.name!r} {_show(scores)} has {scores[1]} classes, "
            f"expected {classes}"
        )
    return _Source(model, value.name, layout, shape, output.name, _convs(source, graph))


def _dims(
    where: str, value: onnx.ValueInfoProto, rank: int, expected: str
) -> list[int | str] | None:
    """A float32 tensor's dimensions, sizes or names ("?": unnamed); None if not recorded."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type != FLOAT:
        kind = value.type.WhichOneof("value")
        found = onnx.TensorProto.DataType.Name(tensor.elem_type) if kind == "tensor_type" else kind
        raise ExportError(f"{where} is {found}, expected float32 (FLOAT) {expected}")
    if not tensor.HasField("shape"):
        return None
    dims = [
        d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in tensor.shape.dim
    ]
    if len(dims) != rank:
        raise ExportError(f"{where} {_show(dims)} has rank {len(dims)}, expected {expected}")
    return dims


def _show(dims: list[int | str]) -> str:
    return f"[{', '.join(map(str, dims))}]"


def _convs(source: Path, graph: onnx.GraphProto) -> list[_Conv]:
    """The graph's 2-D convolutions whose weights are initializers: its conv layers."""
    weights = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}
    convs: list[_Conv] = []
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "Conv" else None
        if node.domain not in DEFAULT_DOMAINS or weight is None or len(weight.dims) != 4:
            continue
        bias = weights.get(node.input[2]) if len(node.input) > 2 else None
        after = consumers.get(node.output[0], [])
        follows = len(after) == 1 and node.output[0] not in outputs
        follows = (
            follows and after[0].op_type in ACTIVATIONS and after[0].input[0] == node.output[0]
        )
        activation = after[0] if follows else None
        name = node.name or f"conv_{len(convs)}"
        weight_array = numpy_helper.to_array(weight).astype(np.float32)
        bias_array = None if bias is None else numpy_helper.to_array(bias).astype(np.float32)
        convs.append(_Conv(name, node, weight_array, bias_array, activation))
    names = [name for conv in convs for name in conv.feature_names]
    for name in names:
        if names.count(name) > 1:
            raise ExportError(
                f"{source}: two Conv layers give the feature output {name!r}, expected "
                "distinct Conv node names (they name the layers)"
            )
    return convs


def _layer(source: Path, conv: _Conv, found: dict[str, np.ndarray]) -> Layer:
    """The conv's Layer, with the shapes ONNX Runtime computed, held to the output-size
    formula O = floor((I + P_begin + P_end − K_eff) / S) + 1."""
    attributes = {a.name: helper.get_attribute_value(a) for a in conv.node.attribute}
    filters, _, *kernel = conv.weight.shape
    strides = tuple(attributes.get("strides", (1, 1)))
    dilations = tuple(attributes.get("dilations", (1, 1)))
    _, channels, *size = found[conv.node.input[0]].shape
    _, _, *out = found[conv.node.output[0]].shape
    auto_pad = attributes.get("auto_pad", b"NOTSET").decode()
    pads = (0,) * 4 if auto_pad == "VALID" else tuple(attributes.get("pads", (0,) * 4))
    if auto_pad.startswith("SAME"):
        amounts = [
            same_padding(*axis) for axis in zip(size, kernel, strides, dilations, strict=True)
        ]
        if auto_pad == "SAME_LOWER":  # the odd pixel before
            amounts = [(after, before) for before, after in amounts]
        padding = "same"
    else:
        amounts = [(pads[0], pads[2]), (pads[1], pads[3])]  # ONNX: top, left, bottom, right
        padding = "explicit" if any(pads) else "valid"
    for axis, side in enumerate(("height", "width")):
        expected = output_size(
            size[axis] + sum(amounts[axis]), kernel[axis], strides[axis], "valid", dilations[axis]
        )
        if out[axis] != expected:
            raise ExportError(
                f"{source}: layer {conv.name!r}: ONNX Runtime's output {side} is {out[axis]}, "
                f"the output-size formula gives {expected} (I {size[axis]}, K {kernel[axis]}, "
                f"S {strides[axis]}, d {dilations[axis]}, padding {amounts[axis]})"
            )
    return Layer(
        name=conv.name,
        type="Conv2D",
        input_shape=(*size, channels),
        output_shape=(*out, filters),
        parameters=conv.weight.size + (0 if conv.bias is None else conv.bias.size),
        filters=filters,
        kernel_size=tuple(kernel),
        strides=strides,
        padding=padding,
        padding_amount=(*amounts[0], *amounts[1]),
        dilation_rate=dilations,
        activation=conv.activation.op_type.lower() if conv.activation else "linear",
    )


def _wrap(
    read: _Source, classes: int, preprocessing: Preprocessing
) -> tuple[onnx.ModelProto, dict[str, str], str]:
    """model.onnx: the source graph between the preprocessing and a softmax. Returns it, the
    source's tensors it renamed, and the op that ends the source (looking through Identity)."""
    served = copy.deepcopy(read.model)
    graph = served.graph
    ours = {PIXELS, PROBABILITIES}
    ours |= {name for conv in read.convs for name in conv.feature_names}
    # The source's input and output, and any tensor named as one of ours, get fresh names.
    names = _tensor_names(graph)
    taken = names | ours
    renames = {name: _fresh(name, taken) for name in {read.input, read.output} | (names & ours)}
    _rename(graph, renames)
    producers = {name: node for node in graph.node for name in node.output}
    last = producers.get(renames[read.output])
    while last is not None and last.op_type == "Identity":
        last = producers.get(last.input[0])
    ending = last.op_type if last is not None else ""

    constants: list[onnx.NodeProto] = []
    front: list[onnx.NodeProto] = []

    def then(op: str, *inputs: str, **attributes: Any) -> None:
        previous = front[-1].output[0] if front else PIXELS
        output = _fresh(op.lower(), taken)
        front.append(helper.make_node(op, [previous, *inputs], [output], **attributes))

    def constant(value: float) -> str:
        # Of rank 4: ONNX Runtime 1.32 broadcasts a scalar ~60x slower (see training/export.py).
        array = numpy_helper.from_array(np.full((1, 1, 1, 1), value, np.float32))
        constants.append(helper.make_node("Constant", [], [_fresh("constant", taken)], value=array))
        return constants[-1].output[0]

    if preprocessing.scale != 1:
        then("Mul", constant(preprocessing.scale))
    if preprocessing.offset:
        then("Add", constant(preprocessing.offset))
    if read.layout == "NCHW":
        then("Transpose", perm=TO_NCHW)
    if not front:
        then("Identity")
    front[-1].output[0] = renames[read.input]
    op = {"Softmax": "Identity", "LogSoftmax": "Exp"}.get(ending, "Softmax")
    axis: dict[str, Any] = {"axis": -1} if op == "Softmax" else {}
    head = helper.make_node(op, [renames[read.output]], [PROBABILITIES], **axis)
    nodes = [*constants, *front, *graph.node, head]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [value for value in graph.input if value.name != renames[read.input]]
    del graph.input[:]
    pixels = helper.make_tensor_value_info(PIXELS, FLOAT, ["N", *read.input_shape])
    graph.input.extend([pixels, *kept])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(PROBABILITIES, FLOAT, ["N", classes]))
    return served, renames, ending


def _features(
    served: onnx.ModelProto, convs: list[_Conv], layers: list[Layer], renames: dict[str, str]
) -> onnx.ModelProto:
    """features.onnx: model.onnx giving each conv layer's maps, NHWC, instead of probabilities."""
    if not convs:
        return served  # a graph needs an output; this one has no maps to show
    features = copy.deepcopy(served)
    graph = features.graph
    del graph.output[:]
    for conv, layer in zip(convs, layers, strict=True):
        for name, tensor in (
            (artifact.pre_activation(conv.name), conv.node.output[0]),
            (conv.name, conv.output),
        ):
            graph.node.append(
                helper.make_node("Transpose", [renames.get(tensor, tensor)], [name], perm=TO_NHWC)
            )
            graph.output.append(
                helper.make_tensor_value_info(name, FLOAT, ["N", *layer.output_shape])
            )
    _prune(graph)
    return features


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes and initializers no output needs: ONNX Runtime runs every node of a graph
    whatever is fetched (measured on 1.32), and the classifier's head makes no feature map.
    (onnx.utils.Extractor misses the tensors a subgraph uses and rewrites producer_name.)"""
    needed = {value.name for value in graph.output}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input, *map(_tensor_names, _subgraphs(node)))
    initializers = [init for init in graph.initializer if init.name in needed]
    inputs = [value for value in graph.input if value.name == PIXELS or value.name in needed]
    del graph.node[:], graph.initializer[:], graph.input[:]
    graph.node.extend(reversed(kept))
    graph.initializer.extend(initializers)
    graph.input.extend(inputs)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also gives its tensors `names` (of whatever type and shape)."""
    tapped = copy.deepcopy(model)
    tapped.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    return tapped


def _run(
    what: str, model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]
) -> list[np.ndarray]:
    """ONNX Runtime's outputs `names` of `model`; ExportError if it cannot load or run it."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = ONNX_LOG_ERRORS_ONLY
    quiet = onnxruntime.RunOptions()
    quiet.log_severity_level = ONNX_LOG_ERRORS_ONLY + 1  # a failed run is the ExportError's to tell
    try:
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return list(session.run(names, feeds, quiet))
    except Exception as exc:  # ONNX Runtime's errors are one pybind class per status
        raise ExportError(
            f"{what}: ONNX Runtime {onnxruntime.__version__} cannot run it, expected opsets and "
            f"operators it runs, on any batch size: {str(exc).strip()}"
        ) from exc


def _check(
    what: str, model: onnx.ModelProto, pixels: np.ndarray, expected: dict[str, np.ndarray]
) -> None:
    """Raise ExportError unless each output of `model` on `pixels` equals the source's."""
    names = list(expected)
    if not names:  # ONNX Runtime would run every output
        return
    for name, actual in zip(names, _run(what, model, {PIXELS: pixels}, names), strict=True):
        if (excess := beyond_tolerance(actual, expected[name])) is not None:
            difference, allowed = excess
            raise ExportError(
                f"{what}: output {name!r} {list(actual.shape)} differs from the source graph's "
                f"{list(expected[name].shape)} by {difference:.3g} on {len(pixels)} images "
                f"(allowed: {allowed:.3g})"
            )


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies of If, Loop, Scan: they may use the outer graph's tensors by name."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else a.graphs)]


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {init.name for init in graph.initializer}
    names.update(value.name for value in (*graph.input, *graph.output, *graph.value_info))
    for node in graph.node:
        names.update(node.input, node.output, *map(_tensor_names, _subgraphs(node)))
    return names - {""}


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename tensors everywhere `graph` and its subgraphs name them."""
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
        for subgraph in _subgraphs(node):
            _rename(subgraph, renames)
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)


def _fresh(base: str, taken: set[str]) -> str:
    """The first of `base_1`, `base_2`, … not in `taken`, which then has it."""
    number = 1
    while f"{base}_{number}" in taken:
        number += 1
    taken.add(f"{base}_{number}")
    return f"{base}_{number}"
