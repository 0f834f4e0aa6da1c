"""Transpose-21, emitted by torch's default exporter at opset 21 (ShuffleNet, ConvNeXt permutes).

Transpose-21 only adds element types (int4, uint4, float8...) to Transpose-13, none of which a float
CNN's activations use, so onnx2torch's own Transpose-13 converter is reused unchanged.
"""

from __future__ import annotations

from onnx2torch.node_converters.registry import add_converter

from zerop_deploy.load.convert._reuse import onnx2torch_converter

add_converter(operation_type="Transpose", version=21)(onnx2torch_converter("Transpose", 13))
