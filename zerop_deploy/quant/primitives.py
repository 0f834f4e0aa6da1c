"""What int4 and int8 mean, everywhere in this package: pure quantization functions.

The fake-quant layers, the ONNX exporter and the C++ kernels are all tested against these
functions, so this module is the single definition of the integer formats. Nothing here keeps
state. :func:`fake_quantize` defines fake quantization (composed from :func:`round_ste`, so autograd
derives its straight-through gradients); :func:`lsq_fake_quantize` is the same forward, bit for
bit, fused into one autograd op for the training loop (tests compare values and gradients).

Conventions:

* Affine quantization: ``q = clip(round_half_even(x / scale) + zero_point, qmin, qmax)`` and
  ``x_hat = (q - zero_point) * scale``. This is exactly what ONNX ``QuantizeLinear`` /
  ``DequantizeLinear`` compute (division, round-half-to-even, saturation), so a graph exported from
  these numbers reproduces them in onnxruntime.
* Weights: symmetric (zero point 0) per output channel, narrow range by default (int4 -7..7, int8
  -127..127) so that ``-q`` is always representable.
* Activations: per tensor; unsigned (uint8 / uint4) after ReLU-like producers, signed otherwise.
* Packed int4 (kernels and ONNX INT4): two values per byte, element ``2i`` in the low nibble and
  ``2i+1`` in the high nibble, rows padded to whole bytes.

Worked example (4-bit symmetric weight, one channel)::

    w = [0.30, -0.72, 0.05, 0.70]
    scale = max|w| / 7 = 0.72 / 7 = 0.102857...
    w / scale = [2.9167, -7.0, 0.4861, 6.8056]  -> round -> [3, -7, 0, 7]
    dequantized = [0.3086, -0.72, 0.0, 0.72]

Torch functions accept tensors of any float dtype; scales broadcast along ``axis`` (``None`` = per
tensor).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from zerop_deploy.quant import native_lsq

ACTIVATION_INT8_MAX = 127
"""Kernel activations are symmetric int8 in [-127, 127] (DESIGN.md, Kernel API)."""


def int_range(bits: int, *, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Return ``(qmin, qmax)`` of a ``bits``-wide integer.

    Args:
        bits: Bit width, 2..16.
        signed: Two's-complement range if True, unsigned otherwise.
        narrow: Drop the most negative value of a signed range (int4 -> -7..7), which keeps the
            range symmetric; ignored for unsigned ranges.

    Returns:
        The inclusive integer range, e.g. ``int_range(4, signed=True) == (-8, 7)``.

    Raises:
        ValueError: If ``bits`` is outside 2..16.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bit width {bits} is outside 2..16")
    if not signed:
        return 0, 2**bits - 1
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if narrow else -qmax - 1), qmax


def _along(t: torch.Tensor, ref: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a per-channel vector ``t`` so that it broadcasts against ``ref`` along ``axis``."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * ref.dim()
    shape[axis] = -1
    return t.reshape(shape)


def symmetric_scale(
    w: torch.Tensor, bits: int, *, axis: int | None = 0, narrow: bool = True, eps: float = 1e-12
) -> torch.Tensor:
    """Max-abs symmetric scale of ``w``, per slice along ``axis`` (per tensor if ``axis`` is None).

    Args:
        w: Weights, e.g. a Conv weight ``[C_out, C_in/groups, kH, kW]``.
        bits: Weight bit width.
        axis: Channel axis of the scales, or None for one scale.
        narrow: Use the narrow signed range (qmax = 7 for 4 bits).
        eps: Lower bound of a scale, so that an all-zero channel gets a usable scale.

    Returns:
        Scales of shape ``[w.shape[axis]]`` (or a scalar tensor) with ``max|w| / qmax``.
    """
    _, qmax = int_range(bits, signed=True, narrow=narrow)
    if axis is None:
        amax = w.detach().abs().max()
    else:
        dims = [d for d in range(w.dim()) if d != axis % w.dim()]
        amax = w.detach().abs().amax(dim=dims) if dims else w.detach().abs()
    return (amax / qmax).clamp_min(eps)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | float = 0.0,
    *,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Quantize like ONNX QuantizeLinear.

    ``q = clip(round_half_even(x / scale) + zero_point, qmin, qmax)``.

    Returns:
        A float tensor holding integer values (cast it to the integer dtype you need).
    """
    s = _along(torch.as_tensor(scale, dtype=x.dtype), x, axis)
    zp = _along(torch.as_tensor(zero_point, dtype=x.dtype), x, axis)
    return torch.clamp(torch.round(x / s) + zp, qmin, qmax)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | float = 0.0,
    *,
    axis: int | None = None,
) -> torch.Tensor:
    """Dequantize like ONNX DequantizeLinear: ``(q - zero_point) * scale``."""
    qf = q.to(torch.as_tensor(scale).dtype if torch.is_tensor(scale) else torch.float32)
    s = _along(torch.as_tensor(scale, dtype=qf.dtype), qf, axis)
    zp = _along(torch.as_tensor(zero_point, dtype=qf.dtype), qf, axis)
    return (qf - zp) * s


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | float = 0.0,
    *,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Quantize-dequantize with straight-through gradients (LSQ / LSQ+ style).

    The forward value equals ``dequantize(quantize(x, ...), ...)`` exactly. Gradients: ``x`` gets 1
    inside the clipping range and 0 outside; ``scale`` gets the LSQ gradient ``round(v) - v``
    inside the range and the clipped level outside; a floating ``zero_point`` is rounded with a
    straight-through estimator so it can be learned (LSQ+). The bias quantizer uses it directly
    (its step is the product of two learned steps); weights and activations use the fused
    :func:`lsq_fake_quantize`.

    Args:
        x: Values to fake-quantize.
        scale: Positive step size, a scalar or one per slice along ``axis``.
        zero_point: Zero point (0 for symmetric); rounded to an integer in the forward pass.
        qmin: Lowest integer level.
        qmax: Highest integer level.
        axis: Axis of per-channel ``scale``/``zero_point``; None for per tensor.

    Returns:
        The fake-quantized tensor, same shape and dtype as ``x``.
    """
    s = _along(torch.as_tensor(scale, dtype=x.dtype, device=x.device), x, axis)
    zp = _along(torch.as_tensor(zero_point, dtype=x.dtype, device=x.device), x, axis)
    zp = round_ste(zp)
    v = torch.clamp(x / s + zp, qmin, qmax)
    return (round_ste(v) - zp) * s


class _LsqFakeQuant(torch.autograd.Function):
    """Fused LSQ fake-quantization, in a few passes over the tensor instead of a dozen.

    The forward of :func:`fake_quantize`, bit for bit, with an integer zero point ``z`` (a scalar
    tensor, or None for 0), straight-through gradients.

    Gradients: ``x`` gets ``grad`` inside the range and 0 outside; ``scale`` gets
    ``grad_scale * sum(grad * (q - x / s - z))`` inside and ``grad_scale * sum(grad * (q - z))``
    outside (``q`` the clipped, rounded level); the zero point is not trained.

    A per-tensor float32 CPU tensor runs on the native kernel (``kernels/core/lsq.cpp``): one pass
    forward, one pass backward from the saved input, the same forward values; the step size's
    gradient is summed in double, in blocks whose order does not depend on the thread count.
    """

    @staticmethod
    def forward(ctx, x, scale, qmin, qmax, axis, grad_scale, zero_point=None):  # type: ignore[override]
        ctx.axis, ctx.grad_scale, ctx.scale_shape = axis, grad_scale, scale.shape
        lib = native_lsq.applies(x, scale, axis)
        ctx.native = lib is not None
        if lib is not None:
            zp = 0.0 if zero_point is None else float(zero_point)
            ctx.grid = (float(scale), zp, zero_point is not None, float(qmin), float(qmax))
            ctx.save_for_backward(x)
            ctx.scale_dtype = scale.dtype
            return native_lsq.forward(lib, x, ctx.grid)
        s = (
            scale
            if axis is None
            else scale.reshape([-1 if d == axis else 1 for d in range(x.dim())])
        )
        v = x / s if zero_point is None else x / s + zero_point
        q = torch.round(v).clamp_(qmin, qmax)
        inside = (v >= qmin) & (v <= qmax)
        if zero_point is not None:
            q = q - zero_point  # the dequantized level: (q - z) * s
            v = v - zero_point
        # what the step size's gradient needs, computed while q and v are at hand
        ds = torch.where(inside, q - v, q) if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(inside, ds)
        return q * s

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.native:
            return _LsqFakeQuant._native_backward(ctx, grad)
        inside, ds = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            per_elem = grad * ds
            if ctx.axis is None:
                grad_s = per_elem.sum()
            else:
                grad_s = per_elem.sum(dim=[d for d in range(ds.dim()) if d != ctx.axis])
            grad_s = (grad_s * ctx.grad_scale).reshape(ctx.scale_shape)
        return grad_x, grad_s, None, None, None, None, None

    @staticmethod
    def _native_backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        grad_x, total = native_lsq.backward(x, grad, ctx.grid)
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = torch.tensor(total * ctx.grad_scale, dtype=ctx.scale_dtype)
            grad_s = grad_s.reshape(ctx.scale_shape)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_s, None, None, None, None, None


def lsq_fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None,
    grad_scale: float,
    zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` with step ``scale`` (per tensor or along ``axis``), LSQ gradients.

    ``zero_point``: an integer-valued scalar tensor (per-tensor quantization), or None for 0.
    """
    return _LsqFakeQuant.apply(x, scale, qmin, qmax, axis, grad_scale, zero_point)


def lsq_grad_scale(numel: int, qmax: int) -> float:
    """Gradient scale ``1 / sqrt(numel * qmax)`` recommended by LSQ for a step size's gradient."""
    return 1.0 / math.sqrt(max(1, numel) * max(1, qmax))


# --------------------------------------------------------------------------------------------------
# numpy side: the integer formats of the kernels and of the exported graph
# --------------------------------------------------------------------------------------------------


def quantize_rows_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize each row of ``x`` to symmetric int8, the kernels' activation rule (DESIGN.md).

    ``s_m = max|x[m, :]| / 127`` (1 for an all-zero row) and
    ``q = clip(round_half_even(x / s_m), -127, 127)``, all in float32.

    Args:
        x: float32 ``[M, K]``.

    Returns:
        ``(q, s)``: int8 ``[M, K]`` and float32 ``[M]``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    s = np.where(amax > 0, amax / np.float32(ACTIVATION_INT8_MAX), np.float32(1.0)).astype(
        np.float32
    )
    q = np.clip(np.rint(x / s[:, None]), -ACTIVATION_INT8_MAX, ACTIVATION_INT8_MAX).astype(np.int8)
    return q, s


def pack_int4(w: np.ndarray) -> np.ndarray:
    """Pack int4 values two per byte, element ``2i`` in the low nibble (the ONNX INT4 layout).

    Args:
        w: Integer array ``[N, K]`` with values in -8..7.

    Returns:
        uint8 ``[N, ceil(K / 2)]``; an odd row is padded with a zero high nibble.

    Raises:
        ValueError: If ``w`` is not 2-D or holds a value outside -8..7.
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"pack_int4 expects a 2-D [N, K] array, got shape {w.shape}")
    if w.size and (w.min() < -8 or w.max() > 7):
        raise ValueError("pack_int4: values must lie in -8..7")
    n, k = w.shape
    padded = np.zeros((n, k + (k % 2)), dtype=np.uint8)
    padded[:, :k] = w.astype(np.int8).view(np.uint8) & 0x0F
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`: int8 ``[N, k]`` from uint8 ``[N, ceil(k / 2)]``."""
    packed = np.asarray(packed, dtype=np.uint8)
    lo = (packed & 0x0F).astype(np.int8)
    hi = (packed >> 4).astype(np.int8)
    both = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.int8)
    both[:, 0::2], both[:, 1::2] = lo, hi
    both = np.where(both > 7, both - 16, both).astype(np.int8)
    return both[:, :k]


def matmul_int4_reference(
    x: np.ndarray,
    w: np.ndarray,
    scales: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    group_size: int = 0,
) -> np.ndarray:
    """Reference for the int4 kernel: ``y = x @ dequant(w).T`` with int8 row-quantized activations.

    ``y[m, n] = s_m * sum_g scales[g, n] * sum_{k in g} q[m, k] * w[n, k] + bias[n]`` with exact
    integer
    inner sums (int64 here), then float32 scaling.

    Args:
        x: float32 ``[M, K]`` activations, quantized by :func:`quantize_rows_int8`.
        w: int weights ``[N, K]`` in -8..7 (unpacked).
        scales: float32 ``[N]`` (``group_size=0``) or ``[ceil(K / group_size), N]``.
        bias: Optional float32 ``[N]``.
        group_size: 0 for per-channel scales, else the group length along K.

    Returns:
        float32 ``[M, N]``.
    """
    q, s = quantize_rows_int8(x)
    k = x.shape[1]
    scales = np.asarray(scales, dtype=np.float32)
    if group_size == 0:
        scales = scales.reshape(1, -1)
        bounds = [(0, k)]
    else:
        bounds = [(g, min(g + group_size, k)) for g in range(0, k, group_size)]
    y = np.zeros((x.shape[0], w.shape[0]), dtype=np.float32)
    for gi, (lo, hi) in enumerate(bounds):
        acc = q[:, lo:hi].astype(np.int64) @ w[:, lo:hi].astype(np.int64).T
        y += acc.astype(np.float32) * scales[gi][None, :]
    y *= s[:, None]
    if bias is not None:
        y += np.asarray(bias, dtype=np.float32)[None, :]
    return y
