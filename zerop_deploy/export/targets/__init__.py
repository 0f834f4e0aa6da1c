"""Deployment targets of an exported model: ``qdq`` (the exact student) and ``ort-cpu``.

``qdq`` is what :func:`zerop_deploy.export.qdq.export_qdq` writes: the student bit for bit, 4-bit
initializers where the layer is 4-bit, the compact and portable format. ``ort-cpu``
(:mod:`zerop_deploy.export.targets.ort_cpu`) is the same network placed so that stock onnxruntime
runs it on its 8-bit integer CPU kernels. :func:`to_target` turns a ``qdq`` file into a target;
:func:`target_section` says what changed and what onnxruntime runs as integers.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx

from zerop_deploy.config import DEFAULT_TARGET, TARGETS  # noqa: F401 - part of this module's face
from zerop_deploy.errors import ConfigError, InputError
from zerop_deploy.export.qdq import METADATA_KEY
from zerop_deploy.export.targets.ort_cpu import to_ort_cpu
from zerop_deploy.export.targets.ort_kernels import kernel_summary

ORT_CPU_CHANGES = [
    "weights: the student's integer levels and scales, stored as int8 (exact)",
    "8-bit activations of the student: same scale, as uint8 (exact)",
    "4-bit activations of the student: uint8 with a 17 times finer step and the same range "
    "(saturates where the 4-bit grid did; in between, rounds to the finer grid)",
    "tensors the student kept in float where onnxruntime's integer ops need them (layer "
    "outputs, Add, Concat, pooling): uint8, range calibrated on the images given",
    "integer arithmetic folded to constants (shapes, pads); zero Pad folded into its Conv; "
    "channel shuffle as one Gather (the same numbers)",
]


def check_target(name: str) -> str:
    """Return ``name`` if it is a target; else ConfigError naming the choices."""
    if name not in TARGETS:
        raise ConfigError(f"--target {name!r}: choose one of {', '.join(TARGETS)}")
    return name


def target_of(model: onnx.ModelProto, source: str) -> str:
    """The target an exported file was written for (``qdq`` when it does not say).

    Raises:
        InputError: The file was not written by ``quantize`` (no metadata entry of ours).
    """
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return str(json.loads(prop.value).get("target", "qdq"))
    raise InputError(
        f"{source}: not a file written by zerop-deploy quantize (no '{METADATA_KEY}' metadata); "
        "retarget converts the output of quantize"
    )


def to_target(qdq: onnx.ModelProto, target: str, images: np.ndarray) -> onnx.ModelProto:
    """``qdq`` (a ``quantize`` output of target qdq) written for ``target``.

    Args:
        qdq: The exact student file.
        target: One of :data:`TARGETS`.
        images: Model-ready float32 calibration images (used by ``ort-cpu`` for the tensors the
            student did not quantize).

    Raises:
        ExportError: The conversion fails.
    """
    check_target(target)
    if target == "qdq":
        return qdq

    model = to_ort_cpu(qdq, images)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps({**json.loads(prop.value), "target": target},
                                    separators=(",", ":"))  # fmt: skip
    return model


def target_section(target: str, model: onnx.ModelProto) -> dict[str, Any]:
    """The report's ``target`` section: the target, whether it is exact, what changed, kernels."""
    return {
        "name": target,
        "exact": target == "qdq",
        "changes": [] if target == "qdq" else ORT_CPU_CHANGES,
        "onnxruntime_kernels": kernel_summary(model),
    }
