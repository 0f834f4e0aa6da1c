"""Dropout-7 (used up to opset 9, e.g. the model-zoo AlexNet/VGG/SqueezeNet/Inception graphs).

In inference Dropout is the identity. Dropout-7 has only the ``ratio`` attribute (no ``is_test``,
no ``seed``) and an optional ``mask`` output of the input's type. The spec does not say what the
mask holds in inference; onnxruntime (the reference of our parity checks) fills it with zeros, so
the converted module does the same. It follows ``self.training`` like onnx2torch's own Dropout
converters: it drops with probability ``ratio`` (and returns the real keep-mask) only in training
mode.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult
from torch import nn


class OnnxDropout7(nn.Module, OnnxToTorchModule):
    """Dropout returning the output and, when the node asks for it, the mask."""

    def __init__(self, ratio: float, with_mask: bool) -> None:
        super().__init__()
        self.ratio = ratio
        self.with_mask = with_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Identity in eval mode, with a mask of zeros like onnxruntime (same dtype as ``x``)."""
        if not self.training:
            return (x, torch.zeros_like(x)) if self.with_mask else x
        mask = (torch.rand_like(x) >= self.ratio).to(x.dtype)
        y = x * mask / (1.0 - self.ratio)
        return (y, mask) if self.with_mask else y


@add_converter(operation_type="Dropout", version=7)
def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    ratio = float(node.attributes.get("ratio", 0.5))
    with_mask = len(node.output_values) > 1 and node.output_values[1] != ""
    return OperationConverterResult(
        torch_module=OnnxDropout7(ratio, with_mask),
        onnx_mapping=OnnxMapping(
            inputs=node.input_values[:1], outputs=node.output_values[: 2 if with_mask else 1]
        ),
    )
