"""AveragePool-19 and -22, emitted by torch's default exporter (DenseNet transitions).

AveragePool-19 adds the ``dilations`` attribute to AveragePool-11; -22 only adds bfloat16. With
all dilations 1 (what every exporter writes) the op is AveragePool-11, so onnx2torch's own
AveragePool-11 converter is reused; other dilations raise NotImplementedError naming the attribute
(``torch.nn.AvgPool*d`` has no dilation).
"""

from __future__ import annotations

from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from zerop_deploy.load.convert._reuse import onnx2torch_converter

VERSIONS = (19, 22)
_AVERAGE_POOL_11 = onnx2torch_converter("AveragePool", 11)


def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    dilations = list(node.attributes.get("dilations", []))
    if any(d != 1 for d in dilations):
        raise NotImplementedError(
            f"AveragePool attribute dilations={dilations} (only 1 is supported)"
        )
    return _AVERAGE_POOL_11(node, graph)


for _version in VERSIONS:
    add_converter(operation_type="AveragePool", version=_version)(_convert)
