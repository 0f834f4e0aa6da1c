"""The native library (``zerop_deploy._kernels``) and the argument checks every kernel call shares.

A bad argument raises :class:`zerop_deploy.errors.KernelArgumentError` (a ValueError and a
ConfigError: exit code 2 on the command line) naming the argument and what is wrong.
"""

from __future__ import annotations

import os

import numpy as np

from zerop_deploy.errors import KernelArgumentError, UnsupportedModelError
from zerop_deploy.quant.primitives import pack_int4 as _pack

try:
    from zerop_deploy import _kernels as _native
except ImportError as _exc:  # not built: no C++ compiler at install time, or the build failed
    _native = None
    _IMPORT_ERROR: str | None = str(_exc)
else:
    _IMPORT_ERROR = None

_IMPLS = ("auto", "scalar", "avx2", "avx512vnni")


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
        KernelArgumentError: If ``w`` is not 2-D or holds a value outside -8..7.

    """
    return np.ascontiguousarray(_pack(w))


_CHECKED_IMPLS: set[str] = {"auto", "scalar"}  # names already checked against this CPU


def _impl(impl: str | None) -> str:
    name = impl if impl is not None else os.environ.get("ZEROP_KERNELS_IMPL", "auto")
    if name in _CHECKED_IMPLS:
        return name
    if name not in _IMPLS:
        raise KernelArgumentError(f"impl must be one of {_IMPLS}, got {name!r}")
    if name not in ("auto", "scalar") and not cpu_features()[name]:
        raise KernelArgumentError(f"impl={name!r} was requested but this CPU does not support it")
    _CHECKED_IMPLS.add(name)
    return name


def _array(a: object, name: str, dtype: np.dtype | tuple, ndim: int) -> np.ndarray:
    """Check that ``a`` is a C-contiguous ndarray of ``dtype`` with ``ndim`` dimensions."""
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    # the common case first, cheaply: these checks run on every call of a microsecond kernel
    if isinstance(a, np.ndarray) and a.ndim == ndim and a.dtype in dtypes and a.flags.c_contiguous:
        return a
    if not isinstance(a, np.ndarray):
        raise KernelArgumentError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in [np.dtype(d) for d in dtypes]:
        want = " or ".join(np.dtype(d).name for d in dtypes)
        raise KernelArgumentError(f"{name} must be {want}, got {a.dtype}")
    if a.ndim != ndim:
        raise KernelArgumentError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise KernelArgumentError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return a


def _check_group(group_size: int) -> int:
    if not isinstance(group_size, int | np.integer) or (
        group_size != 0 and (group_size < 32 or (group_size != 32 and group_size % 64))
    ):
        raise KernelArgumentError(
            f"group_size must be 0, 32 or a multiple of 64, got {group_size!r}"
        )
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
        raise KernelArgumentError(
            f"packed must be [N, ceil(K/2)] = [{n}, {(k + 1) // 2}] for K={k}, got {packed.shape}"
        )
    want = (n,) if group_size == 0 else (-(-k // group_size), n)
    if scales.shape != want:
        raise KernelArgumentError(
            f"scales must have shape {want} for group_size={group_size}, got {scales.shape}"
        )
    if bias is not None and bias.shape != (n,):
        raise KernelArgumentError(f"bias must have shape ({n},), got {bias.shape}")
    if not isinstance(threads, int | np.integer) or threads < 0:
        raise KernelArgumentError(
            f"threads must be an integer >= 0 (0 = all cores), got {threads!r}"
        )


def _zero_point(xq: np.ndarray, zero_point: int) -> int:
    lo, hi = (0, 255) if xq.dtype == np.uint8 else (-128, 127)
    if not lo <= int(zero_point) <= hi:
        raise KernelArgumentError(
            f"x_zero_point {zero_point} is outside the {xq.dtype} range {lo}..{hi}"
        )
    return int(zero_point)


def read_probe(buf: np.ndarray, threads: int = 0) -> int:
    """Read every byte of ``buf`` (uint8, contiguous) on ``threads`` threads (a bandwidth probe)."""
    return int(_lib().read_probe(_array(buf, "buf", np.uint8, 1), int(threads)))
