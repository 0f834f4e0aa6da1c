"""onnxruntime checks of an exported model: agreement with fp32 and with the student, accuracy.

Every model runs on onnxruntime's CPU provider with its default optimisations, which is what a
user of the exported file gets. Models are given as a path (read with
:func:`zerop_deploy.load.read.read_model`, so external data is loaded safely) or as a ModelProto;
images are float32 NCHW, already preprocessed the way the model expects. The logits are the model's
first output.

:func:`validate` builds the document of ``zerop-deploy validate``::

    {"qmodel", "reference", "images", "fp32_vs_quant_top1_agreement", "max_abs_logit_diff",
     "accuracy": {"fp32", "quantized"} (only with labels), "min_agreement", "passed"}
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
import onnx

from zerop_deploy.errors import ConfigError, InputError, QualityGateError, ValidationError
from zerop_deploy.load.read import read_model

ModelLike = Union[str, "os.PathLike[str]", onnx.ModelProto]
"""A model as a path to an ``.onnx`` file or as a ModelProto."""

DEFAULT_BATCH_SIZE = 256
"""Images per onnxruntime call."""


def check_gate(
    doc: dict[str, Any], agreement: float, min_agreement: float | None, what: str
) -> None:
    """The one quality gate: raise when ``agreement`` is under ``min_agreement``.

    Raises:
        QualityGateError: (exit code 1) carrying the finished ``doc``; ``what`` names the
            comparison for the message ("m.int4.onnx: top-1 agreement with the fp32 model").
    """
    if min_agreement is not None and agreement < min_agreement:
        raise QualityGateError(
            f"{what} is {agreement:.4f}, under --min-agreement {min_agreement}", doc
        )


# --------------------------------------------------------------------------------------------------
# running a model
# --------------------------------------------------------------------------------------------------


def _name(model: ModelLike) -> str:
    return "model" if isinstance(model, onnx.ModelProto) else str(model)


def _session(model: ModelLike) -> Any:
    import onnxruntime as ort

    proto = model if isinstance(model, onnx.ModelProto) else read_model(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors become our own one-line messages
    try:
        sess = ort.InferenceSession(
            proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValidationError(f"{_name(model)}: onnxruntime cannot load the model: {e}") from e
    if len(sess.get_inputs()) != 1:
        raise ValidationError(
            f"{_name(model)}: the model takes {len(sess.get_inputs())} inputs; validation feeds "
            "images to a model with exactly one input"
        )
    return sess


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(
            f"images: expected a non-empty N x C x H x W batch, got shape {images.shape}; "
            "pass at least one preprocessed image"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(
            f"images: expected float32 NCHW preprocessed images, got {images.dtype} (raw uint8 "
            "NHWC?); convert them to the model's input format first"
        )
    return np.ascontiguousarray(images, dtype=np.float32)


def _fixed_batch(sess: Any, images: np.ndarray, source: str) -> int | None:
    """Check the image shape against the model's input; return a fixed batch size, if any."""
    inp = sess.get_inputs()[0]
    shape = list(inp.shape)
    if len(shape) != images.ndim or any(
        isinstance(d, int) and d != n for d, n in zip(shape[1:], images.shape[1:], strict=True)
    ):
        raise InputError(
            f"{source}: input '{inp.name}' has shape {shape} but the images are "
            f"{list(images.shape)}; resize or crop the images to the model's input size"
        )
    return shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None


class OrtRunner:
    """One onnxruntime session for a model, reused for every batch of images run through it."""

    def __init__(self, model: ModelLike) -> None:
        """Load ``model`` (path or ModelProto) into an onnxruntime CPU session.

        Raises:
            InputError: Missing or unreadable model file.
            ValidationError: If onnxruntime cannot load it, or it has more than one input.
        """
        self.sess = _session(model)
        self.source = _name(model)

    def logits(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """See :func:`run_logits`."""
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {batch_size}")
        images = _check_images(images)
        fixed = _fixed_batch(self.sess, images, self.source)
        step = fixed or batch_size
        name = self.sess.get_inputs()[0].name
        outs = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            n = len(chunk)
            if fixed and n < fixed:
                pad = np.zeros((fixed - n, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            try:
                out = np.asarray(self.sess.run(None, {name: chunk})[0])
            except Exception as e:  # onnxruntime raises its own exception types
                raise ValidationError(
                    f"{self.source}: onnxruntime cannot run the model: {e}"
                ) from e
            outs.append(out[:n].reshape(n, -1).astype(np.float32))
        return np.concatenate(outs)


def run_logits(
    model: ModelLike, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Run ``model`` on ``images`` in batches and return its first output as ``[N, classes]``.

    A model with a fixed batch dimension gets batches of exactly that size (the last one padded).
    To run one model on several sets of images, make an :class:`OrtRunner` once instead.

    Args:
        model: Path or ModelProto.
        images: float32 ``[N, C, H, W]``, preprocessed.
        batch_size: Images per onnxruntime call.

    Returns:
        float32 logits, one row per image (further output dimensions are flattened).

    Raises:
        InputError: Empty or non-float images, or images that do not fit the model's input.
        ValidationError: If onnxruntime cannot load or run the model.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be at least 1, got {batch_size}")
    images = _check_images(images)  # before the model is read, as bad images are named first
    return OrtRunner(model).logits(images, batch_size=batch_size)


# --------------------------------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------------------------------


def top1_matches(logits: np.ndarray, reference: np.ndarray) -> int:
    """Rows of ``logits`` whose top-1 class is ``reference``'s: its argmax, or its label (1-D).

    The one definition of top-1 agreement and accuracy; both are this count over the rows.
    """
    if reference.ndim == 1:
        return int((logits.argmax(axis=1) == reference).sum())
    if logits.shape != reference.shape:
        raise ValidationError(
            f"logits of shape {logits.shape} and {reference.shape} cannot be compared"
        )
    return int((logits.argmax(axis=1) == reference.argmax(axis=1)).sum())


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Return the fraction of rows whose argmax is the same in ``a`` and ``b``."""
    return top1_matches(a, b) / max(1, len(a))


def _logit_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def compare_models(
    qmodel: ModelLike,
    reference: ModelLike,
    images: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Compare a quantized model with its fp32 reference on the same images.

    Args:
        qmodel: The exported (QDQ) model.
        reference: The original fp32 model.
        images: float32 ``[N, C, H, W]``, preprocessed.
        batch_size: Images per onnxruntime call.

    Returns:
        ``{"images", "fp32_vs_quant_top1_agreement", "max_abs_logit_diff"}`` (over the logits).
    """
    q = run_logits(qmodel, images, batch_size=batch_size)
    ref = run_logits(reference, images, batch_size=batch_size)
    return _comparison(q, ref)


def compare_files(a: ModelLike, b: ModelLike, images: np.ndarray) -> dict[str, Any]:
    """Two quantized files of one network on the same images: top-1 agreement and logit gap.

    Returns:
        ``{"images", "top1_agreement", "max_abs_logit_diff"}``.
    """
    la, lb = run_logits(a, images), run_logits(b, images)
    return {
        "images": len(la),
        "top1_agreement": top1_agreement(la, lb),
        "max_abs_logit_diff": _logit_diff(la, lb),
    }


def _comparison(q: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    return {
        "images": len(q),
        "fp32_vs_quant_top1_agreement": top1_agreement(q, ref),
        "max_abs_logit_diff": _logit_diff(q, ref),
    }


def _check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"labels: expected {n} integer class indices (one per image), got {len(labels)} of "
            f"type {labels.dtype}"
        )
    return labels


def accuracy(
    model: ModelLike,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Return the top-1 accuracy of ``model`` on labelled images (a fraction in [0, 1]).

    Raises:
        InputError: If there is not one integer label per image.
    """
    labels = _check_labels(labels, len(images))
    logits = run_logits(model, images, batch_size=batch_size)
    return top1_matches(logits, labels) / max(1, len(labels))


def agreement_with_student(
    qmodel: ModelLike | np.ndarray,
    student_logits: np.ndarray,
    *,
    images: np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Compare onnxruntime on the exported model with the torch student's logits.

    Args:
        qmodel: The exported model (then ``images`` is required), or its onnxruntime logits already
            computed with :func:`run_logits`.
        student_logits: ``[N, classes]`` logits of the fake-quantized torch student on the
            same images.
        images: The images the student saw, when ``qmodel`` is a model.
        batch_size: Images per onnxruntime call.

    Returns:
        ``{"images", "ort_vs_student_top1_agreement", "max_abs_logit_diff_vs_student"}``.

    Raises:
        ConfigError: If ``qmodel`` is a model and no images are given.
    """
    if isinstance(qmodel, np.ndarray):
        q = np.asarray(qmodel, np.float32).reshape(len(qmodel), -1)
    elif images is None:
        raise ConfigError("agreement_with_student: pass images= to run the exported model")
    else:
        q = run_logits(qmodel, images, batch_size=batch_size)
    s = np.asarray(student_logits, np.float32).reshape(len(student_logits), -1)
    return {
        "images": len(q),
        "ort_vs_student_top1_agreement": top1_agreement(q, s),
        "max_abs_logit_diff_vs_student": _logit_diff(q, s),
    }


# --------------------------------------------------------------------------------------------------
# the validate command
# --------------------------------------------------------------------------------------------------


def validate_files(
    qmodel_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    *,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    min_agreement: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Check an exported model against its fp32 original: the ``zerop-deploy validate`` document.

    Args:
        qmodel_path: The exported model.
        reference_path: The original fp32 model.
        images: float32 ``[N, C, H, W]``, preprocessed.
        labels: Optional class index per image; adds ``accuracy``.
        min_agreement: Optional quality gate on ``fp32_vs_quant_top1_agreement``, in [0, 1].
        batch_size: Images per onnxruntime call.

    Returns:
        The document (see the module docstring).

    Raises:
        QualityGateError: (exit code 1) when the agreement is under ``min_agreement``; raised
            after the document is complete, which it carries as ``.doc``.
        ConfigError: If ``min_agreement`` is outside [0, 1].
        InputError: Missing or unreadable model files, bad images or labels.
        ValidationError: If onnxruntime cannot run a model.
    """
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ConfigError(f"--min-agreement: must lie in [0, 1], got {min_agreement}")
    if labels is not None:
        labels = _check_labels(labels, len(np.asarray(images)))
    q = run_logits(qmodel_path, images, batch_size=batch_size)
    ref = run_logits(reference_path, images, batch_size=batch_size)
    doc: dict[str, Any] = {"qmodel": str(qmodel_path), "reference": str(reference_path)}
    doc.update(_comparison(q, ref))
    if labels is not None:
        doc["accuracy"] = {
            "fp32": top1_matches(ref, labels) / len(labels),
            "quantized": top1_matches(q, labels) / len(labels),
        }
    agreement = doc["fp32_vs_quant_top1_agreement"]
    doc["min_agreement"] = min_agreement
    doc["passed"] = None if min_agreement is None else bool(agreement >= min_agreement)
    what = f"{qmodel_path}: top-1 agreement with {reference_path} on {doc['images']} images"
    check_gate(doc, agreement, min_agreement, what)
    return doc
