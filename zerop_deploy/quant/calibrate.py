"""Initial step sizes before fine-tuning: MSE-optimal clipping, not plain min/max.

Weights: for every output channel, the clipping ratio ``r`` of ``max|w|`` that minimises the squared
quantization error is searched on a grid. Activations: the student runs in float on calibration
images while every input quantizer records a bounded sample of its values; the scale (and, for
asymmetric signed inputs, the zero point) minimising the squared error of fake-quantizing that
sample is chosen the same way. Outliers therefore cost a little clipping instead of wasting most of
the 16 levels of a 4-bit range.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from zerop_deploy.quant.finite import all_finite, nonfinite_error
from zerop_deploy.quant.modules import ActQuantizer, QuantLayer, float_mode, quant_layers
from zerop_deploy.quant.primitives import fake_quantize

_RATIOS = torch.linspace(0.3, 1.0, 36)


def mse_weight_scales(w: torch.Tensor, axis: int, qmin: int, qmax: int) -> torch.Tensor:
    """Per-channel step sizes minimising ``||w - fake_quantize(w)||^2`` over clipping ratios."""
    wc = w.detach().float().movedim(axis, 0).reshape(w.shape[axis], -1)
    amax = wc.abs().amax(dim=1).clamp_min(1e-8)
    best_err = torch.full_like(amax, float("inf"))
    best = amax / qmax
    for r in _RATIOS:
        s = r * amax / qmax
        err = (fake_quantize(wc, s, qmin=qmin, qmax=qmax, axis=0) - wc).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def mse_activation_scale(values: torch.Tensor, qmin: int, qmax: int) -> float:
    """Per-tensor step size minimising the squared error of fake-quantizing ``values``."""
    v = values.float()
    amax = float(v.clamp_min(0).max() if qmin == 0 else v.abs().max())
    if amax <= 0:
        return 1.0
    top = qmax if qmin == 0 else max(qmax, -qmin)
    best_s, best_err = amax / top, float("inf")
    for r in _RATIOS:
        s = float(r) * amax / top
        err = float((fake_quantize(v, torch.tensor(s), qmin=qmin, qmax=qmax) - v).pow(2).mean())
        if err < best_err:
            best_s, best_err = s, err
    return best_s


def mse_activation_qparams(values: torch.Tensor, qmin: int, qmax: int) -> tuple[float, int]:
    """Per-tensor ``(scale, zero_point)`` minimising the squared error, zero point free.

    Candidates: the symmetric scales of :func:`mse_activation_scale` (zero point 0) and, for every
    clipping ratio ``r``, the range ``[r * min, r * max]`` (widened to hold 0) mapped onto
    ``[qmin, qmax]`` with an integer zero point. Never worse than the symmetric choice on
    ``values``.
    """
    v = values.float()
    s0 = mse_activation_scale(v, qmin, qmax)
    best = (
        s0,
        0,
        float((fake_quantize(v, torch.tensor(s0), qmin=qmin, qmax=qmax) - v).pow(2).mean()),
    )
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    if hi - lo <= 0:
        return best[0], best[1]
    for r in _RATIOS:
        s = float(r) * (hi - lo) / (qmax - qmin)
        z = int(min(qmax, max(qmin, round(qmin - float(r) * lo / s))))
        err = float((fake_quantize(v, torch.tensor(s), z, qmin=qmin, qmax=qmax) - v).pow(2).mean())
        if err < best[2]:
            best = (s, z, err)
    return best[0], best[1]


def init_weight_scales(student: torch.nn.Module) -> None:
    """Set every quantized layer's weight step sizes by the MSE search."""
    for layer in quant_layers(student).values():
        with torch.no_grad():
            layer.weight_scale.copy_(
                mse_weight_scales(layer.weight, layer.weight_axis, layer.wmin, layer.wmax)
            )


def _act_quantizers(student: torch.nn.Module) -> list[ActQuantizer]:
    return [m.act for m in quant_layers(student).values() if isinstance(m, QuantLayer) and m.act]


@torch.no_grad()
def calibrate_activations(student: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Run the float student on ``batches`` and set every input quantizer's step size.

    Returns:
        The number of images seen.

    Raises:
        InputError: The model computes NaN or Inf on a batch (its output or a quantized layer's
            input); names the ONNX node where it starts (from the ``"onnx_nodes"`` entry of the
            student's ``meta``, which :func:`~zerop_deploy.quant.student.build_student` sets).
    """
    quantizers = _act_quantizers(student)
    for q in quantizers:
        q.observed = []
    seen = 0
    nodes = getattr(student, "meta", {}).get("onnx_nodes")
    try:
        with float_mode(student):
            for x in batches:
                y = student(x)
                if not all_finite([y, *(q.observed[-1:] for q in quantizers)]):
                    what = "the images it is calibrated on"
                    raise nonfinite_error(student, x, what=what, nodes=nodes)
                seen += len(x)
    finally:
        for q in quantizers:
            values = torch.cat(q.observed) if q.observed else torch.zeros(1)
            q.observed, q.enabled = None, True
            if q.asymmetric:
                scale, zp = mse_activation_qparams(values, q.qmin, q.qmax)
                q.zero_point.fill_(float(zp))
            else:
                scale = mse_activation_scale(values, q.qmin, q.qmax)
            q.scale.fill_(scale)
    return seen
