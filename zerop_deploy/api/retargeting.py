"""``retarget``: write an exported file for another deployment target, without fine-tuning."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import onnx

from zerop_deploy.data.preprocess import Preprocess
from zerop_deploy.data.sources import load_pool, open_source
from zerop_deploy.errors import ConfigError
from zerop_deploy.export.targets import check_target, target_of, target_section, to_target
from zerop_deploy.io import atomic_write_bytes, check_output_path, output_lock
from zerop_deploy.load.read import read_model
from zerop_deploy.load.to_torch import image_input_chw
from zerop_deploy.validate.compare import compare_files


def retarget(
    qmodel: str | os.PathLike[str],
    target: str,
    *,
    output: str | os.PathLike[str] | None = None,
    data: str = "builtin",
    preprocess: Preprocess | None = None,
) -> dict[str, Any]:
    """Write a ``quantize`` output for another deployment target, without fine-tuning again.

    Args:
        qmodel: A file written by ``quantize --target qdq``.
        target: The target (:data:`zerop_deploy.export.targets.TARGETS`).
        output: Output path; default ``<qmodel stem>.<target>.onnx``.
        data: Images that calibrate what the student kept in float (half of them) and check the
            result against ``qmodel`` (the other half); the built-in pool by default.
        preprocess: How ``data`` images become model inputs (geometry, ``--mean``/``--std``).

    Returns:
        ``{"input", "output", "target": {"name", "exact", "changes", "onnxruntime_kernels",
        "vs_qdq"}, "calibration_images", "seconds"}``.
    """
    src = Path(qmodel)
    out = check_output_path(output or target_output(src, target), [src])
    qproto = read_model(src)
    chw = image_input_chw(qproto, str(src))
    preprocess = preprocess or Preprocess()
    pool = load_pool(open_source(data, preprocess=preprocess), chw, limit=2 * CALIBRATION_IMAGES)
    images = preprocess.to_input(pool.images).numpy()
    with output_lock(out):
        model, doc = retarget_model(qproto, str(src), target, images)
        atomic_write_bytes(out, model.SerializeToString())
    return {"input": str(src), "output": str(out), **{k: v for k, v in doc.items() if k != "input"}}


CALIBRATION_IMAGES = 256
"""Images that calibrate the tensors the student kept in float (and as many that check)."""


def target_output(qmodel: Path, target: str) -> Path:
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
    doc = {
        "input": source,
        "target": target_section(target, model),
        "calibration_images": len(calib),
        "seconds": round(time.monotonic() - start, 2),
    }
    doc["target"]["vs_qdq"] = compare_files(model, qproto, check)
    return model, doc
