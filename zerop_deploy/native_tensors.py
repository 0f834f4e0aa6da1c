"""Hand dense torch tensors to the native extension's elementwise kernels.

A leaf module (torch and the raw extension only), so that both the loader's converters and the
quantizers can use the kernels without importing each other.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch


def library(kernel: str) -> ModuleType | None:
    """The native extension when it is built and has ``kernel``, else None."""
    try:
        from zerop_deploy import _kernels  # the raw extension: zerop_deploy.kernels imports quant
    except ImportError:
        return None
    return _kernels if hasattr(_kernels, kernel) else None


def flat(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of a dense tensor's elements in memory order (contiguous or channels_last)."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return t.permute(0, 2, 3, 4, 1).reshape(-1)
    return None


def dense_cpu_float(x: torch.Tensor) -> bool:
    """Whether ``x`` is a non-empty float32 CPU tensor the kernels can walk in memory order."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.numel() > 0
        and flat(x) is not None
    )


def as_array(t: torch.Tensor) -> np.ndarray:
    """The elements of a dense tensor in memory order, as a numpy view (no copy)."""
    return flat(t).detach().numpy()  # type: ignore[union-attr]


def like(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` with ``x``'s dtype and strides (a copy where they differ): both walk in one order."""
    if t.dtype != x.dtype or t.stride() != x.stride() or flat(t) is None:
        return torch.empty_like(x).copy_(t)
    return t
