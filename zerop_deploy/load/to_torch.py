"""Convert a checked ModelProto to PyTorch (onnx2torch + our converters) and load a model whole.

The front end of the pipeline::

    path --read_model--> ModelProto (checked; external data only from the model's folder)
         --convert_model--> torch.fx.GraphModule (onnx2torch + zerop_deploy.load.convert)
         --check_parity--> max |torch - onnxruntime| on a random batch of the input's shape

Every failure is a :class:`~zerop_deploy.errors.ZeropError` with one line naming the file, node,
op or opset and what to do; nothing here writes a file.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from zerop_deploy.errors import InputError, UnsupportedModelError
from zerop_deploy.load.convert.pads import fold_pads_into_convs
from zerop_deploy.load.convert.prepare import prepare_for_onnx2torch
from zerop_deploy.load.parity import PARITY_TOLERANCE, Parity, check_parity, input_shape
from zerop_deploy.load.read import ensure_node_names, graph_inputs, read_model, short_error
from zerop_deploy.load.tensor_checks import check_finite_constants
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
    :func:`zerop_deploy.load.convert.prepare.prepare_for_onnx2torch` (weights computed by constant
    Identity/ConstantOfShape nodes become initializers; meaning unchanged), and symmetric zero Pad
    nodes in front of convolutions end up in the convolutions' padding
    (:func:`zerop_deploy.load.convert.pads.fold_pads_into_convs`; meaning unchanged). onnx2torch
    names each submodule after its ONNX node (dots become slashes), which is how later stages map a
    module back to the node and initializer it came from.

    Args:
        proto: A model from :func:`read_model`.
        source: Name used in error messages (usually the file path).

    Returns:
        The converted module.

    Raises:
        UnsupportedModelError: Naming the first node whose op/opset has no converter or fails to
            convert.
    """
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
            f"{source}: {_failing_node(proto)} cannot be converted to PyTorch: {short_error(e)}"
        ) from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx2torch's own, from the constant pads it computes
        fold_pads_into_convs(module)
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


def load_model(path: str | os.PathLike[str], *, parity: bool = True, seed: int = 0) -> LoadedModel:
    """Read, check and convert a model, then verify the conversion against onnxruntime.

    Args:
        path: The ``.onnx`` file (external data next to it).
        parity: Run the onnxruntime comparison.
        seed: Seed of the random parity input.

    Returns:
        The loaded model. Its ``proto`` is the graph the later stages work on and export: the file's
        graph with constant-computed weights turned into initializers and unnamed nodes named
        (see :func:`~zerop_deploy.load.convert.prepare.prepare_for_onnx2torch`,
        :func:`ensure_node_names`).

    Raises:
        InputError: The file cannot be used, or a weight holds NaN or Inf
            (:func:`~zerop_deploy.load.tensor_checks.check_finite_constants`).
        UnsupportedModelError: No converter, or the conversion disagrees with onnxruntime.
        ValidationError: onnxruntime cannot run the model.
    """
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
