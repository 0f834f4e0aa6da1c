"""``retarget``: write an exported file for another deployment target, without fine-tuning."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnx

from zerop_deploy.deploy import check_target, target_of, target_section, to_target
from zerop_deploy.errors import ConfigError

CALIBRATION_IMAGES = 256
"""Images that calibrate the tensors the student kept in float (and as many that check)."""


def default_output(qmodel: Path, target: str) -> Path:
    """``model.int4.onnx`` -> ``model.int4.ort-cpu.onnx``."""
    stem = qmodel.name[: -len(".onnx")] if qmodel.name.endswith(".onnx") else qmodel.name
    return qmodel.with_name(f"{stem}.{target}.onnx")


def retarget_model(
    qproto: onnx.ModelProto,
    source: str,
    target: str,
    images: Any,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Write ``qproto`` (read from ``source``) for ``target``; return the model and its report.

    Args:
        qproto: A ``quantize`` output of target ``qdq``.
        source: Its path, for messages.
        target: The wanted target.
        images: Model-ready float32 images: the first half calibrates, the second half checks.

    Raises:
        ConfigError: The file already is for ``target``, or it cannot be turned into it.
        ExportError: The conversion fails.
    """
    check_target(target)
    have = target_of(qproto, source)
    if have == target:
        raise ConfigError(f"{source}: the file already is for target {target}; nothing to do")
    if have != "qdq":
        raise ConfigError(
            f"{source}: a {have} file keeps 8-bit activation grids, not the student's; "
            "write the qdq file with quantize --target qdq and retarget that one"
        )
    start = time.monotonic()
    half = max(1, len(images) // 2)
    calib, check = images[:half], images[half:] if len(images) > half else images[:half]
    model = to_target(qproto, target, calib)
    from zerop_deploy.validate import compare_files

    doc = {
        "input": source,
        "target": target_section(target, model),
        "calibration_images": len(calib),
        "seconds": round(time.monotonic() - start, 2),
    }
    doc["target"]["vs_qdq"] = compare_files(model, qproto, check)
    return model, doc
