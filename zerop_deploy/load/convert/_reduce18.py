"""Shared machinery of the opset-18 Reduce* converters (``axes`` moved from attribute to input)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    get_const_value,
)
from torch import nn

ReduceFn = Callable[[torch.Tensor, list[int], bool], torch.Tensor]


class OnnxReduce18(nn.Module, OnnxToTorchModule):
    """ONNX Reduce* (opset >= 18): axes from a constant, or from a runtime tensor input."""

    def __init__(
        self, fn: ReduceFn, axes: list[int] | None, keepdims: bool, noop_with_empty_axes: bool
    ) -> None:
        super().__init__()
        self.fn = fn
        self.axes = axes
        self.keepdims = keepdims
        self.noop_with_empty_axes = noop_with_empty_axes

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        """Reduce ``x`` over the constant axes, else over ``axes``, else over all (or none) dims."""
        dims = self.axes if self.axes is not None else ([] if axes is None else axes.tolist())
        if not dims:
            if self.noop_with_empty_axes:
                return x
            dims = list(range(x.dim()))
        return self.fn(x, sorted(d % x.dim() for d in dims), self.keepdims)


def register_reduce18(op_type: str, fn: ReduceFn, versions: tuple[int, ...] = (18,)) -> None:
    """Register ``fn`` as the converter of ``op_type`` at the given opset versions."""

    def converter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        keepdims = bool(node.attributes.get("keepdims", 1))
        noop = bool(node.attributes.get("noop_with_empty_axes", 0))
        inputs = node.input_values
        axes: list[int] | None = None
        if len(inputs) < 2 or inputs[1] == "":
            axes, inputs = [], inputs[:1]
        else:
            try:
                axes = [int(a) for a in torch.as_tensor(get_const_value(inputs[1], graph)).tolist()]
                inputs = inputs[:1]
            except KeyError:
                axes = None  # a runtime tensor: read in forward
        return OperationConverterResult(
            torch_module=OnnxReduce18(fn, axes, keepdims, noop),
            onnx_mapping=OnnxMapping(inputs=tuple(inputs), outputs=node.output_values),
        )

    for version in versions:
        add_converter(operation_type=op_type, version=version)(converter)
