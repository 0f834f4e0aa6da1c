"""Read a user's ONNX model safely, convert it to PyTorch, check that both compute the same.

The front end of the pipeline::

    path --read_model--> ModelProto (checked; external data only from the model's folder)
         --convert_model--> torch.fx.GraphModule (onnx2torch + zerop_deploy.convert)
         --check_parity--> max |torch - onnxruntime| on a random batch of the input's shape

Every failure is a :class:`~zerop_deploy.errors.ZeropError` with one line naming the file, node,
op or opset and what to do; nothing here writes a file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from zerop_deploy._graph_order import check_order
from zerop_deploy._tensor_checks import (
    check_finite_constants,
    check_tensor_sizes,
    graph_constants,
)
from zerop_deploy.errors import InputError, UnsupportedModelError, ValidationError
from zerop_deploy.onnx_facts import opset_of

if TYPE_CHECKING:
    import torch

# onnx2torch's Slice indexes with a list, which torch >= 2.9 warns about on every forward pass; the
# result is still correct (checked by every parity test), so users should not see it on each step.
warnings.filterwarnings(
    "ignore",
    message="Using a non-tuple sequence for multidimensional indexing",
    category=UserWarning,
)

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


@dataclass(frozen=True)
class LoadedModel:
    """A user's model, read, checked and converted."""

    path: Path
    proto: onnx.ModelProto
    module: torch.fx.GraphModule
    parity: Parity | None


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def read_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and check an ONNX file, with its external data, refusing anything unsafe or broken.

    External data must be a relative location that resolves (symlinks followed) inside the model's
    folder and must be long enough for the tensor it holds.

    Args:
        path: The ``.onnx`` file.

    Returns:
        The checked ModelProto with all external data loaded into it.

    Raises:
        InputError: Missing, unreadable, empty, corrupt or unsafe file, or a graph without inputs.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file; pass the path of an .onnx model")
    if p.is_dir():
        raise InputError(f"{p}: is a directory; pass the path of an .onnx model file")
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e.strerror}); check its permissions") from e
    if size == 0:
        raise InputError(f"{p}: the file is empty; pass a valid .onnx model")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InputError(
            f"{p}: not a valid ONNX protobuf (truncated or not an ONNX file: {e}); "
            "re-export the model"
        ) from e
    _check_structure(proto, p)
    _load_external_data(proto, p)
    check_tensor_sizes(graph_constants(proto.graph), str(p))
    check_order(proto.graph, p)
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise InputError(f"{p}: the ONNX checker rejects the model: {_short(e)}") from e
    return proto


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_structure(proto: onnx.ModelProto, p: Path) -> None:
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise InputError(f"{p}: holds no ONNX graph (not an ONNX model?); re-export the model")
    if proto.ir_version < 3:
        raise InputError(
            f"{p}: ONNX IR version {proto.ir_version} is too old; re-export with opset >= 11"
        )
    if not graph_inputs(proto):
        raise InputError(
            f"{p}: the graph has no inputs; a model to quantize must take an image tensor"
        )


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def _load_external_data(proto: onnx.ModelProto, p: Path) -> None:
    base = p.resolve().parent
    external = [t for t in _all_tensors(proto.graph) if external_data_helper.uses_external_data(t)]
    for t in external:
        info = external_data_helper.ExternalDataInfo(t)
        loc = info.location
        if not loc or os.path.isabs(loc) or Path(loc).is_absolute():
            raise InputError(
                f"{p}: tensor '{t.name}' points to external data at absolute path '{loc}'; refused "
                "(path traversal); keep external data files next to the model"
            )
        target = (base / loc).resolve()
        if base != target and base not in target.parents:
            raise InputError(
                f"{p}: tensor '{t.name}' points to external data '{loc}' outside the model's "
                "folder; "
                "refused (path traversal); keep external data files next to the model"
            )
        if not target.is_file():
            raise InputError(
                f"{p}: external data file '{loc}' of tensor '{t.name}' is missing; "
                "copy it next to the model"
            )
        offset = int(info.offset or 0)
        need = offset + int(info.length) if info.length else offset + 1
        if target.stat().st_size < need:
            raise InputError(
                f"{p}: external data file '{loc}' is too short for tensor '{t.name}'; "
                "the file is truncated: copy it again"
            )
    if external:
        try:
            external_data_helper.load_external_data_for_model(proto, str(base))
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: external data cannot be read: {_short(e)}") from e


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (old exporters also list initializers as inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in inits]


def ensure_node_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Name every unnamed node ``<OpType>_<index>`` (in a copy); named nodes keep their names.

    Later stages identify layers by node name (onnx2torch names modules after nodes, the exporter
    finds the nodes to rewrite by name), so a node without a name could not be mapped back.
    """
    if all(n.name for n in proto.graph.node):
        return proto
    named = onnx.ModelProto()
    named.CopyFrom(proto)
    taken = {n.name for n in named.graph.node if n.name}
    for i, node in enumerate(named.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return named


# --------------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------------


def _missing_converters(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    from onnx2torch.node_converters.registry import get_converter

    opsets = {imp.domain or "": imp.version for imp in proto.opset_import}
    missing = []
    for node in proto.graph.node:
        try:
            get_converter(node.op_type, opsets.get(node.domain or "", 0), node.domain or "")
        except NotImplementedError:
            missing.append(node)
    return missing


def convert_model(proto: onnx.ModelProto, *, source: str = "model") -> torch.fx.GraphModule:
    """Convert a checked ModelProto to an fp32 ``torch.fx.GraphModule`` in eval mode.

    The graph is first passed through
    :func:`zerop_deploy.convert.prepare.prepare_for_onnx2torch` (weights computed by constant
    Identity/ConstantOfShape nodes become initializers; meaning unchanged). onnx2torch names each
    submodule after its ONNX node (dots become slashes), which is how later stages map a module
    back to the node and initializer it came from.

    Args:
        proto: A model from :func:`read_model`.
        source: Name used in error messages (usually the file path).

    Returns:
        The converted module.

    Raises:
        UnsupportedModelError: Naming the first node whose op/opset has no converter or fails to
            convert.
    """
    from zerop_deploy.convert.prepare import prepare_for_onnx2torch  # also registers converters

    proto = prepare_for_onnx2torch(proto)
    missing = _missing_converters(proto)
    if missing:
        n = missing[0]
        ops = sorted({f"{m.domain + '::' if m.domain else ''}{m.op_type}" for m in missing})
        raise UnsupportedModelError(
            f"{source}: node '{n.name}' op {n.op_type} (domain '{n.domain or 'ai.onnx'}', opset "
            f"{opset_of(proto, n.domain or '')}) has no PyTorch converter (unsupported ops: "
            f"{', '.join(ops)}); re-export with standard ONNX ops or file an issue with the model"
        )
    from onnx2torch import convert

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = convert(proto)
    except Exception as e:  # onnx2torch raises bare exceptions from inside converters
        raise UnsupportedModelError(
            f"{source}: {_failing_node(proto)} cannot be converted to PyTorch: {_short(e)}"
        ) from e
    return module.eval()


def _failing_node(proto: onnx.ModelProto) -> str:
    """Find the node whose converter raises, by converting node by node (only on the error path)."""
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    try:
        graph = OnnxGraph(safe_shape_inference(proto).graph)
    except Exception:  # noqa: BLE001 - diagnosis only
        return "the model"
    opsets = {imp.domain or "": imp.version for imp in proto.opset_import}
    for node in graph.nodes.values():
        try:
            get_converter(node.operation_type, opsets.get(node.domain, 0), node.domain)(node, graph)
        except Exception:  # noqa: BLE001 - diagnosis only
            return (
                f"node '{node.name}' op {node.operation_type} (opset {opsets.get(node.domain, 0)})"
            )
    return "the model"


# --------------------------------------------------------------------------------------------------
# parity with onnxruntime
# --------------------------------------------------------------------------------------------------

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
        raise ValidationError(f"{source}: onnxruntime cannot run the model: {_short(e)}") from e


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


def load_model(path: str | os.PathLike[str], *, parity: bool = True, seed: int = 0) -> LoadedModel:
    """Read, check and convert a model, then verify the conversion against onnxruntime.

    Args:
        path: The ``.onnx`` file (external data next to it).
        parity: Run the onnxruntime comparison.
        seed: Seed of the random parity input.

    Returns:
        The loaded model. Its ``proto`` is the graph the later stages work on and export: the file's
        graph with constant-computed weights turned into initializers and unnamed nodes named
        (see :func:`~zerop_deploy.convert.prepare.prepare_for_onnx2torch`,
        :func:`ensure_node_names`).

    Raises:
        InputError: The file cannot be used, or a weight holds NaN or Inf
            (:func:`~zerop_deploy._tensor_checks.check_finite_constants`).
        UnsupportedModelError: No converter, or the conversion disagrees with onnxruntime.
        ValidationError: onnxruntime cannot run the model.
    """
    from zerop_deploy.convert.prepare import prepare_for_onnx2torch

    p = Path(path)
    proto = ensure_node_names(prepare_for_onnx2torch(read_model(p)))
    check_finite_constants(proto, str(p))
    module = convert_model(proto, source=str(p))
    result = check_parity(proto, module, model_path=p, seed=seed) if parity else None
    if result is not None and result.relative_diff > PARITY_TOLERANCE:
        raise UnsupportedModelError(
            f"{p}: the PyTorch conversion differs from onnxruntime by {result.max_abs_diff:.3g} "
            f"(output scale {result.output_scale:.3g}); please file an issue with the model"
        )
    return LoadedModel(path=p, proto=proto, module=module, parity=result)


def image_input_chw(proto: onnx.ModelProto, source: str) -> tuple[int, int, int]:
    """The (C, H, W) of the model's single image input.

    Raises:
        InputError: Several inputs, or an input that is not N x C x H x W with fixed C, H, W.
    """
    inputs = graph_inputs(proto)
    if len(inputs) != 1:
        raise InputError(
            f"{source}: the model has {len(inputs)} inputs; this command needs one image input"
        )
    shape = input_shape(inputs[0], batch=1, source=source)
    if len(shape) != 4:
        raise InputError(
            f"{source}: input '{inputs[0].name}' has shape {shape}; expected N x C x H x W"
        )
    return shape[1], shape[2], shape[3]
