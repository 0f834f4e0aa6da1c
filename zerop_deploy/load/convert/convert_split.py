"""Split-18, emitted by torch's default exporter (ShuffleNetV2's ``chunk``) with ``num_outputs``.

Split-18 adds the ``num_outputs`` attribute to Split-13. The sizes of the parts come from, in order:

* the optional ``split`` input (a constant, read once, or a runtime tensor);
* ``num_outputs``: parts of ``ceil(n / num_outputs)`` elements, the last one smaller if ``n`` does
  not divide evenly (the ONNX rule);
* neither: as many equal parts as the node has outputs (the Split-13 rule).
"""

from __future__ import annotations

import math

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


def split_sizes(length: int, parts: int, *, uneven: bool) -> list[int]:
    """Sizes of ``parts`` parts of ``length`` elements (last one smaller when ``uneven``).

    Raises:
        ValueError: If the length cannot be split that way.
    """
    size = math.ceil(length / parts) if uneven else length // parts
    sizes = [size] * (parts - 1) + [length - size * (parts - 1)]
    if sizes[-1] < 0 or (not uneven and length % parts):
        raise ValueError(f"cannot split {length} elements into {parts} parts")
    return sizes


class OnnxSplit18(nn.Module, OnnxToTorchModule):
    """ONNX Split-18 along ``axis``."""

    def __init__(self, axis: int, parts: int, sizes: list[int] | None, uneven: bool) -> None:
        super().__init__()
        self.axis = axis
        self.parts = parts
        self.sizes = sizes
        self.uneven = uneven

    def forward(
        self, x: torch.Tensor, split: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Split ``x``; ``split`` is the runtime sizes input when it was not a constant."""
        if split is not None:
            sizes = [int(s) for s in split.tolist()]
        elif self.sizes is not None:
            sizes = self.sizes
        else:
            sizes = split_sizes(x.shape[self.axis], self.parts, uneven=self.uneven)
        return tuple(torch.split(x, sizes, dim=self.axis))


@add_converter(operation_type="Split", version=18)
def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    axis = int(node.attributes.get("axis", 0))
    num_outputs = node.attributes.get("num_outputs")
    parts = len(node.output_values)
    if num_outputs is not None and int(num_outputs) != parts:
        raise NotImplementedError(
            f"Split attribute num_outputs={num_outputs} differs from the node's {parts} outputs"
        )
    inputs = node.input_values
    sizes: list[int] | None = None
    if len(inputs) > 1 and inputs[1]:
        try:
            sizes = [int(s) for s in torch.as_tensor(get_const_value(inputs[1], graph)).tolist()]
            inputs = inputs[:1]
        except KeyError:
            pass  # a runtime tensor: read in forward
    else:
        inputs = inputs[:1]
    return OperationConverterResult(
        torch_module=OnnxSplit18(axis, parts, sizes, uneven=num_outputs is not None),
        onnx_mapping=OnnxMapping(inputs=tuple(inputs), outputs=node.output_values),
    )
