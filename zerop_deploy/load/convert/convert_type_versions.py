"""Newer versions of ops whose meaning on float and integer tensors is that of an older version.

The TorchScript exporter at opset 19-20 (its newest) writes Constant-19, Cast-19, Shape-19,
Identity-19, Equal-19, ConstantOfShape-20, Pad-18/19, ScatterND-18 and Resize-18/19 for ordinary
networks (ReLU6 bounds, attention masks, window shifts); onnx2torch 1.5 stops at the previous
version of each. Those versions only add element types (float8, int4, string) or options with a
default that keeps the old behaviour. Each alias below reuses onnx2torch's converter of the older
version after checking that the node uses none of the new options; one that does is refused by
name (``NotImplementedError``, which :func:`zerop_deploy.load.to_torch.convert_model` turns into a
one-line error naming the node).
"""

from __future__ import annotations

from collections.abc import Callable

from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from zerop_deploy.load.convert._reuse import onnx2torch_converter

Check = Callable[[OnnxNode], str | None]


def _no_new_options(node: OnnxNode) -> str | None:  # noqa: ARG001 - same signature as the others
    return None


def _pad(node: OnnxNode) -> str | None:
    if len(node.input_values) > 3 and node.input_values[3]:
        return "the 'axes' input (Pad-18)"
    if node.attributes.get("mode", "constant") == "wrap":
        return "mode 'wrap' (Pad-19)"
    return None


def _scatter_nd(node: OnnxNode) -> str | None:
    reduction = node.attributes.get("reduction", "none")
    return f"reduction '{reduction}' (ScatterND-18)" if reduction in ("max", "min") else None


def _resize(node: OnnxNode) -> str | None:
    a = node.attributes
    if int(a.get("antialias", 0)):
        return "antialias=1 (Resize-18)"
    if a.get("axes"):
        return "the 'axes' attribute (Resize-18)"
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return f"keep_aspect_ratio_policy '{a['keep_aspect_ratio_policy']}' (Resize-18)"
    if a.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        return "coordinate_transformation_mode 'half_pixel_symmetric' (Resize-19)"
    return None


ALIASES: dict[tuple[str, int], tuple[int, Check]] = {
    ("Constant", 19): (13, _no_new_options),
    ("Cast", 19): (13, _no_new_options),  # adds 'saturate', which only float8 targets read
    ("Shape", 19): (15, _no_new_options),
    ("Identity", 19): (16, _no_new_options),
    ("Equal", 19): (13, _no_new_options),
    ("ConstantOfShape", 20): (9, _no_new_options),
    ("Pad", 18): (13, _pad),
    ("Pad", 19): (13, _pad),
    ("ScatterND", 18): (16, _scatter_nd),
    ("Resize", 18): (13, _resize),
    ("Resize", 19): (13, _resize),
}
"""(op, new version) -> (onnx2torch's version with the same meaning, check of the new options)."""


def _alias(op: str, version: int, old: int, check: Check):  # noqa: ANN202 - a converter
    convert_old = onnx2torch_converter(op, old)

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        unsupported = check(node)
        if unsupported is not None:
            raise NotImplementedError(f"{op}-{version} with {unsupported} is not supported")
        return convert_old(node, graph)

    return convert


for (_op, _version), (_old, _check) in ALIASES.items():
    add_converter(operation_type=_op, version=_version)(_alias(_op, _version, _old, _check))
