"""Reshape-19 and -21, emitted by torch's default ONNX exporter (opset 20) with ``allowzero=1``.

Reshape-19 and -21 only add element types (float8, int4...) to Reshape-14, but onnx2torch has no
converter for them and its Reshape-14 refuses ``allowzero=1``, which the default exporter writes on
every ``view``/``flatten``. This module implements both values of ``allowzero``:

* ``allowzero=0``: a 0 in ``shape`` copies the input's dimension at that index;
* ``allowzero=1``: a 0 in ``shape`` is a literal zero-sized dimension.

A -1 is inferred from the remaining elements in both cases.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

VERSIONS = (19, 21)


class OnnxReshapeAllowZero(nn.Module, OnnxToTorchModule):
    """ONNX Reshape with the ``allowzero`` attribute."""

    def __init__(self, allowzero: bool) -> None:
        super().__init__()
        self.allowzero = allowzero

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """Reshape ``x`` to ``shape`` (int64 tensor) following ONNX rules for 0 and -1."""
        dims = [int(d) for d in shape.tolist()]
        if not self.allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return torch.reshape(x, dims)


def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    allowzero = int(node.attributes.get("allowzero", 0))
    if allowzero not in (0, 1):
        raise NotImplementedError(f"Reshape attribute allowzero={allowzero} (must be 0 or 1)")
    return OperationConverterResult(
        torch_module=OnnxReshapeAllowZero(bool(allowzero)),
        onnx_mapping=onnx_mapping_from_node(node),
    )


for _version in VERSIONS:
    add_converter(operation_type="Reshape", version=_version)(_convert)
