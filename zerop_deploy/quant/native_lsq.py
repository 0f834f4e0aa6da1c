"""The native path of per-tensor LSQ fake-quantization (``kernels/core/lsq.cpp``).

One pass forward and one pass backward from the saved input, on float32 CPU tensors that are
dense in memory (contiguous or channels_last); the values equal the torch path of
:class:`zerop_deploy.quant.primitives._LsqFakeQuant`, and the step size's gradient is summed in
double, in blocks whose order does not depend on the thread count. Nothing here is used when the
extension is not built.
"""

from __future__ import annotations

from types import ModuleType

import torch

from zerop_deploy.native_tensors import as_array, dense_cpu_float, library, like

ENABLED = True
"""Use the native kernel where it applies (tests and the train-step benchmark turn it off to
compare the two paths)."""

Grid = tuple[float, float, bool, float, float]
"""(scale, zero point, has a zero point, qmin, qmax) as the kernel takes them."""


def applies(x: torch.Tensor, scale: torch.Tensor, axis: int | None) -> ModuleType | None:
    """The native library if this call can run on it: per tensor, float32, CPU, dense."""
    if not ENABLED or axis is not None or scale.numel() != 1 or not dense_cpu_float(x):
        return None
    return library("lsq_forward")


def forward(lib: ModuleType, x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Fake-quantized ``x``, in its memory format."""
    y = torch.empty_like(x)
    lib.lsq_forward(as_array(x), *grid, as_array(y), torch.get_num_threads(), "auto")
    return y


def backward(x: torch.Tensor, grad: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, float]:
    """(gradient of ``x``, the step size's gradient before LSQ's scale) for the saved input."""
    grad = like(x, grad)  # the kernel walks both in x's memory order
    grad_x = torch.empty_like(x)
    total = library("lsq_backward").lsq_backward(  # type: ignore[union-attr]
        as_array(x), as_array(grad), *grid, as_array(grad_x), torch.get_num_threads(), "auto"
    )
    return grad_x, float(total)
