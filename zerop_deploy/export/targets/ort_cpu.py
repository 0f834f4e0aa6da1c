"""The ``ort-cpu`` target: a file stock onnxruntime runs on its integer CPU kernels.

onnxruntime fuses ``DequantizeLinear -> Conv/Gemm/MatMul -> QuantizeLinear`` into QLinearConv /
QGemm only for 8-bit types, with a QuantizeLinear on the layer's output. The exact student file
(target ``qdq``) has 4-bit initializers and pairs only on the inputs of quantized layers, so
onnxruntime runs it as dequantize + float kernels, slower than fp32. This target writes the same
network as onnxruntime's own QDQ placement (``onnxruntime.quantization.quantize_static``, which
knows which of its fusions apply to which op) with the student's grids forced where it had them:

* weights: the student's integer levels and per-channel scales, stored as int8 (exact; a 4-bit
  level -8..7 is an int8 level), or as uint8 with zero point 128 where an 8-bit level is beyond
  +-64 (:mod:`zerop_deploy.export.saturation`);
* activations the student quantized to 8 bits: its scale and zero point, as uint8 (a signed zero
  point moves by 128; exact);
* activations the student quantized to 4 bits: uint8 on a grid 17 times finer, ``scale / 17``,
  ``zero_point * 17`` (+136 when signed): 255 = 15 * 17 steps, so the 8-bit grid saturates exactly
  where the 4-bit one did and holds every 4-bit level; values between two 4-bit levels are rounded
  to the finer grid instead (not exact: closer to float);
* every other tensor onnxruntime's placement quantizes (layer outputs, Add, Concat, pooling...):
  uint8, range from a min/max calibration on the images given (not in the student: 8-bit).

What changes is measured, never assumed: callers compare the file with the student.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from zerop_deploy.errors import ExportError
from zerop_deploy.export.saturation import store_weights_unsaturated
from zerop_deploy.export.targets.float_view import ActGrid, FloatView, float_view
from zerop_deploy.export.targets.rewrites import channel_shuffles_to_gather, pads_into_convs
from zerop_deploy.export.targets.shapes import fold_batch_shapes
from zerop_deploy.onnx_facts import QUANTIZABLE_OPS

FINER = 17
"""Steps of the 8-bit grid per 4-bit step: 15 * 17 = 255, so both saturate at the same value."""


def act_grid_8bit(grid: ActGrid) -> tuple[float, int]:
    """(scale, uint8 zero point) of the 8-bit grid that stands for ``grid`` (see module doc)."""
    if grid.bits == 8:
        return grid.scale, grid.zero_point + (128 if grid.signed else 0)
    zp = grid.zero_point * FINER + (136 if grid.signed else 0)
    return grid.scale / FINER, zp


def to_ort_cpu(qdq: onnx.ModelProto, images: np.ndarray, *, batch: int = 8) -> onnx.ModelProto:
    """The ``ort-cpu`` file of an exported ``qdq`` model.

    Args:
        qdq: A file written by ``quantize`` (target ``qdq``).
        images: Calibration inputs for the tensors the student did not quantize, already
            preprocessed for the model (float32, N x C x H x W).
        batch: Calibration batch size.

    Raises:
        ExportError: If the file is not one of ours or onnxruntime's quantizer fails.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    view = float_view(qdq)
    fold_batch_shapes(view.model)
    channel_shuffles_to_gather(view.model)
    pads_into_convs(view.model, view.acts)
    input_name = view.model.graph.input[0].name

    batches = [images[i : i + batch] for i in range(0, len(images), batch)]

    class _Reader(CalibrationDataReader):
        """One batch per ``set_range`` window (onnxruntime's strided calibration)."""

        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(batches[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    overrides = _overrides(view, QuantType)
    skipped = [
        n.name for n in view.model.graph.node
        if n.op_type in QUANTIZABLE_OPS and n.name not in set(view.layers)
    ]  # fmt: skip
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to "pre-process" is for users
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "float.onnx", Path(tmp) / "ort_cpu.onnx"
            onnx.save(view.model, src)
            quantize_static(
                str(src), str(out), _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=skipped,
                extra_options={
                    "TensorQuantOverrides": overrides,
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                    "QDQDisableWeightAdjustForInt32Bias": True,
                    # ranges are reduced after every batch: memory holds one batch of every
                    # intermediate tensor, not all of them (MaxViT at 224 px was killed)
                    "CalibStridedMinMax": 1,
                },
            )  # fmt: skip
            result = onnx.load(out)
    except Exception as e:  # onnxruntime's quantizer raises plain exceptions of many kinds
        raise ExportError(f"ort-cpu: onnxruntime's quantizer failed: {e}") from e
    finally:
        logging.getLogger().setLevel(level)
    del result.metadata_props[:]
    result.metadata_props.extend(qdq.metadata_props)
    store_weights_unsaturated(result)
    return result


def _overrides(view: FloatView, quant_type) -> dict[str, list[dict]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[dict]] = {}
    for name, w in view.weights.items():
        out[name] = [
            {"axis": w.axis, "quant_type": quant_type.QInt8, "scale": np.array(s, np.float32),
             "zero_point": np.array(0, np.int8)}
            for s in w.scales
        ]  # fmt: skip
    for name in view.acts:
        scale, zp = act_grid_8bit(view.widest(name))
        out[name] = [{"quant_type": quant_type.QUInt8, "scale": np.array(scale, np.float32),
                      "zero_point": np.array(zp, np.uint8)}]  # fmt: skip
    return out
