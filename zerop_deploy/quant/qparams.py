"""The hand-over from the quantization engine to the exporter: integer weights and qparams per node.

The fine-tuned student is described, layer by layer, in terms of the user's ORIGINAL ONNX graph: the
node name of each quantized Conv/ConvTranspose/Gemm/MatMul, its integer weight in that node's own
weight
layout, per-output-channel scales, the float bias (with any BatchNorm already folded in), and the
per-tensor quantizer of the node's input activation. :mod:`zerop_deploy.export.qdq` needs nothing
else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zerop_deploy.quant.primitives import int_range


@dataclass(frozen=True)
class ActQuant:
    """Per-tensor quantizer of a layer's input activation: ``q = clip(round(x / scale) + zp)``.

    Attributes:
        bits: 4 or 8.
        signed: int4/int8 if True, uint4/uint8 (after ReLU-like producers) if False.
        scale: Positive step size.
        zero_point: Integer zero point inside the range of ``bits``/``signed``.
    """

    bits: int
    signed: bool
    scale: float
    zero_point: int = 0

    def __post_init__(self) -> None:
        qmin, qmax = self.qrange
        if not self.scale > 0 or not np.isfinite(self.scale):
            raise ValueError(f"activation scale must be positive and finite, got {self.scale}")
        if not qmin <= self.zero_point <= qmax:
            raise ValueError(f"zero point {self.zero_point} outside [{qmin}, {qmax}]")

    @property
    def qrange(self) -> tuple[int, int]:
        """Inclusive integer range of the quantized activation."""
        return int_range(self.bits, signed=self.signed)


@dataclass(frozen=True)
class LayerQuant:
    """One quantized layer of the original graph.

    Attributes:
        node: Name of the Conv/ConvTranspose/Gemm/MatMul node in the original ModelProto.
        op: Its op type.
        wbits: Weight bit width (4 or 8); weights are symmetric, zero point 0.
        weight: Integer weight (int8 array holding values within the ``wbits`` signed range), in the
            node's own ONNX layout: Conv ``[C_out, C_in/g, kH, kW]``, ConvTranspose
            ``[C_in, C_out/g, kH, kW]``, Gemm ``B`` as stored (``[N, K]`` with transB=1, else ``[K,
            N]``),
            MatMul ``[K, N]``.
        weight_scale: float32 per-output-channel scales; their axis in ``weight`` is
            ``weight_axis``.
        weight_axis: The output-channel axis of ``weight`` (0 for Conv and Gemm transB=1, 1 for
            ConvTranspose with groups=1, Gemm transB=0 and MatMul).
        bias: float32 bias per output channel, or None to keep the node's bias as it is (no bias).
        act: Quantizer of the node's first input, or None to leave the input in float.
        folded_bn: Name of the BatchNormalization node folded into this Conv (removed on export).
    """

    node: str
    op: str
    wbits: int
    weight: np.ndarray
    weight_scale: np.ndarray
    weight_axis: int
    bias: np.ndarray | None
    act: ActQuant | None
    folded_bn: str | None = None

    def __post_init__(self) -> None:
        qmin, qmax = int_range(self.wbits, signed=True)
        w = np.asarray(self.weight)
        if w.size and (w.min() < qmin or w.max() > qmax):
            raise ValueError(f"{self.node}: weight values outside [{qmin}, {qmax}]")
        if self.weight_scale.shape != (w.shape[self.weight_axis],):
            raise ValueError(
                f"{self.node}: {self.weight_scale.shape[0]} scales for "
                f"{w.shape[self.weight_axis]} output channels"
            )

    def dequantized_weight(self) -> np.ndarray:
        """float32 weight ``w * scale`` in the node's layout (what DequantizeLinear produces)."""
        shape = [1] * self.weight.ndim
        shape[self.weight_axis] = -1
        return (self.weight.astype(np.float32) * self.weight_scale.reshape(shape)).astype(
            np.float32
        )
