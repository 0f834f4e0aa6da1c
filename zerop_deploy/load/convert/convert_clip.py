"""Clip-11/12/13 whose ``min``/``max`` are computed at run time, not constants.

onnx2torch's converter reads the bounds as constants and refuses anything else ("Dynamic value of
min/max is not implemented"). Swin-V2 clamps its learned attention logit scale with a bound the
TorchScript exporter computes (``log(1 / 0.01)`` through a Log node). A bound read at run time is
a plain ``torch.clamp`` with tensor bounds; constant bounds go to onnx2torch's converter as before.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult
from torch import nn

from zerop_deploy.load.convert._reuse import onnx2torch_converter, replace_converter


class DynamicClip(nn.Module, OnnxToTorchModule):
    """``clamp(x, min, max)`` with the bounds as inputs; ``has_min``/``has_max`` say which exist."""

    def __init__(self, has_min: bool, has_max: bool) -> None:
        super().__init__()
        self.has_min, self.has_max = has_min, has_max

    def forward(self, x: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:  # noqa: D102
        it = iter(bounds)
        low = next(it).to(x.dtype) if self.has_min else None
        high = next(it).to(x.dtype) if self.has_max else None
        return torch.clamp(x, low, high)


def _wrap(version: int):  # type: ignore[no-untyped-def]
    original = onnx2torch_converter("Clip", version)

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = list(node.input_values) + [""] * (3 - len(node.input_values))
        bounds = [n for n in names[1:3] if n]
        if all(n in graph.initializers for n in bounds):
            return original(node, graph)
        return OperationConverterResult(
            torch_module=DynamicClip(bool(names[1]), bool(names[2])),
            onnx_mapping=OnnxMapping(inputs=(names[0], *bounds), outputs=node.output_values),
        )

    return convert


for _version in (11, 12, 13):
    replace_converter("Clip", _version, _wrap(_version))
