"""Fake-quantized layers: the student that QAT trains and the exporter turns into a QDQ graph.

Each quantized layer owns an input :class:`ActQuantizer` (per tensor, learnable step size, unsigned
when its input is non-negative by construction) and per-output-channel symmetric weight step sizes
(LSQ), fake-quantized by :mod:`zerop_deploy.quant.primitives`. The forward pass is exactly what
onnxruntime computes for the exported QDQ graph, up to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from zerop_deploy.quant.primitives import (
    fake_quantize,
    int_range,
    lsq_fake_quantize,
    lsq_grad_scale,
    quantize,
)


class ActQuantizer(nn.Module):
    """Per-tensor activation fake-quantizer with a learnable step size (LSQ).

    Args:
        bits: Bit width (4 or 8).
        signed: Signed range (e.g. -8..7) if True, unsigned (0..15) otherwise.
        asymmetric: Give a signed range an integer zero point, set by calibration (a buffer, kept in
            checkpoints; not trained). An unsigned range (non-negative input) keeps zero point 0.
    """

    def __init__(self, bits: int, signed: bool, asymmetric: bool = False) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.asymmetric = asymmetric and signed
        self.qmin, self.qmax = int_range(bits, signed=signed)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.enabled = True
        self.observed: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record ``x`` while calibrating; fake-quantize it when enabled."""
        if self.observed is not None:
            self.observed.append(_sample_values(x))
        if not self.enabled:
            return x
        g = lsq_grad_scale(x[0].numel() if x.dim() > 0 and len(x) else 1, self.qmax)
        zp = self.zero_point if self.asymmetric else None
        return lsq_fake_quantize(x, self.scale.abs() + 1e-12, self.qmin, self.qmax, None, g, zp)

    def extra_repr(self) -> str:  # noqa: D102 - torch's repr hook
        return f"bits={self.bits}, signed={self.signed}, asymmetric={self.asymmetric}"


def _sample_values(x: torch.Tensor, limit: int = 65536) -> torch.Tensor:
    """A bounded random sample of the values of ``x`` (calibration must not keep whole tensors)."""
    flat = x.detach().reshape(-1)
    if flat.numel() > limit:
        idx = torch.randint(0, flat.numel(), (limit,), generator=torch.Generator().manual_seed(0))
        flat = flat[idx.to(flat.device)]
    return flat.float().cpu()


class QuantLayer(nn.Module):
    """Base of the quantized layers: weight, per-channel weight step sizes, bias, input quantizer.

    Args:
        weight: Float weight (BatchNorm already folded in).
        bias: Float bias or None.
        wbits: Weight bit width; the range is narrow (int4 -7..7), as exported.
        act: The input quantizer, or None to keep the input in float.
        weight_axis: Output-channel axis of ``weight``.
    """

    op = ""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        wbits: int,
        act: ActQuantizer | None,
        weight_axis: int,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().float())
        self.wbits = wbits
        self.wmin, self.wmax = int_range(wbits, signed=True, narrow=True)
        self.weight_axis = weight_axis
        self.weight_scale = nn.Parameter(torch.ones(weight.shape[weight_axis]))
        self.act = act
        self.quant_weights = True

    def step_sizes(self) -> torch.Tensor:
        """Per-channel weight step sizes as used and exported.

        A floor of 1e-5 times the layer's largest step keeps dead channels (BatchNorm gamma ~ 0)
        from
        getting step sizes so small that their int32 bias would overflow; their weights round to 0.
        """
        s = self.weight_scale.abs() + 1e-12
        return torch.maximum(s, 1e-5 * s.detach().max())

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight (LSQ gradient to the step sizes)."""
        if not self.quant_weights:
            return self.weight
        per_channel = self.weight.numel() // self.weight.shape[self.weight_axis]
        return lsq_fake_quantize(
            self.weight,
            self.step_sizes(),
            self.wmin,
            self.wmax,
            self.weight_axis,
            lsq_grad_scale(per_channel, self.wmax),
        )

    def integer_weight(self) -> torch.Tensor:
        """Integer weight values as exported (float tensor holding integers)."""
        return quantize(
            self.weight.detach(),
            self.step_sizes().detach(),
            qmin=self.wmin,
            qmax=self.wmax,
            axis=self.weight_axis,
        )

    def effective_bias(self) -> torch.Tensor | None:
        """The bias on the int32 grid ``act_scale * weight_scale`` that integer engines use.

        onnxruntime rounds the bias of a layer with a quantized input this way, and the exporter
        stores it so (``int32_bias=True``); a channel whose integer weights are all zero takes the
        layer's largest step, as :func:`zerop_deploy.export.integers.stored_weight_scale` does. The
        rounding has a straight-through gradient.
        """
        if self.bias is None or self.act is None or not self.quant_weights or not self.act.enabled:
            return self.bias
        with torch.no_grad():
            s = self.step_sizes()
            q = self.integer_weight().movedim(self.weight_axis, 0).reshape(len(s), -1)
            zero = ~q.bool().any(dim=1)
            if zero.any():
                s = torch.where(zero, s[~zero].max() if (~zero).any() else torch.ones(()), s)
            s = s.repeat(len(self.bias) // len(s)) * (self.act.scale.abs() + 1e-12)
        return fake_quantize(self.bias, s, qmin=-(2**31) + 1, qmax=2**31 - 1, axis=0)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the input quantizer, if any."""
        return x if self.act is None else self.act(x)


class QuantConv(QuantLayer):
    """Conv (1-3 D, groups and depthwise included) with fake-quantized input and weight."""

    op = "Conv"

    def __init__(
        self,
        conv: nn.Module,
        wbits: int,
        act: ActQuantizer | None,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__(
            conv.weight if weight is None else weight,
            conv.bias if weight is None else bias,
            wbits,
            act,
            weight_axis=0,
        )
        self.conv = conv
        for p in conv.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized convolution; the wrapped conv supplies stride, padding, dilation and groups."""
        return self.conv._conv_forward(
            self.quant_input(x), self.quantized_weight(), self.effective_bias()
        )


class QuantConvTranspose(QuantLayer):
    """ConvTranspose with fake-quantized input and weight (output channels on axis 1)."""

    op = "ConvTranspose"

    def __init__(self, conv: nn.Module, wbits: int, act: ActQuantizer | None) -> None:
        super().__init__(conv.weight, conv.bias, wbits, act, weight_axis=1)
        self.conv = conv
        for p in conv.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized transposed convolution with the wrapped module's geometry."""
        c = self.conv
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[x.dim() - 2]
        return fn(
            self.quant_input(x),
            self.quantized_weight(),
            self.effective_bias(),
            c.stride,
            c.padding,
            c.output_padding,
            c.groups,
            c.dilation,
        )


class QuantLinear(QuantLayer):
    """Gemm (converted to nn.Linear, weight ``[N, K]``) with fake-quantized input and weight."""

    op = "Gemm"

    def __init__(self, linear: nn.Linear, wbits: int, act: ActQuantizer | None) -> None:
        super().__init__(linear.weight, linear.bias, wbits, act, weight_axis=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W_q.T + b``."""
        return F.linear(self.quant_input(x), self.quantized_weight(), self.effective_bias())


class QuantMatMul(QuantLayer):
    """MatMul with a constant weight ``[K, N]`` (output channels on axis 1)."""

    op = "MatMul"

    def __init__(self, weight: torch.Tensor, wbits: int, act: ActQuantizer | None) -> None:
        super().__init__(weight, None, wbits, act, weight_axis=weight.dim() - 1)

    def forward(self, x: torch.Tensor, _weight: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W_q``; the graph still passes the original constant, which is ignored."""
        return torch.matmul(self.quant_input(x), self.quantized_weight())


def quant_layers(module: nn.Module) -> dict[str, QuantLayer]:
    """All quantized layers of a student, by submodule name."""
    return {n: m for n, m in module.named_modules() if isinstance(m, QuantLayer)}


@contextlib.contextmanager
def float_mode(student: nn.Module) -> Iterator[None]:
    """Run ``student`` with weight and activation quantization off; restores the previous state."""
    layers = list(quant_layers(student).values())
    states = [(lq, lq.quant_weights, lq.act.enabled if lq.act else None) for lq in layers]
    for lq in layers:
        lq.quant_weights = False
        if lq.act is not None:
            lq.act.enabled = False
    try:
        yield
    finally:
        for lq, weights, enabled in states:
            lq.quant_weights = weights
            if lq.act is not None:
                lq.act.enabled = enabled
