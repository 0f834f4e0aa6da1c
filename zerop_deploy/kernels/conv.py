"""2-D convolutions with packed int4 weights: float input (:func:`conv2d_int4`) or int8 input."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zerop_deploy.errors import KernelArgumentError
from zerop_deploy.kernels.native import _array, _check_common, _impl, _lib, _zero_point


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int | np.integer) else tuple(int(i) for i in v)
    if len(t) != 2:
        raise KernelArgumentError(f"{name} must be an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


def _pads(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """Return ``padding`` in ONNX ``pads`` order (top, left, bottom, right)."""
    if isinstance(padding, int | np.integer):
        return (int(padding),) * 4  # type: ignore[return-value]
    p = tuple(int(i) for i in padding)
    if len(p) == 2:
        return (p[0], p[1], p[0], p[1])
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise KernelArgumentError(
        f"padding must be an int, (pad_h, pad_w) or (top, left, bottom, right), got {padding!r}"
    )


def _conv_shape(
    x_shape: tuple[int, ...],
    packed: np.ndarray,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
    groups: int,
) -> tuple[tuple[int, ...], tuple[int, int]]:
    """Validate a convolution; return the core's 16-integer shape and (out_h, out_w)."""
    b, c_in, h, w = x_shape
    c_out = packed.shape[0]
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pl, pb, pr = _pads(padding)
    if min(kh, kw, sh, sw, dh, dw, groups) < 1 or min(pt, pl, pb, pr) < 0:
        raise KernelArgumentError(
            "kernel_size, stride, dilation and groups must be >= 1, padding >= 0"
        )
    if c_in % groups or c_out % groups:
        raise KernelArgumentError(f"groups={groups} must divide C_in={c_in} and C_out={c_out}")
    k = c_in // groups * kh * kw
    if packed.shape[1] != (k + 1) // 2:
        raise KernelArgumentError(
            f"packed must be [C_out, ceil(C_in/groups*kH*kW / 2)] = [{c_out}, {(k + 1) // 2}], "
            f"got {packed.shape}"
        )
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise KernelArgumentError(f"the kernel does not fit the padded {h}x{w} input")
    shape = (b, c_in, h, w, c_out, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, groups)
    return shape, (oh, ow)


def _conv_args(
    packed: np.ndarray, scales: np.ndarray, bias: np.ndarray | None, threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    packed = _array(packed, "packed", np.uint8, 2)
    scales = _array(scales, "scales", np.float32, 1)
    bias = None if bias is None else _array(bias, "bias", np.float32, 1)
    _check_common(packed, scales, bias, 2 * packed.shape[1], 0, threads)
    return packed, scales, bias


def conv2d_int4(
    x: np.ndarray,
    packed: np.ndarray,
    scales: np.ndarray,
    *,
    kernel_size: int | Sequence[int],
    bias: np.ndarray | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    threads: int = 0,
    impl: str | None = None,
) -> np.ndarray:
    """2-D convolution (NCHW) with int4 weights; each image is quantized to symmetric int8.

    Image b is quantized with ``s_b = max|x[b]| / 127`` (1 if all zero),
    ``q = clip(rint(x / s_b), -127, 127)``; the result equals
    ``torch.nn.functional.conv2d(q * s_b, dequant(w), bias, ...)`` up to float rounding.

    Args:
        x: float32 ``[B, C_in, H, W]``.
        packed: ``pack_int4(w.reshape(C_out, -1))`` of int4 weights
            ``[C_out, C_in/groups, kH, kW]``.
        scales: float32 ``[C_out]`` per-output-channel weight scales.
        kernel_size: ``kH`` and ``kW`` (an int or a pair).
        bias: Optional float32 ``[C_out]``.
        stride: An int or (sH, sW).
        padding: An int, (pH, pW), or ONNX order (top, left, bottom, right); zero padding.
        dilation: An int or (dH, dW).
        groups: Channel groups (``groups == C_in`` is a depthwise convolution).
        threads: Worker threads, 0 = all cores.
        impl: ``"auto"``, ``"scalar"``, ``"avx2"`` or ``"avx512vnni"``.

    Returns:
        float32 ``[B, C_out, H_out, W_out]``.

    """
    lib = _lib()
    x = _array(x, "x", np.float32, 4)
    packed, scales, bias = _conv_args(packed, scales, bias, threads)
    shape, (oh, ow) = _conv_shape(x.shape, packed, kernel_size, stride, padding, dilation, groups)
    y = np.empty((x.shape[0], packed.shape[0], oh, ow), dtype=np.float32)
    lib.conv_f32(x, shape, packed, scales, bias, y, int(threads), _impl(impl))
    return y


def conv2d_int4_quantized(
    xq: np.ndarray,
    x_scale: float,
    x_zero_point: int,
    packed: np.ndarray,
    scales: np.ndarray,
    *,
    kernel_size: int | Sequence[int],
    bias: np.ndarray | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    threads: int = 0,
    impl: str | None = None,
) -> np.ndarray:
    """:func:`conv2d_int4` for an input already quantized per tensor (QDQ semantics).

    The real input is ``(xq - x_zero_point) * x_scale``; padding holds the real value 0.

    Args:
        xq: uint8 or int8 ``[B, C_in, H, W]``.
        x_scale: The activation scale.
        x_zero_point: The activation zero point, in the range of ``xq``'s dtype.
        packed: See :func:`conv2d_int4`.
        scales: See :func:`conv2d_int4`.
        kernel_size: See :func:`conv2d_int4`.
        bias: See :func:`conv2d_int4`.
        stride: See :func:`conv2d_int4`.
        padding: See :func:`conv2d_int4`.
        dilation: See :func:`conv2d_int4`.
        groups: See :func:`conv2d_int4`.
        threads: See :func:`conv2d_int4`.
        impl: See :func:`conv2d_int4`.

    Returns:
        float32 ``[B, C_out, H_out, W_out]``.

    """
    lib = _lib()
    xq = _array(xq, "xq", (np.uint8, np.int8), 4)
    packed, scales, bias = _conv_args(packed, scales, bias, threads)
    shape, (oh, ow) = _conv_shape(xq.shape, packed, kernel_size, stride, padding, dilation, groups)
    zp = _zero_point(xq, x_zero_point)
    y = np.empty((xq.shape[0], packed.shape[0], oh, ow), dtype=np.float32)
    lib.conv_q8(
        xq,
        xq.dtype == np.uint8,
        float(x_scale),
        zp,
        shape,
        packed,
        scales,
        bias,
        y,
        int(threads),
        _impl(impl),
    )
    return y
