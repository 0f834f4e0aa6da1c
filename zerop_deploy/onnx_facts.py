"""Facts about an ONNX graph that every stage reads: one definition each.

Constants, who produces and who reads a value, the opset, which ops carry a quantizable weight.
Pure functions of a ``GraphProto``/``ModelProto``; nothing here imports the rest of the package.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Ops whose constant weight the quantizer replaces by integers."""


def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Values of the graph that are constants: initializers and outputs of Constant nodes."""
    consts: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    consts[node.output[0]] = attr.t
    return consts


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from all_tensors(attr.g)
            for g in attr.graphs:
                yield from all_tensors(g)


def quantizable_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes the quantizer replaces by integer layers, in graph order.

    Conv, ConvTranspose, Gemm and MatMul nodes whose second input (the weight) is a constant.
    """
    consts = constant_tensors(graph)
    return [
        n for n in graph.node
        if n.op_type in QUANTIZABLE_OPS and len(n.input) > 1 and n.input[1] in consts
    ]  # fmt: skip


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Value name -> the top-level node of ``graph`` that produces it."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Value name -> the top-level nodes of ``graph`` that read it (each node once)."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            if name:
                out.setdefault(name, []).append(node)
    return out


def gemm_scales(node: onnx.NodeProto) -> bool:
    """True when a Gemm scales its product or bias (``alpha`` or ``beta`` other than 1).

    Such a Gemm is not quantized: its weight and bias would not be the layer's own.
    """
    return any(a.name in ("alpha", "beta") and a.f != 1.0 for a in node.attribute)


def opset_of(proto: onnx.ModelProto, domain: str = "") -> int:
    """The opset the model imports for ``domain`` ("" and "ai.onnx" are one; 0 if none)."""
    for imp in proto.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(imp.version)
    return 0
