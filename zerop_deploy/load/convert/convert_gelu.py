"""Gelu-20 (``approximate`` = "none" or "tanh"), emitted by torch's default exporter (ConvNeXt)."""

from __future__ import annotations

from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

APPROXIMATIONS = ("none", "tanh")


@add_converter(operation_type="Gelu", version=20)
def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    approximate = node.attributes.get("approximate", "none")
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    if approximate not in APPROXIMATIONS:
        raise NotImplementedError(
            f"Gelu attribute approximate={approximate!r} (expected 'none' or 'tanh')"
        )
    return OperationConverterResult(
        torch_module=nn.GELU(approximate=approximate),
        onnx_mapping=onnx_mapping_from_node(node),
    )
