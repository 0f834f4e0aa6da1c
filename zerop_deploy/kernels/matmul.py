"""Matrix products with packed int4 weights, on float activations or on int8 ones."""

from __future__ import annotations

import numpy as np

from zerop_deploy.kernels import native
from zerop_deploy.kernels.native import (
    _array,
    _check_common,
    _check_group,
    _impl,
    _lib,
    _zero_point,
)


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
        KernelArgumentError: On a shape, dtype or contiguity mismatch.
        KernelsUnavailableError: If the native kernels were not built.

    """
    if (
        impl is None and native._native is not None
    ):  # all checks in one native call (about 3 us less)
        y = native._native.matmul_f32_fast(x, packed, scales, bias, group_size, threads)
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
