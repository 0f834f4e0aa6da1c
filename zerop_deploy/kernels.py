"""The Python face of the native packed-int4 kernels (``kernels/core``, built as ``_kernels``).

The API is DESIGN.md's "Kernel API": :func:`available`, :func:`pack_int4`, :func:`matmul_int4`,
plus :func:`matmul_int4_quantized` for activations that a QDQ graph already quantized, and the
convolutions :func:`conv2d_int4` / :func:`conv2d_int4_quantized`. Every function takes numpy arrays,
validates shapes, dtypes and contiguity with a ValueError that says what is wrong, and runs with the
GIL released.

Worked example (one row, per-channel scales)::

    x = [[0.5, -1.0, 0.25]]            -> s = 1.0 / 127, q = [64, -127, 32]  (63.5 rounds to even)
    w = [[1, 2, -3]], scales = [0.1]   -> sum q*w = 64 - 254 - 96 = -286
    y = -286 * 0.1 * (1 / 127)        = -0.2252

Implementation choice: ``impl="auto"`` (the default, or the ``ZEROP_KERNELS_IMPL`` environment
variable) runs the fastest path the CPU has: ``"avx512vnni"`` (vpdpbusd on 256-bit vectors), else
``"avx2"`` (AVX2 + FMA), else ``"scalar"``, the portable reference path. All give identical results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from zerop_deploy.errors import UnsupportedModelError

try:
    from zerop_deploy import _kernels as _native
except ImportError as _exc:  # not built: no C++ compiler at install time, or the build failed
    _native = None
    _IMPORT_ERROR: str | None = str(_exc)
else:
    _IMPORT_ERROR = None

_IMPLS = ("auto", "scalar", "avx2", "avx512vnni")

__all__ = [
    "KernelsUnavailableError",
    "available",
    "conv2d_int4",
    "conv2d_int4_quantized",
    "cpu_features",
    "matmul_int4",
    "matmul_int4_quantized",
    "pack_int4",
]


class KernelsUnavailableError(UnsupportedModelError):
    """The native kernels were not built when this package was installed."""


def available() -> bool:
    """Return True when the native int4 kernels were built and load on this machine."""
    return _native is not None


def cpu_features() -> dict[str, bool]:
    """Return which SIMD paths the kernels can use here (``{"avx2": ..., "avx512vnni": ...}``)."""
    if _native is None:
        return {"avx2": False, "avx512vnni": False}
    return {"avx2": bool(_native.cpu_has_avx2()), "avx512vnni": bool(_native.cpu_has_vnni())}


def _lib():  # type: ignore[no-untyped-def]
    if _native is None:
        raise KernelsUnavailableError(
            "the native int4 kernels (zerop_deploy._kernels) are not built "
            f"({_IMPORT_ERROR}): install a C++17 compiler (g++ >= 9) and reinstall zerop-deploy "
            "(pip install --force-reinstall --no-deps zerop-deploy, or pip install -e . in a "
            "checkout)"
        )
    return _native


def pack_int4(w: np.ndarray) -> np.ndarray:
    """Pack int4 weights two per byte, element ``2i`` in the low nibble (ONNX INT4 packing).

    Args:
        w: Integer array ``[N, K]`` with values in -8..7.

    Returns:
        uint8 ``[N, ceil(K / 2)]``, C-contiguous.

    Raises:
        ValueError: If ``w`` is not 2-D or holds a value outside -8..7.

    """
    from zerop_deploy.quant.primitives import pack_int4 as _pack

    return np.ascontiguousarray(_pack(w))


_CHECKED_IMPLS: set[str] = {"auto", "scalar"}  # names already checked against this CPU


def _impl(impl: str | None) -> str:
    name = impl if impl is not None else os.environ.get("ZEROP_KERNELS_IMPL", "auto")
    if name in _CHECKED_IMPLS:
        return name
    if name not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {name!r}")
    if name not in ("auto", "scalar") and not cpu_features()[name]:
        raise ValueError(f"impl={name!r} was requested but this CPU does not support it")
    _CHECKED_IMPLS.add(name)
    return name


def _array(a: object, name: str, dtype: np.dtype | tuple, ndim: int) -> np.ndarray:
    """Check that ``a`` is a C-contiguous ndarray of ``dtype`` with ``ndim`` dimensions."""
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    # the common case first, cheaply: these checks run on every call of a microsecond kernel
    if isinstance(a, np.ndarray) and a.ndim == ndim and a.dtype in dtypes and a.flags.c_contiguous:
        return a
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in [np.dtype(d) for d in dtypes]:
        want = " or ".join(np.dtype(d).name for d in dtypes)
        raise ValueError(f"{name} must be {want}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return a


def _check_group(group_size: int) -> int:
    if not isinstance(group_size, int | np.integer) or (
        group_size != 0 and (group_size < 32 or (group_size != 32 and group_size % 64))
    ):
        raise ValueError(f"group_size must be 0, 32 or a multiple of 64, got {group_size!r}")
    return int(group_size)


def _check_common(
    packed: np.ndarray,
    scales: np.ndarray,
    bias: np.ndarray | None,
    k: int,
    group_size: int,
    threads: int,
) -> None:
    n = packed.shape[0]
    if packed.shape[1] != (k + 1) // 2:
        raise ValueError(
            f"packed must be [N, ceil(K/2)] = [{n}, {(k + 1) // 2}] for K={k}, got {packed.shape}"
        )
    want = (n,) if group_size == 0 else (-(-k // group_size), n)
    if scales.shape != want:
        raise ValueError(
            f"scales must have shape {want} for group_size={group_size}, got {scales.shape}"
        )
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
    if not isinstance(threads, int | np.integer) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0 = all cores), got {threads!r}")


def matmul_int4(
    x: np.ndarray,
    packed: np.ndarray,
    scales: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    group_size: int = 0,
    threads: int = 0,
    impl: str | None = None,
) -> np.ndarray:
    """``y = x @ dequant(w).T`` with int4 weights and per-row int8 activations (DESIGN.md).

    Args:
        x: float32 ``[M, K]``; each row is quantized to symmetric int8 on the fly.
        packed: uint8 ``[N, ceil(K/2)]`` from :func:`pack_int4`; row n is output channel n.
        scales: float32 ``[N]`` (``group_size=0``) or ``[ceil(K / group_size), N]``.
        bias: Optional float32 ``[N]``.
        group_size: 0 (per output channel), 32, or a multiple of 64.
        threads: Worker threads, 0 = all cores.
        impl: ``"auto"``, ``"scalar"``, ``"avx2"`` or ``"avx512vnni"`` (default:
            ``$ZEROP_KERNELS_IMPL`` or auto).

    Returns:
        float32 ``[M, N]``, equal to ``quant.primitives.matmul_int4_reference``.

    Raises:
        ValueError: On a shape, dtype or contiguity mismatch.
        KernelsUnavailableError: If the native kernels were not built.

    """
    if impl is None and _native is not None:  # all checks in one native call (about 3 us less)
        y = _native.matmul_f32_fast(x, packed, scales, bias, group_size, threads)
        if y is not None:
            return y
    lib = _lib()  # something is off (or an impl is named): the checks below say what
    group_size = _check_group(group_size)
    x = _array(x, "x", np.float32, 2)
    packed = _array(packed, "packed", np.uint8, 2)
    scales = _array(scales, "scales", np.float32, 1 if group_size == 0 else 2)
    bias = None if bias is None else _array(bias, "bias", np.float32, 1)
    _check_common(packed, scales, bias, x.shape[1], group_size, threads)
    y = np.empty((x.shape[0], packed.shape[0]), dtype=np.float32)
    lib.matmul_f32(x, packed, scales, bias, int(group_size), y, int(threads), _impl(impl))
    return y


def _zero_point(xq: np.ndarray, zero_point: int) -> int:
    lo, hi = (0, 255) if xq.dtype == np.uint8 else (-128, 127)
    if not lo <= int(zero_point) <= hi:
        raise ValueError(f"x_zero_point {zero_point} is outside the {xq.dtype} range {lo}..{hi}")
    return int(zero_point)


def matmul_int4_quantized(
    xq: np.ndarray,
    x_scale: float,
    x_zero_point: int,
    packed: np.ndarray,
    scales: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    group_size: int = 0,
    threads: int = 0,
    impl: str | None = None,
) -> np.ndarray:
    """Like :func:`matmul_int4` for activations already quantized per tensor (QDQ semantics).

    ``y[m, n] = x_scale * sum_g scales[g, n] * sum_{k in g} (xq[m, k] - x_zero_point) * w[n, k]
    + bias[n]``, integer sums exact.

    Args:
        xq: uint8 or int8 ``[M, K]``.
        x_scale: The activation scale (as in QuantizeLinear).
        x_zero_point: The activation zero point, in the range of ``xq``'s dtype.
        packed: See :func:`matmul_int4`.
        scales: See :func:`matmul_int4`.
        bias: See :func:`matmul_int4`.
        group_size: See :func:`matmul_int4`.
        threads: See :func:`matmul_int4`.
        impl: See :func:`matmul_int4`.

    Returns:
        float32 ``[M, N]``.

    """
    lib = _lib()
    group_size = _check_group(group_size)
    xq = _array(xq, "xq", (np.uint8, np.int8), 2)
    packed = _array(packed, "packed", np.uint8, 2)
    scales = _array(scales, "scales", np.float32, 1 if group_size == 0 else 2)
    bias = None if bias is None else _array(bias, "bias", np.float32, 1)
    _check_common(packed, scales, bias, xq.shape[1], group_size, threads)
    zp = _zero_point(xq, x_zero_point)
    y = np.empty((xq.shape[0], packed.shape[0]), dtype=np.float32)
    lib.matmul_q8(
        xq,
        xq.dtype == np.uint8,
        float(x_scale),
        zp,
        packed,
        scales,
        bias,
        int(group_size),
        y,
        int(threads),
        _impl(impl),
    )
    return y


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int | np.integer) else tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
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
    raise ValueError(
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
        raise ValueError("kernel_size, stride, dilation and groups must be >= 1, padding >= 0")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide C_in={c_in} and C_out={c_out}")
    k = c_in // groups * kh * kw
    if packed.shape[1] != (k + 1) // 2:
        raise ValueError(
            f"packed must be [C_out, ceil(C_in/groups*kH*kW / 2)] = [{c_out}, {(k + 1) // 2}], "
            f"got {packed.shape}"
        )
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"the kernel does not fit the padded {h}x{w} input")
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


def read_probe(buf: np.ndarray, threads: int = 0) -> int:
    """Read every byte of ``buf`` (uint8, contiguous) on ``threads`` threads (a bandwidth probe)."""
    return int(_lib().read_probe(_array(buf, "buf", np.uint8, 1), int(threads)))
