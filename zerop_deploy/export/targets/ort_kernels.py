"""Which nodes onnxruntime actually runs on integer kernels, read from the graph it optimizes.

onnxruntime decides at load time: its QDQ fusions turn ``DequantizeLinear -> op ->
QuantizeLinear`` groups into integer ops (QLinearConv, QGemm, QLinearAdd...) when the types and
the placement allow it, and leave the rest as float ops reading DequantizeLinear outputs. The
session can save the graph it will run; this module reads that file and counts.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

import onnx

from zerop_deploy.onnx_facts import constant_tensors, producers

INTEGER_PREFIXES = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize")
"""Op types (any domain) that compute on integers."""

FLOAT_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm",
                 "FusedMatMul", "NhwcFusedConv")  # fmt: skip
"""Float op types that do a layer's arithmetic (what a quantized layer should not become)."""


def is_integer_op(op: str) -> bool:
    """Whether onnxruntime runs ``op`` on integers."""
    return op.startswith(INTEGER_PREFIXES)


def kernel_summary(model: onnx.ModelProto | str, *, threads: int = 1) -> dict[str, Any]:
    """Count what onnxruntime (CPU, default optimizations) runs as integer and as float compute.

    Returns:
        ``{"integer_nodes": int, "float_compute_nodes": [{"node", "op", "why"}], "ops": {op: n}}``
        where ``ops`` counts every op type of the optimized graph.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        so.optimized_model_filepath = str(path)
        arg = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        ort.InferenceSession(arg, so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(path)
    graph = optimized.graph
    ops = collections.Counter(n.op_type for n in graph.node)
    made = producers(graph)
    consts = constant_tensors(graph)
    floats = [
        {"node": n.name, "op": n.op_type, "why": _why(n, made, consts)}
        for n in graph.node
        if n.op_type in FLOAT_COMPUTE
    ]
    return {
        "integer_nodes": sum(v for k, v in ops.items() if is_integer_op(k)),
        "float_compute_nodes": floats,
        "ops": dict(sorted(ops.items())),
    }


def _why(node: onnx.NodeProto, made: dict, consts: dict) -> str:  # type: ignore[type-arg]
    weight = made.get(node.input[1]) if len(node.input) > 1 else None
    if weight is not None and weight.op_type == "DequantizeLinear":
        w = consts.get(weight.input[0])
        if w is not None and w.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            return "4-bit weight: onnxruntime's integer Conv/Gemm kernels take 8-bit weights only"
        source = made.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            return "input not quantized: no integer kernel for a float input"
        return "output not quantized (no QuantizeLinear after it): no fusion applies"
    if node.input[1] in consts:
        return "weight in float: the layer was left in float"
    return "weight computed at run time (not a constant)"
