"""Preflight of quantize: export and load a calibrated student before any expensive work.

Everything that can make a run fail at its end (the QDQ export, the ONNX checker, onnxruntime
refusing the file with its default session options) depends on the graph and the quantization
settings, not on the fine-tuned values. So quantize first builds the student from the settings it
was given, calibrates it on a few images, exports it, loads the file in onnxruntime and runs it:
an export problem then costs seconds, not the proxy selection, the synthesis and the fine-tuning.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx
import torch

from zerop_deploy.config import QuantConfig
from zerop_deploy.errors import ExportError, InputError, ValidationError
from zerop_deploy.export.qdq import export_qdq
from zerop_deploy.export.targets import to_target
from zerop_deploy.quant.calibrate import calibrate_activations, init_weight_scales
from zerop_deploy.quant.student import build_student, layer_quants
from zerop_deploy.validate.compare import OrtRunner

PREFLIGHT_IMAGES = 4
"""Images the preflight calibrates on and runs through both models."""


def preflight(
    teacher: torch.nn.Module,
    proto: onnx.ModelProto,
    quant: QuantConfig,
    images: torch.Tensor,
    source: str,
    *,
    target: str = "qdq",
    default_target: bool = False,
) -> dict[str, Any]:
    """Build, calibrate and export a student with ``quant``; load and run it in onnxruntime.

    Args:
        teacher: The fp32 module (left untouched; the student is a copy).
        proto: The original model.
        quant: The run's quantization settings (bit widths, layer choices).
        images: Model-ready float images (N x C x H x W); random ones do, the check is structural.
        source: The model file, for messages.
        target: The deployment target; the file is also written for it and loaded.
        default_target: ``target`` is the default, not the user's choice: where the file cannot
            be written for it, the run goes on with ``qdq`` (said in the returned section's
            ``target_fallback``) instead of stopping.

    Returns:
        The report's ``preflight`` section: ``{"seconds", "images", "quantized_layers",
        "ort_vs_student_max_abs_logit_diff"}``.

    Raises:
        InputError: The model has no layer to quantize.
        ExportError: The export fails (names the node and what to do).
        ValidationError: onnxruntime cannot load or run the exported file.
    """
    start = time.monotonic()
    student, plan = build_student(teacher.cpu(), proto, quant)
    if all(p.skipped for p in plan):
        raise InputError(
            f"{source}: the model has no layer to quantize (Conv, ConvTranspose, Gemm, MatMul with "
            "a constant weight)"
        )
    init_weight_scales(student)
    calibrate_activations(student, [images])
    student.eval()
    what = "before fine-tuning, a calibrated student"
    try:
        qproto = export_qdq(proto, layer_quants(student, plan, proto), int32_bias=True)
    except ExportError as e:
        raise ExportError(f"{source}: {what} cannot be exported: {e}") from e
    fallback, ort_logits = None, None
    if target != "qdq":
        exact = qproto
        try:
            qproto = to_target(exact, target, images.numpy())
            ort_logits = OrtRunner(qproto).logits(images.numpy())
        except (ExportError, ValidationError) as e:
            if not default_target:
                raise ExportError(
                    f"{source}: {what} cannot be written for --target {target}: {e}; "
                    "use --target qdq"
                ) from e
            fallback = f"target {target} cannot be written for this model ({e})"
            qproto, target = exact, "qdq"
    try:
        if ort_logits is None:  # the qdq file (asked for, or the fallback): load it now
            ort_logits = OrtRunner(qproto).logits(images.numpy())
    except ValidationError as e:
        raise ValidationError(
            f"{source}: {what} was exported, but {e}; keep the layer onnxruntime names in float "
            "with --layer-config, or try other --wbits/--abits"
        ) from e
    with torch.no_grad():
        ours = student(images).reshape(len(images), -1).numpy()
    return {
        "seconds": round(time.monotonic() - start, 2),
        "target": target,
        **({"target_fallback": fallback} if fallback else {}),
        "images": len(images),
        "quantized_layers": sum(p.skipped is None for p in plan),
        "ort_vs_student_max_abs_logit_diff": float(np.abs(ort_logits - ours).max()),
    }


def preflight_images(chw: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Uniform random images in [0, 1) of the model's input size (model-ready after normalize)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((PREFLIGHT_IMAGES, *chw), generator=gen)
