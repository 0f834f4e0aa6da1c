"""Checks of a LayerQuant list against the original graph, before the exporter builds anything.

Every failure is an :class:`~zerop_deploy.errors.ExportError` with one line naming the node and what
to do. Split from :mod:`zerop_deploy.export.qdq` to keep both files short.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from zerop_deploy.errors import ExportError
from zerop_deploy.onnx_facts import QUANTIZABLE_OPS, constant_tensors, consumers, gemm_scales
from zerop_deploy.quant.qparams import LayerQuant


def check_layers(proto: onnx.ModelProto, layers: list[LayerQuant]) -> None:
    """Check each layer against its node, weight, bias and folded BN in ``proto``.

    Raises:
        ExportError: Naming the first node that does not match and what to do.
    """
    graph = proto.graph
    by_name: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        by_name.setdefault(node.name, []).append(node)
    consts = constant_tensors(graph)
    users = consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    seen: set[str] = set()
    for lq in layers:
        found = by_name.get(lq.node, []) if lq.node else []
        if len(found) != 1:
            what = "is not in the graph" if not found else f"names {len(found)} nodes"
            raise ExportError(
                f"node '{lq.node}': {what}; a LayerQuant must name one node of the original model"
            )
        if lq.node in seen:
            raise ExportError(f"node '{lq.node}': given twice; pass one LayerQuant per node")
        seen.add(lq.node)
        node = found[0]
        _check_node(node, lq, consts)
        if lq.folded_bn is not None:
            _check_bn(node, lq.folded_bn, by_name, users, graph_outputs)


def _check_node(node: onnx.NodeProto, lq: LayerQuant, consts: dict[str, TensorProto]) -> None:
    where = f"node '{node.name}'"
    if node.op_type not in QUANTIZABLE_OPS or lq.op != node.op_type:
        raise ExportError(
            f"{where}: is a {node.op_type} node but the LayerQuant says {lq.op}; only "
            f"{', '.join(QUANTIZABLE_OPS)} layers are exported, each under its own op"
        )
    if lq.wbits not in (4, 8) or (lq.act is not None and lq.act.bits not in (4, 8)):
        raise ExportError(f"{where}: only 4- and 8-bit weights and activations can be exported")
    if len(node.input) < 2 or node.input[1] not in consts:
        raise ExportError(
            f"{where}: its weight (input 1) is not a constant initializer; it cannot "
            "be replaced by integers (re-export the model with constant weights)"
        )
    w = consts[node.input[1]]
    if w.data_type != TensorProto.FLOAT:
        raise ExportError(f"{where}: weight '{w.name}' is not float32; export float32 models only")
    if tuple(w.dims) != tuple(lq.weight.shape):
        raise ExportError(
            f"{where}: the integer weight has shape {tuple(lq.weight.shape)} but '{w.name}' has "
            f"{tuple(w.dims)}; give the weight in the node's own ONNX layout"
        )
    axis, channels = _output_axis(node, lq.weight.ndim, tuple(w.dims))
    if lq.weight_axis != axis:
        raise ExportError(
            f"{where}: weight_axis is {lq.weight_axis} but the output channels of a "
            f"{node.op_type} weight ({_layout(node)}) lie on axis {axis}; fix the LayerQuant"
        )
    _check_bias(node, lq, consts, channels)


def _output_axis(node: onnx.NodeProto, ndim: int, dims: tuple[int, ...]) -> tuple[int, int]:
    """(axis of the output channels in the weight, number of output channels of the node)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 0, dims[0]
    if node.op_type == "ConvTranspose":
        return 1, dims[1] * int(attrs.get("group", 1))
    if node.op_type == "Gemm":
        if gemm_scales(node):
            raise ExportError(
                f"node '{node.name}': Gemm with alpha or beta other than 1 is not "
                "supported; re-export the model with alpha=beta=1"
            )
        axis = 0 if attrs.get("transB", 0) else 1
        return axis, dims[axis]
    return ndim - 1, dims[-1]


def _layout(node: onnx.NodeProto) -> str:
    layouts = {
        "Conv": "[C_out, C_in/g, k...]",
        "ConvTranspose": "[C_in, C_out/g, k...]",
        "MatMul": "[..., K, N]",
    }
    if node.op_type == "Gemm":
        trans = any(a.name == "transB" and a.i for a in node.attribute)
        return "[N, K], transB=1" if trans else "[K, N], transB=0"
    return layouts[node.op_type]


def _check_bias(
    node: onnx.NodeProto, lq: LayerQuant, consts: dict[str, TensorProto], channels: int
) -> None:
    where = f"node '{node.name}'"
    if lq.bias is None:
        if lq.folded_bn is not None:
            raise ExportError(
                f"{where}: folding BatchNormalization '{lq.folded_bn}' needs the folded "
                "bias; pass LayerQuant.bias"
            )
        return
    if node.op_type == "MatMul":
        raise ExportError(
            f"{where}: MatMul has no bias input; pass bias=None (keep the Add after it)"
        )
    if np.asarray(lq.bias).shape != (channels,):
        raise ExportError(
            f"{where}: bias has shape {np.asarray(lq.bias).shape}, expected "
            f"({channels},) (one value per output channel)"
        )
    if len(node.input) > 2 and node.input[2] and node.input[2] not in consts:
        raise ExportError(
            f"{where}: its bias '{node.input[2]}' is computed, not a constant; "
            "pass bias=None to keep it"
        )


def _check_bn(
    node: onnx.NodeProto,
    bn_name: str,
    by_name: dict[str, list[onnx.NodeProto]],
    users: dict[str, list[onnx.NodeProto]],
    graph_outputs: set[str],
) -> None:
    bns = by_name.get(bn_name, [])
    if len(bns) != 1 or bns[0].op_type != "BatchNormalization":
        raise ExportError(
            f"node '{node.name}': folded_bn '{bn_name}' is not a BatchNormalization "
            "node of the graph; pass the BN's node name or None"
        )
    bn, out = bns[0], node.output[0]
    readers = users.get(out, [])
    if bn.input[0] != out or len(readers) != 1 or out in graph_outputs:
        raise ExportError(
            f"node '{node.name}': BatchNormalization '{bn_name}' is not the single consumer of its "
            f"output '{out}'; it cannot be folded (pass folded_bn=None and keep the BN)"
        )
    if any(o for o in bn.output[1:]):
        raise ExportError(
            f"node '{node.name}': BatchNormalization '{bn_name}' has training-mode "
            "outputs; re-export the model in eval mode"
        )
