"""What ``zerop-deploy inspect`` reports about a model: a pure description of the ONNX graph.

:func:`summarize` builds the JSON document of DESIGN.md ("inspect --json"); :func:`format_summary`
renders
it as the human table. Nothing here converts or runs the model except :func:`inspect_model`, which
adds
the result of the PyTorch conversion and its onnxruntime parity check.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from zerop_deploy.errors import ZeropError
from zerop_deploy.load.parity import PARITY_TOLERANCE, check_parity
from zerop_deploy.load.read import graph_inputs, read_model
from zerop_deploy.load.to_torch import convert_model
from zerop_deploy.onnx_facts import constant_tensors, opset_of, quantizable_nodes
from zerop_deploy.quant.graph import float_nodes

_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def _value_info_dict(v: onnx.ValueInfoProto) -> dict[str, Any]:
    t = v.type.tensor_type
    shape: list[int | str] = []
    for d in t.shape.dim:
        shape.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
    dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "unknown"
    return {"name": v.name, "shape": shape, "dtype": dtype}


def quantizable_layers(proto: onnx.ModelProto) -> list[dict[str, Any]]:
    """Conv, ConvTranspose, Gemm and MatMul nodes whose weight (input 1) is a constant."""
    consts = constant_tensors(proto.graph)
    return [
        {
            "node": node.name,
            "op": node.op_type,
            "weight_shape": [int(d) for d in consts[node.input[1]].dims],
        }
        for node in quantizable_nodes(proto.graph)
    ]


def parameter_count(proto: onnx.ModelProto) -> int:
    """Number of floating-point constant elements (weights, biases, BN statistics)."""
    return sum(
        int(np.prod(t.dims, dtype=np.int64))
        for t in constant_tensors(proto.graph).values()
        if t.data_type in _FLOAT_TYPES
    )


def bn_looks_folded(proto: onnx.ModelProto) -> bool:
    """True when there is no BatchNormalization anywhere and some Conv carries a bias."""
    ops = [n.op_type for n in proto.graph.node]
    has_conv_bias = any(
        n.op_type == "Conv" and len(n.input) > 2 and n.input[2] for n in proto.graph.node
    )
    return "BatchNormalization" not in ops and has_conv_bias


def summarize(proto: onnx.ModelProto, path: str | os.PathLike[str] = "") -> dict[str, Any]:
    """The graph part of the inspect document (everything but ``conversion``).

    Besides DESIGN.md's keys, ``float_nodes`` lists the compute nodes quantize will leave in float
    and why (:func:`zerop_deploy.quant.graph.float_nodes`).
    """
    counts = Counter(n.op_type for n in proto.graph.node)
    return {
        "path": str(path),
        "opset": opset_of(proto) or None,
        "ir_version": int(proto.ir_version),
        "inputs": [_value_info_dict(v) for v in graph_inputs(proto)],
        "outputs": [_value_info_dict(v) for v in proto.graph.output],
        "nodes": len(proto.graph.node),
        "op_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "batchnorm_nodes": counts.get("BatchNormalization", 0),
        "bn_folded": bn_looks_folded(proto),
        "quantizable": quantizable_layers(proto),
        "float_nodes": float_nodes(proto),
        "parameters": parameter_count(proto),
    }


def inspect_model(path: str | os.PathLike[str], *, seed: int = 0) -> dict[str, Any]:
    """Read a model, describe it, convert it to PyTorch and check the conversion.

    Args:
        path: The ``.onnx`` file.
        seed: Seed of the random batch used for the parity check.

    Returns:
        The inspect document of DESIGN.md. A failed conversion is reported in ``conversion`` (with
        ``ok`` false and the one-line error), not raised.

    Raises:
        InputError: The file cannot be read at all (missing, corrupt, unsafe external data...).
    """
    p = Path(path)
    proto = read_model(p)
    doc = summarize(proto, p)
    conversion: dict[str, Any] = {"ok": False, "max_abs_diff": None, "error": None}
    try:
        module = convert_model(proto, source=str(p))
        parity = check_parity(proto, module, model_path=p, seed=seed)
        conversion["max_abs_diff"] = parity.max_abs_diff
        if parity.relative_diff > PARITY_TOLERANCE:
            conversion["error"] = (
                f"PyTorch differs from onnxruntime by {parity.max_abs_diff:.3g} "
                f"(output scale {parity.output_scale:.3g})"
            )
        else:
            conversion["ok"] = True
    except ZeropError as e:
        conversion["error"] = str(e)
    doc["conversion"] = conversion
    return doc
