"""Facts about the ONNX graph that the quantizer needs, computed once from the ModelProto.

* which torch submodule (onnx2torch names it after its node) belongs to which ONNX node;
* which BatchNormalization directly follows which Conv (and may be folded into it);
* which tensors are non-negative by construction (after ReLU-like producers), so that their
  activation quantizer can be unsigned.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from zerop_deploy.onnx_facts import QUANTIZABLE_OPS, constant_tensors, consumers, quantizable_nodes

# Ops whose output is >= 0 whatever their input.
_NONNEG_PRODUCERS = {"Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs", "Exp", "Softplus"}
# Ops that move or select values without changing their sign (first input only).
_SIGN_PRESERVING = {
    "Reshape",
    "Transpose",
    "Flatten",
    "Slice",
    "Split",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Gather",
    "Resize",
    "DepthToSpace",
    "SpaceToDepth",
    "Dropout",
    "Expand",
    "Tile",
    "ReduceMean",
    "ReduceMax",
}
# Ops that are non-negative when all their (non-constant) inputs are.
_ALL_INPUTS = {"Concat", "Add", "Mul", "Max", "Min", "Sum", "Mean"}


def module_node_names(proto: onnx.ModelProto) -> dict[str, str]:
    """Map onnx2torch's submodule names to the ONNX node names they were made from."""
    from onnx2torch.onnx_graph import OnnxGraph

    graph = OnnxGraph(proto.graph)
    return {unique: node.proto.name or unique for unique, node in graph.nodes.items()}


def int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    """The integer attribute ``name`` of ``node``, or ``default`` when the node does not set it."""
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def resolved_constants(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Constants of the graph, including outputs of Identity nodes that read a constant.

    The TorchScript exporter stores identical tensors once and feeds the duplicates through
    Identity nodes (two BatchNorms with all-ones gamma, for instance).
    """
    consts = dict(constant_tensors(proto.graph))
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def bn_parameters(
    proto: onnx.ModelProto, bn_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """``(gamma, beta, mean, var, epsilon)`` of a BatchNormalization node, as float64 arrays."""
    consts = resolved_constants(proto)
    node = next(n for n in proto.graph.node if n.name == bn_name)
    gamma, beta, mean, var = (
        numpy_helper.to_array(consts[name]).astype(np.float64) for name in node.input[1:5]
    )
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    return gamma, beta, mean, var, float(eps)


def conv_bn_pairs(proto: onnx.ModelProto) -> dict[str, str]:
    """Conv node name -> the BatchNormalization node that alone consumes its output (foldable)."""
    users = consumers(proto.graph)
    graph_outputs = {o.name for o in proto.graph.output}
    consts = resolved_constants(proto)
    pairs = {}
    for node in proto.graph.node:
        if node.op_type != "Conv" or node.output[0] in graph_outputs:
            continue
        readers = users.get(node.output[0], [])
        if len(readers) == 1 and readers[0].op_type == "BatchNormalization":
            bn = readers[0]
            if len(bn.output) == 1 and all(i in consts for i in bn.input[1:5]):
                pairs[node.name] = bn.name
    return pairs


def _clip_is_nonneg(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> bool:
    for attr in node.attribute:
        if attr.name == "min":
            return attr.f >= 0
    if len(node.input) > 1 and node.input[1] in consts:
        return bool(np.all(numpy_helper.to_array(consts[node.input[1]]) >= 0))
    return False


def nonnegative_values(proto: onnx.ModelProto) -> set[str]:
    """Names of the values that are >= 0 by construction of the graph (no data needed)."""
    consts = constant_tensors(proto.graph)
    nonneg: set[str] = set()
    for node in proto.graph.node:  # ONNX nodes are topologically sorted
        op = node.op_type
        dyn_inputs = [i for i in node.input if i and i not in consts]
        if op in _NONNEG_PRODUCERS or (op == "Clip" and _clip_is_nonneg(node, consts)):
            ok = True
        elif op in _SIGN_PRESERVING:
            ok = bool(node.input) and node.input[0] in nonneg
        elif op in _ALL_INPUTS:
            const_ok = all(
                np.all(numpy_helper.to_array(consts[i]) >= 0) for i in node.input if i in consts
            )
            ok = bool(dyn_inputs) and const_ok and all(i in nonneg for i in dyn_inputs)
        elif op == "Pad":
            ok = node.input[0] in nonneg and (
                len(node.input) < 3 or not node.input[2] or node.input[2] in consts
            )
        else:
            ok = False
        if ok:
            nonneg.update(o for o in node.output if o)
    return nonneg


COMPUTE_OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN", "Attention",
)  # fmt: skip
"""Ops that carry the arithmetic of a network: each one not quantized is listed with its reason."""

QUANTIZATION_SCHEME = {
    "weights": (
        "Conv, ConvTranspose, Gemm and MatMul with a constant weight: symmetric per output "
        "channel, int4 -7..7 or int8 -127..127, DequantizeLinear with axis; BatchNormalization "
        "folded into the Conv before it"
    ),
    "activations": (
        "the input of every quantized layer: one QuantizeLinear/DequantizeLinear pair per tensor, "
        "per-tensor scale, unsigned (uint4/uint8) where the graph proves the tensor non-negative "
        "(after Relu, Clip(min >= 0), Sigmoid...), signed otherwise"
    ),
    "bias": "int32 on the grid activation scale x weight scale, fed by DequantizeLinear",
    "other ops": (
        "everything else (additions, pooling, Concat, Reshape, normalisation, Softmax, "
        "activation functions) runs in float on dequantized values, as in the original graph"
    ),
}
"""How each kind of node is quantized: the report's ``quantization_scheme``."""


def float_nodes(proto: onnx.ModelProto) -> list[dict[str, str]]:
    """Compute nodes (:data:`COMPUTE_OPS`) the quantizer leaves in float, each with the reason.

    A node is quantized exactly when :func:`~zerop_deploy.onnx_facts.quantizable_nodes` lists it;
    the others are listed here: products of two activations (attention scores and their weighted
    sum), weights computed at run time or behind an Identity, and ops without an integer form.
    """
    quantized = {n.name for n in quantizable_nodes(proto.graph)}
    consts = resolved_constants(proto)
    out = []
    for node in proto.graph.node:
        if node.op_type not in COMPUTE_OPS or node.name in quantized:
            continue
        weight = node.input[1] if len(node.input) > 1 else ""
        if node.op_type not in QUANTIZABLE_OPS:
            reason = f"{node.op_type} has no integer form here"
        elif weight in consts:
            reason = f"its weight '{weight}' is a constant read through an Identity node"
        elif node.op_type in ("MatMul", "Gemm"):
            reason = "both operands are activations (e.g. attention)"
        else:
            reason = f"its weight '{weight}' is computed at run time, not a constant"
        out.append({"node": node.name, "op": node.op_type, "reason": f"{reason}; runs in float"})
    return out
