"""Does the converted module compute what onnxruntime computes? Random inputs, both, the diff."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from zerop_deploy.errors import UnsupportedModelError, ValidationError
from zerop_deploy.load.read import graph_inputs, short_error

if TYPE_CHECKING:
    import torch

DEFAULT_BATCH = 2
"""Batch size used for a dynamic leading dimension when a random input is made."""


@dataclass(frozen=True)
class Parity:
    """How far the converted module is from onnxruntime on one random batch."""

    max_abs_diff: float
    output_scale: float
    input_shapes: dict[str, tuple[int, ...]]

    @property
    def relative_diff(self) -> float:
        """``max_abs_diff`` divided by the largest output magnitude (at least 1)."""
        return self.max_abs_diff / max(1.0, self.output_scale)


_NP_OF_ONNX = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
}


def input_shape(
    value: onnx.ValueInfoProto, *, batch: int = DEFAULT_BATCH, source: str = "model"
) -> tuple[int, ...]:
    """Concrete shape of a graph input: a dynamic leading (batch) dimension becomes ``batch``.

    Raises:
        UnsupportedModelError: If the input has no shape, a dynamic non-batch dimension or a zero
            dim.
    """
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        raise UnsupportedModelError(
            f"{source}: input '{value.name}' has no shape; re-export with shapes"
        )
    shape = []
    for i, d in enumerate(ttype.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        elif i == 0 and not d.HasField("dim_value"):
            shape.append(batch)
        elif d.HasField("dim_value"):
            raise UnsupportedModelError(
                f"{source}: input '{value.name}' has a zero-sized dimension {i}; "
                "re-export with the "
                "real input shape"
            )
        else:
            raise UnsupportedModelError(
                f"{source}: input '{value.name}' dimension {i} is dynamic ('{d.dim_param}'); "
                "re-export with a fixed image size (only the batch dimension may be dynamic)"
            )
    return tuple(shape)


def random_inputs(
    proto: onnx.ModelProto, *, batch: int = DEFAULT_BATCH, seed: int = 0, source: str = "model"
) -> dict[str, np.ndarray]:
    """Uniform [0, 1) random tensors for every graph input, in the input's float dtype."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in graph_inputs(proto):
        elem = v.type.tensor_type.elem_type
        if elem not in _NP_OF_ONNX:
            raise UnsupportedModelError(
                f"{source}: input '{v.name}' has element type "
                f"{onnx.TensorProto.DataType.Name(elem)}; only float image inputs are supported"
            )
        shape = input_shape(v, batch=batch, source=source)
        feeds[v.name] = rng.random(shape, dtype=np.float64).astype(_NP_OF_ONNX[elem])
    return feeds


def run_onnxruntime(
    model: onnx.ModelProto | str | os.PathLike[str],
    feeds: dict[str, np.ndarray],
    *,
    source: str = "model",
) -> list[np.ndarray]:
    """Run a model (proto or path) on onnxruntime's CPU provider and return all outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors become our own one-line messages
    arg: Any = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        sess = ort.InferenceSession(arg, opts, providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in sess.run(None, feeds)]
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValidationError(
            f"{source}: onnxruntime cannot run the model: {short_error(e)}"
        ) from e


def run_torch(module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a converted module on numpy inputs (in graph-input order) and return all outputs."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module(*[torch.from_numpy(x) for x in feeds.values()])
    outs: Sequence[Any] = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().cpu().numpy() for o in outs]


def check_parity(
    proto: onnx.ModelProto,
    module: torch.nn.Module,
    *,
    model_path: str | os.PathLike[str] | None = None,
    batch: int = DEFAULT_BATCH,
    seed: int = 0,
) -> Parity:
    """Compare the converted module with onnxruntime on one random batch.

    Args:
        proto: The original model.
        module: Its conversion.
        model_path: Run onnxruntime from this file instead of the serialised proto (large models).
        batch: Batch size for a dynamic leading dimension.
        seed: Seed of the random input.

    Returns:
        The largest absolute difference over all outputs and the largest output magnitude.
    """
    source = str(model_path or "model")
    feeds = random_inputs(proto, batch=batch, seed=seed, source=source)
    ref = run_onnxruntime(model_path if model_path is not None else proto, feeds, source=source)
    got = run_torch(module, feeds)
    if len(ref) != len(got):
        raise ValidationError(
            f"{source}: the converted module returns {len(got)} outputs, onnxruntime {len(ref)}"
        )
    diff, scale = 0.0, 0.0
    for r, g in zip(ref, got, strict=True):
        if r.shape != g.shape:
            raise ValidationError(
                f"{source}: output shapes differ: onnxruntime {r.shape}, PyTorch {g.shape}"
            )
        if r.size:
            diff = max(diff, float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))))
            scale = max(scale, float(np.max(np.abs(r))))
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    return Parity(max_abs_diff=diff, output_scale=scale, input_shapes=shapes)


PARITY_TOLERANCE = 1e-3
"""Largest accepted ``max|torch - onnxruntime| / max(1, max|output|)`` for a conversion."""
