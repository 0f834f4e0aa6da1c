"""The Python face of the native packed-int4 kernels (``kernels/core``, built as ``_kernels``).

The API is DESIGN.md's "Kernel API": :func:`available`, :func:`pack_int4`, :func:`matmul_int4`,
plus :func:`matmul_int4_quantized` for activations that a QDQ graph already quantized, and the
convolutions :func:`conv2d_int4` / :func:`conv2d_int4_quantized`. Every function takes numpy arrays,
validates shapes, dtypes and contiguity with a :class:`~zerop_deploy.errors.KernelArgumentError`
(a ValueError) that says what is wrong, and runs with the
GIL released.

Worked example (one row, per-channel scales)::

    x = [[0.5, -1.0, 0.25]]            -> s = 1.0 / 127, q = [64, -127, 32]  (63.5 rounds to even)
    w = [[1, 2, -3]], scales = [0.1]   -> sum q*w = 64 - 254 - 96 = -286
    y = -286 * 0.1 * (1 / 127)        = -0.2252

Implementation choice: ``impl="auto"`` (the default, or the ``ZEROP_KERNELS_IMPL`` environment
variable) runs the fastest path the CPU has: ``"avx512vnni"`` (vpdpbusd on 256-bit vectors), else
``"avx2"`` (AVX2 + FMA), else ``"scalar"``, the portable reference path. All give identical results.
"""

from zerop_deploy.kernels.conv import conv2d_int4, conv2d_int4_quantized
from zerop_deploy.kernels.matmul import matmul_int4, matmul_int4_quantized
from zerop_deploy.kernels.native import (
    KernelsUnavailableError,
    available,
    cpu_features,
    pack_int4,
    read_probe,
)

__all__ = [
    "KernelsUnavailableError",
    "available",
    "conv2d_int4",
    "conv2d_int4_quantized",
    "cpu_features",
    "matmul_int4",
    "matmul_int4_quantized",
    "pack_int4",
    "read_probe",
]
