"""LayerNormalization-17 whose normalised shape comes from its scale, not from shape inference.

onnx2torch's own converter builds ``nn.LayerNorm(input_shape[axis:])`` from the inferred shape of
the input. After a Reshape whose target is computed at run time (window attention in Swin and
MaxViT, exported by the TorchScript exporter) that shape is unknown, the module is built with
``normalized_shape=[0]`` and fails on the first batch. The scale holds the same information: for
a negative ``axis`` with constant scale and bias, ``scale.shape`` is the normalised shape
(ONNX requires the scale to have that shape). Other forms go to onnx2torch's converter as before.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult
from torch import nn

from zerop_deploy.load.convert._reuse import onnx2torch_converter, replace_converter

_ONNX2TORCH = onnx2torch_converter("LayerNormalization", 17)


def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    axis = int(node.attributes.get("axis", -1))
    params = node.input_values[1:]
    if axis >= 0 or not params or not all(p in graph.initializers for p in params):
        return _ONNX2TORCH(node, graph)
    scale = graph.initializers[params[0]].to_torch()
    if scale.dim() != -axis:
        return _ONNX2TORCH(node, graph)
    bias = graph.initializers[params[1]].to_torch() if len(params) > 1 else None
    module = nn.LayerNorm(
        tuple(scale.shape),
        eps=float(node.attributes.get("epsilon", 1e-5)),
        elementwise_affine=True,
        bias=bias is not None,
    )
    with torch.no_grad():
        module.weight.copy_(scale)
        if bias is not None:
            module.bias.copy_(bias.reshape(scale.shape))
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )


replace_converter("LayerNormalization", 17, _convert)
