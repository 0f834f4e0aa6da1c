"""The native path of per-tensor LSQ fake-quantization (``kernels/core/lsq.cpp``).

One pass forward and one pass backward from the saved input, on float32 CPU tensors that are
dense in memory (contiguous or channels_last); the values equal the torch path of
:class:`zerop_deploy.quant.primitives._LsqFakeQuant`, and the step size's gradient is summed in
double, in blocks whose order does not depend on the thread count. Nothing here is used when the
extension is not built.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch

ENABLED = True
"""Use the native kernel where it applies (tests and the train-step benchmark turn it off to
compare the two paths)."""

Grid = tuple[float, float, bool, float, float]
"""(scale, zero point, has a zero point, qmin, qmax) as the kernel takes them."""


def library() -> ModuleType | None:
    """The native extension when it is built and has the fused LSQ kernel, else None."""
    try:
        from zerop_deploy import _kernels  # the raw extension: zerop_deploy.kernels imports quant
    except ImportError:
        return None
    return _kernels if hasattr(_kernels, "lsq_forward") else None


def flat(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of a dense tensor's elements in memory order (contiguous or channels_last)."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return t.permute(0, 2, 3, 4, 1).reshape(-1)
    return None


def applies(x: torch.Tensor, scale: torch.Tensor, axis: int | None) -> ModuleType | None:
    """The native library if this call can run on it: per tensor, float32, CPU, dense."""
    if not ENABLED or axis is not None or scale.numel() != 1 or x.numel() == 0:
        return None
    if x.dtype != torch.float32 or x.device.type != "cpu" or flat(x) is None:
        return None
    return library()


def _np(t: torch.Tensor) -> np.ndarray:
    return flat(t).detach().numpy()  # type: ignore[union-attr]


def forward(lib: ModuleType, x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Fake-quantized ``x``, in its memory format."""
    y = torch.empty_like(x)
    lib.lsq_forward(_np(x), *grid, _np(y), torch.get_num_threads(), "auto")
    return y


def backward(x: torch.Tensor, grad: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, float]:
    """(gradient of ``x``, the step size's gradient before LSQ's scale) for the saved input."""
    if grad.dtype != x.dtype or grad.stride() != x.stride() or flat(grad) is None:
        grad = torch.empty_like(x).copy_(grad)  # the kernel walks both in x's memory order
    grad_x = torch.empty_like(x)
    lib = library()
    total = lib.lsq_backward(  # type: ignore[union-attr]
        _np(x), _np(grad), *grid, _np(grad_x), torch.get_num_threads(), "auto"
    )
    return grad_x, float(total)
