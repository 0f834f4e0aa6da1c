"""Empirical bias correction: each quantized layer gets the fp32 model's per-channel mean output.

Rounding a layer's weights to a few levels shifts the mean of its output channels (the rounding
errors of a 3x3 depthwise kernel's nine weights do not average out), and the shifts add up through
the network. After calibration the student therefore runs with the fp32 teacher on the same images:
at each quantized layer, in the order the network runs them, the difference between the teacher's
per-channel mean output and the quantized layer's is added to the layer's bias, and the corrected
output goes on to the next layer, so every correction sees the ones before it.

Over several batches the bias is the running mean of the per-batch estimates (batch ``j`` moves it
by ``1 / (j + 1)`` of what it still finds), so memory stays that of one inference pass and the
result does not hinge on the last batch. Layers without a bias (a MatMul, a Conv exported without
one) are left as they are.

Fine-tuning alone cannot make these corrections at its learning rates: Adam moves a bias by about
the learning rate per step, 1e-4, while the shifts of a 4-bit depthwise layer are of order 0.1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zerop_deploy.quant.modules import QuantLayer, QuantLinear, QuantMatMul
from zerop_deploy.quant.student import layer_of


def channel_means(out: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """Per-channel mean of ``out`` over every other axis, in float64."""
    axis = channel_axis % out.dim()
    dims = tuple(d for d in range(out.dim()) if d != axis)
    return out.double().mean(dims)


def _channel_axis(layer: QuantLayer) -> int:
    return -1 if isinstance(layer, (QuantLinear, QuantMatMul)) else 1


def _shape_like(delta: torch.Tensor, out: torch.Tensor, channel_axis: int) -> torch.Tensor:
    shape = [1] * out.dim()
    shape[channel_axis] = -1
    return delta.to(out.dtype).view(shape)


@torch.no_grad()
def correct_biases(
    teacher: nn.Module,
    student: nn.Module,
    pairs: list[tuple[str, str]],
    batches: Iterable[torch.Tensor],
) -> dict[str, Any]:
    """Correct the biases of the quantized student in place (see the module docstring).

    Args:
        teacher: The fp32 model, in eval mode.
        student: The calibrated student (weight and activation quantization on).
        pairs: ``(teacher module, student module)`` names whose outputs match
            (:func:`zerop_deploy.quant.distill.feature_pairs`).
        batches: Model inputs.

    Returns:
        ``{"layers", "images", "mean_abs_shift", "largest_shift"}``: layers corrected, images
        used and the mean absolute bias change of each layer relative to its output's spread.
    """
    targets = []
    for t_name, s_name in pairs:
        layer = layer_of(student, s_name)
        if layer.bias is not None:
            divisor = getattr(student.get_submodule(s_name), "channel_divisor", None)
            targets.append(_Target(t_name, s_name, layer, _channel_axis(layer), divisor))
    start = [t.layer.bias.detach().clone() for t in targets]
    spread: dict[str, float] = {}
    images = 0
    for j, x in enumerate(batches):
        means = _teacher_means(teacher, targets, x)
        _shift_pass(student, targets, x, means, 1.0 / (j + 1), spread if j == 0 else None)
        images += len(x)
    rel = [
        float((t.layer.bias.detach() - s0).abs().mean()) / spread[t.student]
        for t, s0 in zip(targets, start, strict=True)
        if t.student in spread
    ]
    return {
        "layers": len(targets) if images else 0,
        "images": images,
        "mean_abs_shift": round(sum(rel) / len(rel), 4) if rel else 0.0,
        "largest_shift": round(max(rel), 4) if rel else 0.0,
    }


@dataclass(frozen=True)
class _Target:
    """A quantized layer with a bias, and the teacher module whose output it reproduces."""

    teacher: str
    student: str
    layer: QuantLayer
    axis: int
    divisor: torch.Tensor | None  # equalized layers output the teacher's values / divisor


def _teacher_means(teacher: nn.Module, targets: list[_Target], x: torch.Tensor) -> dict:
    """Per-channel mean output of every target's teacher module on ``x``."""
    means: dict[str, torch.Tensor] = {}

    def keep(t: _Target):
        def hook(_m, _i, out):
            m = channel_means(out, t.axis)
            means[t.student] = m if t.divisor is None else m / t.divisor.double()

        return hook

    _run_hooked(teacher, x, {t.teacher: keep(t) for t in targets})
    return means


def _shift_pass(student, targets, x, means, weight: float, spread: dict | None) -> None:
    """Run the student on ``x``, moving each bias by ``weight`` of the mean error it still finds."""

    def shift(t: _Target):
        def hook(_m, _i, out):
            delta = ((means[t.student] - channel_means(out, t.axis)) * weight).float()
            if not torch.isfinite(delta).all():
                return out
            t.layer.bias.add_(delta.to(t.layer.bias.device))
            if spread is not None:
                spread[t.student] = float(out.std()) + 1e-12
            return out + _shape_like(delta, out, t.axis)

        return hook

    _run_hooked(student, x, {t.student: shift(t) for t in targets})


def _run_hooked(model: nn.Module, x: torch.Tensor, hooks: dict) -> None:
    """Run ``model`` on ``x`` with forward hooks on the named submodules, removed afterwards."""
    handles = [model.get_submodule(n).register_forward_hook(h) for n, h in hooks.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
