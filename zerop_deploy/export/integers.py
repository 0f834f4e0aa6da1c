"""The integers the exporter writes: weight scales as stored, int32 bias levels, INT4/INT8 tensors.

Pure functions of a :class:`~zerop_deploy.quant.qparams.LayerQuant`; the student's bias quantizer
and onnxruntime's WeightBiasQuantization compute the same numbers (tests compare them).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from zerop_deploy.quant.primitives import pack_int4
from zerop_deploy.quant.qparams import LayerQuant


def stored_weight_scale(layer: LayerQuant) -> np.ndarray:
    """Return the per-channel weight scales as the exporter writes them (float32).

    They are ``layer.weight_scale``, except that an output channel whose integer weights are all
    zero gets the layer's largest scale: its dequantized weight stays exactly zero, and its bias
    scale ``act.scale * weight_scale`` no longer underflows (a calibration ``eps`` such as 1e-12
    would make int32 bias quantization overflow, in this exporter and in onnxruntime alike).
    """
    s = np.asarray(layer.weight_scale, np.float32).copy()
    q = np.moveaxis(np.asarray(layer.weight), layer.weight_axis, 0).reshape(len(s), -1)
    zero = ~q.any(axis=1)
    if zero.any():
        s[zero] = s[~zero].max() if (~zero).any() else np.float32(1.0)
    return s


def bias_scale(layer: LayerQuant) -> np.ndarray:
    """``act.scale * weight_scale`` per output channel (groups of a ConvTranspose repeat scales)."""
    assert layer.act is not None and layer.bias is not None
    s = stored_weight_scale(layer)
    s = np.tile(s, len(layer.bias) // len(s))
    return (np.float32(layer.act.scale) * s).astype(np.float32)


INT32_BIAS_LIMIT = 2**31 - 1
"""Largest int32 bias level, either sign: the student's bias quantizer clips at the same value."""


def bias_levels(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``clip(round_half_even(bias / scale), -limit, limit)``: levels the student computes with.

    A level beyond int32 only happens when the input's activation scale is degenerate (an input
    that is almost always zero, e.g. a random-weight network's last features): the bias is then
    clipped to ``limit * scale``, in the student during fine-tuning and in the file alike.
    """
    levels = np.rint(bias / scale).astype(np.float64)  # rounded in float32, as the student does
    return np.clip(levels, -INT32_BIAS_LIMIT, INT32_BIAS_LIMIT)


def integer_bias(layer: LayerQuant) -> np.ndarray:
    """Return a layer's bias rounded to the int32 grid ``act.scale * weight_scale``, as engines do.

    ``round_half_even(bias / s) * s`` with ``s = float32(act.scale) * stored_weight_scale(layer)``
    per output channel: what ``export_qdq(..., int32_bias=True)`` stores, and what onnxruntime's
    WeightBiasQuantization transformer computes (verified bit-exact in onnxruntime 1.32) for a layer
    whose output goes straight into a QuantizeLinear. A student that should agree exactly with the
    exported model in onnxruntime rounds its bias this way. A layer without ``act`` or ``bias``
    gets its bias back unchanged.

    Args:
        layer: The quantized layer.

    Returns:
        The rounded float32 bias (or ``layer.bias`` as it is).
    """
    if layer.act is None or layer.bias is None:
        return layer.bias  # type: ignore[return-value]
    s = bias_scale(layer)
    return (bias_levels(np.asarray(layer.bias, np.float32), s) * s).astype(np.float32)


def int_tensor(name: str, values: np.ndarray, bits: int) -> TensorProto:
    """INT4 (packed two per byte, the ONNX layout of primitives.pack_int4) or INT8 initializer."""
    if bits == 8:
        return numpy_helper.from_array(values.astype(np.int8), name)
    t = TensorProto(name=name, data_type=TensorProto.INT4, dims=list(values.shape))
    t.raw_data = pack_int4(values.reshape(1, -1)).tobytes()
    return t
