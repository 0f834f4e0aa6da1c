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

_RATIOS = torch.linspace(0.3, 1.0, 36)

_CHUNK_ELEMENTS = 1 << 20
"""Float32 values (4 MB) in the temporary of one vectorised step of the ratio searches: as many
ratios as fit are evaluated at once, a larger weight one ratio and a block of channels at a time.
Steps of 1-4 MB measured fastest; 64 MB ones (out of cache) took 2-3 times as long."""


def _sq_errors(
    x: torch.Tensor,
    s: torch.Tensor,
    zp: torch.Tensor | None,
    qmin: int,
    qmax: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(fake_quantize(x, s, zp) - x) ** 2`` elementwise, ``s``/``zp`` broadcast against ``x``.

    Bit for bit the forward value of :func:`~zerop_deploy.quant.primitives.fake_quantize`, without
    its autograd path: ``clamp(x / s + zp, qmin, qmax)``, round half to even, ``(q - zp) * s``
    (``round_ste(v)`` equals ``round(v)`` exactly). A zero point of 0 (``zp`` None) is neither
    added nor subtracted, which only changes the sign of a zero and not its square. Written into
    ``out`` if given, else into a new tensor laid out like ``x / s`` (like fake_quantize's result);
    everything after the division is in place.
    """
    t = torch.div(x, s) if out is None else torch.div(x, s, out=out)
    if zp is not None:
        t.add_(zp)
    t.clamp_(qmin, qmax).round_()
    if zp is not None:
        t.sub_(zp)
    return t.mul_(s).sub_(x).pow_(2)


def _weight_errors(wc: torch.Tensor, scales: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``(fake_quantize(wc, scales[i], axis=0) - wc).pow(2).sum(dim=1)`` for every row ``i``, exact.

    ``wc`` is ``[C, K]``, ``scales`` ``[R, C]``; returns ``[R, C]``. The candidates are evaluated in
    vectorised steps of about :data:`_CHUNK_ELEMENTS` values (more where the least step allowed
    below is larger), and every error is still the ``sum(dim=1)`` of a ``[rows, K]`` tensor laid
    out like the ``[C, K]`` one fake-quantizing ``wc`` gives, because a float sum's order depends
    on the layout:

    * ``wc`` row-major: one contiguous row per channel, whose sum depends on its length only (the
      sum of a single-row tensor is split among threads, so blocks have two rows or more): several
      ratios at once, or one ratio and a block of channels.
    * ``wc`` column-major (a transposed 2-D weight, channel axis 1): the sum runs across channels in
      vector lanes grouped by position, so whole ``[C, K]`` column-major slices, several ratios at
      once.
    * otherwise, or off the CPU (GPU sums vectorise by pointer alignment): one new tensor per ratio.
    """
    errs = torch.empty_like(scales)
    n, (c, k) = len(scales), wc.shape
    per = max(1, min(n, _CHUNK_ELEMENTS // max(1, c * k)))
    if wc.device.type == "cpu" and wc.is_contiguous():
        blocks = 1
        if c * k > _CHUNK_ELEMENTS and c > 1:
            blocks = max(1, c // max(2, _CHUNK_ELEMENTS // max(1, k)))
        for b in range(blocks):
            rows = slice(c * b // blocks, c * (b + 1) // blocks)
            for lo in range(0, n, per):
                s = scales[lo : lo + per, rows, None]
                buf = wc.new_empty((len(s), rows.stop - rows.start, k))
                for j, e in enumerate(_sq_errors(wc[rows], s, None, qmin, qmax, out=buf)):
                    errs[lo + j, rows] = e.sum(dim=1)
    elif wc.device.type == "cpu" and wc.t().is_contiguous():
        for lo in range(0, n, per):
            s = scales[lo : lo + per, None, :]
            buf = wc.new_empty((len(s), k, c))
            for j, e in enumerate(_sq_errors(wc.t(), s, None, qmin, qmax, out=buf)):
                errs[lo + j] = e.t().sum(dim=1)
    else:
        for i in range(n):
            errs[i] = _sq_errors(wc, scales[i, :, None], None, qmin, qmax).sum(dim=1)
    return errs


def mse_weight_scales(w: torch.Tensor, axis: int, qmin: int, qmax: int) -> torch.Tensor:
    """Per-channel step sizes minimising ``||w - fake_quantize(w)||^2`` over clipping ratios.

    All ratios are evaluated in a few vectorised steps without autograd; the result is
    bit-identical to fake-quantizing ``w`` once per ratio and keeping the first ratio with the
    least error (:func:`_weight_errors`).
    """
    wc = w.detach().float().movedim(axis, 0).reshape(w.shape[axis], -1)
    amax = wc.abs().amax(dim=1).clamp_min(1e-8)
    with torch.no_grad():
        scales = _RATIOS.to(amax.device)[:, None] * amax / qmax  # row i: _RATIOS[i] * amax / qmax
        errs = _weight_errors(wc, scales, qmin, qmax)
        best_err = torch.full_like(amax, float("inf"))
        best = amax / qmax
        # the first ratio reaching the least error wins, as in a loop with `<`; NaN never does
        for err, s in zip(errs, scales, strict=True):
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, s, best)
    return best


def _act_errors(
    v: torch.Tensor, scales: list[float], zero_points: list[int] | None, qmin: int, qmax: int
) -> list[float]:
    """``float(mean((fake_quantize(v, s, z) - v) ** 2))`` for every candidate, bit-exact.

    A scale is rounded to float32 like ``torch.tensor(s)``. The candidates are evaluated in a few
    vectorised steps over a flat view of ``v`` (row ``j`` of the temporary holds candidate ``j``),
    and each mean is taken over its own contiguous row, the same reduction as over ``v`` itself. A
    ``v`` that is not contiguous, or not on the CPU, is evaluated one candidate at a time.
    """
    s_all = torch.tensor(scales, dtype=torch.float32, device=v.device)
    z_all = None
    if zero_points is not None:
        z_all = torch.tensor(zero_points, dtype=torch.float32, device=v.device)
    out: list[float] = []
    with torch.no_grad():
        if v.device.type != "cpu" or not v.is_contiguous():
            for j in range(len(scales)):
                zp = None if z_all is None else z_all[j]
                out.append(float(_sq_errors(v, s_all[j], zp, qmin, qmax).mean()))
            return out
        flat = v.reshape(-1)
        step = max(1, _CHUNK_ELEMENTS // max(1, flat.numel()))
        for lo in range(0, len(scales), step):
            s = s_all[lo : lo + step, None]
            zp = None if z_all is None else z_all[lo : lo + step, None]
            buf = flat.new_empty((len(s), flat.numel()))
            out.extend(float(row.mean()) for row in _sq_errors(flat, s, zp, qmin, qmax, out=buf))
    return out


def _act_scale_search(v: torch.Tensor, qmin: int, qmax: int) -> tuple[float, float | None]:
    """The symmetric search of :func:`mse_activation_scale`: ``(scale, its error or None)``."""
    amax = float(v.clamp_min(0).max() if qmin == 0 else v.abs().max())
    if amax <= 0:
        return 1.0, None
    top = qmax if qmin == 0 else max(qmax, -qmin)
    scales = [float(r) * amax / top for r in _RATIOS]
    best_s, best_err = amax / top, float("inf")
    for s, err in zip(scales, _act_errors(v, scales, None, qmin, qmax), strict=True):
        if err < best_err:
            best_s, best_err = s, err
    return best_s, (best_err if best_err < float("inf") else None)


def mse_activation_scale(values: torch.Tensor, qmin: int, qmax: int) -> float:
    """Per-tensor step size minimising the squared error of fake-quantizing ``values``."""
    return _act_scale_search(values.float(), qmin, qmax)[0]


def mse_activation_qparams(values: torch.Tensor, qmin: int, qmax: int) -> tuple[float, int]:
    """Per-tensor ``(scale, zero_point)`` minimising the squared error, zero point free.

    Candidates: the symmetric scales of :func:`mse_activation_scale` (zero point 0) and, for every
    clipping ratio ``r``, the range ``[r * min, r * max]`` (widened to hold 0) mapped onto
    ``[qmin, qmax]`` with an integer zero point. Never worse than the symmetric choice on
    ``values``.
    """
    v = values.float()
    s0, err0 = _act_scale_search(v, qmin, qmax)
    if err0 is None:
        err0 = _act_errors(v, [s0], None, qmin, qmax)[0]
    best = (s0, 0, err0)
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    if hi - lo <= 0:
        return best[0], best[1]
    scales, zps = [], []
    for r in _RATIOS:
        s = float(r) * (hi - lo) / (qmax - qmin)
        scales.append(s)
        zps.append(int(min(qmax, max(qmin, round(qmin - float(r) * lo / s)))))
    for s, z, err in zip(scales, zps, _act_errors(v, scales, zps, qmin, qmax), strict=True):
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
