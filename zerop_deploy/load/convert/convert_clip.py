"""Clip-11/12/13 whose ``min``/``max`` are computed at run time, not constants.

onnx2torch's converter reads the bounds as constants and refuses anything else ("Dynamic value of
min/max is not implemented"). Swin-V2 clamps its learned attention logit scale with a bound the
TorchScript exporter computes (``log(1 / 0.01)`` through a Log node). A bound read at run time is
a plain ``torch.clamp`` with tensor bounds; constant bounds go to onnx2torch's converter as before.

Bounds that ONNX Constant nodes supply (EfficientNet-Lite's ReLU6) also arrive here. With both
bounds 0-d on the CPU, :class:`_NumberClamp` clamps by numbers and computes the gradient in about
three passes where clamping by tensors takes about eight (it is ``max(min(x, hi), lo)`` with
their tie masks), 2x faster forward + backward at 224 px; values and gradients are the same,
1/2 of the gradient for an input exactly on a bound included (dead channels of a quantized
student output exact zeros). On dense float32 CPU tensors the backward is one pass of the native
kernel (``kernels/core/clamp.cpp``) with the same values.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult
from torch import nn

from zerop_deploy.load.convert._reuse import onnx2torch_converter, replace_converter
from zerop_deploy.native_tensors import as_array, dense_cpu_float, library, like

NATIVE = True
"""Compute the gradient of a clamp by numbers with the native kernel when it is built (tests turn
it off to compare)."""


class DynamicClip(nn.Module, OnnxToTorchModule):
    """``clamp(x, min, max)`` with the bounds as inputs; ``has_min``/``has_max`` say which exist."""

    def __init__(self, has_min: bool, has_max: bool) -> None:
        super().__init__()
        self.has_min, self.has_max = has_min, has_max

    def forward(self, x: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:  # noqa: D102
        it = iter(bounds)
        low = next(it).to(x.dtype) if self.has_min else None
        high = next(it).to(x.dtype) if self.has_max else None
        if (
            low is not None
            and high is not None
            and low.dim() == high.dim() == 0
            and x.is_floating_point()
            and x.device.type == low.device.type == high.device.type == "cpu"
            and not (low.requires_grad or high.requires_grad)
        ):
            lo, hi = low.item(), high.item()
            if lo < hi:
                return _NumberClamp.apply(x, lo, hi)
        return torch.clamp(x, low, high)


class _NumberClamp(torch.autograd.Function):
    """``clamp(x, lo, hi)`` by numbers with the gradient of clamping by tensors (ties get 1/2)."""

    @staticmethod
    def forward(ctx, x, lo, hi):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        lib = library("clamp_backward") if NATIVE and dense_cpu_float(x) else None
        if lib is not None:  # one pass (kernels/core/clamp.cpp) instead of about five
            grad = like(x, grad)
            out = torch.empty_like(x)
            lib.clamp_backward(
                as_array(x), as_array(grad), ctx.lo, ctx.hi, as_array(out),
                torch.get_num_threads(), "auto",
            )  # fmt: skip
            return out, None, None
        inside = torch.ops.aten.hardtanh_backward(grad, x, ctx.lo, ctx.hi)  # lo < x < hi
        ties = (x == ctx.lo).logical_or_(x == ctx.hi)
        return torch.where(ties, grad * 0.5, inside), None, None


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
