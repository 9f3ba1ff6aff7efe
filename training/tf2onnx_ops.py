"""tf2onnx handlers for the TensorFlow ops it cannot convert itself; imported only to convert.

The gradients of relu, tanh and sigmoid (in the explanation graphs), ShapeN (before a conv's
input gradient), MaxPoolGrad (through max pooling: each window's gradient goes to its first
maximum, as TensorFlow's) and Erfc (in gelu). Each class is named after its op.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from tf2onnx import utils
from tf2onnx.handler import tf_op

__all__ = ["register"]


@functools.cache
def register() -> None:
    """Register the handlers with tf2onnx, for every conversion after (once: it keeps them)."""
    for handler in (ReluGrad, TanhGrad, SigmoidGrad, Erfc, ShapeN, MaxPoolGrad):
        tf_op(handler.__name__)(handler)


def _const(ctx: Any, value: Any) -> str:
    return str(ctx.make_const(utils.make_name("const"), np.asarray(value)).output[0])


def _elementwise(ctx: Any, node: Any, op: str, inputs: list[str]) -> None:
    """Replace `node` by `op` over `inputs`, keeping its name, outputs, shape and dtype."""
    shape, dtype = ctx.get_shape(node.output[0]), ctx.get_dtype(node.output[0])
    ctx.remove_node(node.name)
    ctx.make_node(op, inputs, name=node.name, outputs=node.output, shapes=[shape],
                  dtypes=[dtype])  # fmt: skip


class ReluGrad:
    @classmethod
    def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
        gradients, features = node.input
        zero = _const(ctx, np.float32(0))
        positive = ctx.make_node("Greater", [features, zero]).output[0]
        _elementwise(ctx, node, "Where", [positive, gradients, zero])


class TanhGrad:  # (y, dy) → dy · (1 − y²)
    @classmethod
    def version_7(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
        y, dy = node.input
        square = ctx.make_node("Mul", [y, y]).output[0]
        slope = ctx.make_node("Sub", [_const(ctx, np.float32(1)), square]).output[0]
        _elementwise(ctx, node, "Mul", [dy, slope])


class SigmoidGrad:  # (y, dy) → dy · y · (1 − y)
    @classmethod
    def version_7(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
        y, dy = node.input
        rest = ctx.make_node("Sub", [_const(ctx, np.float32(1)), y]).output[0]
        slope = ctx.make_node("Mul", [y, rest]).output[0]
        _elementwise(ctx, node, "Mul", [dy, slope])


class Erfc:  # x → 1 − erf(x): in gelu, which ONNX has no Erfc for
    @classmethod
    def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
        erf = ctx.make_node("Erf", [node.input[0]]).output[0]
        _elementwise(ctx, node, "Sub", [_const(ctx, np.float32(1)), erf])


class ShapeN:
    @classmethod
    def version_1(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
        for tensor, output in zip(node.input, node.output, strict=True):
            shape = ctx.make_node("Shape", [tensor]).output[0]
            cast = ctx.make_node("Cast", [shape], attr={"to": ctx.get_dtype(output)})
            ctx.replace_all_inputs(output, cast.output[0])
        ctx.remove_node(node.name)


class MaxPoolGrad:
    @classmethod
    def version_11(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
        utils.make_sure(
            node.get_attr_str("padding") == "VALID" and node.get_attr_str("data_format") == "NHWC",
            "MaxPoolGrad: only padding VALID, NHWC",
        )
        original, _, gradients = node.input
        shape, dtype = ctx.get_shape(node.output[0]), ctx.get_dtype(node.output[0])
        first = ctx.make_node("Transpose", [original], attr={"perm": [0, 3, 1, 2]}).output[0]
        pool = ctx.make_node(
            "MaxPool", [first], output_count=2,
            attr={"kernel_shape": node.get_attr_value("ksize")[1:3],
                  "strides": node.get_attr_value("strides")[1:3]},
        )  # fmt: skip
        flat = _const(ctx, np.array([-1], np.int64))
        indices = ctx.make_node("Reshape", [pool.output[1], flat]).output[0]
        routed = ctx.make_node("Transpose", [gradients], attr={"perm": [0, 3, 1, 2]})
        updates = ctx.make_node("Reshape", [routed.output[0], flat]).output[0]
        zeros = ctx.make_node("Mul", [first, _const(ctx, np.float32(0))]).output[0]
        flat_zeros = ctx.make_node("Reshape", [zeros, flat]).output[0]
        scattered = ctx.make_node(
            "ScatterElements", [flat_zeros, indices, updates], attr={"axis": 0}
        ).output[0]
        first_shape = ctx.make_node("Shape", [first]).output[0]
        result = ctx.make_node("Reshape", [scattered, first_shape]).output[0]
        ctx.remove_node(node.name)
        ctx.make_node(
            "Transpose", [result], attr={"perm": [0, 2, 3, 1]}, name=node.name,
            outputs=node.output, shapes=[shape], dtypes=[dtype],
        )  # fmt: skip
