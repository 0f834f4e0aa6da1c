"""Shared helpers of the kernel microbenchmarks: onnxruntime one-node models and a fair timer."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from zerop_deploy.bench.tables import (
    interleaved_median,  # noqa: F401  (the benchmarks' fair timer)
    nbits_packed,
)

SPIN = False
"""Whether onnxruntime's idle worker threads spin (its default) or sleep between runs. Spinning
threads keep burning the cores after a run, which slows whatever is timed next in the same process
(our kernel, or another session) on a 2-core machine; the benchmarks turn it off unless
--ort-spin."""


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    """Create an onnxruntime CPU session with a fixed intra-op thread count."""
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _model(
    node: onnx.NodeProto,
    m: int,
    k: int,
    n: int,
    inits: list[onnx.TensorProto],
    opsets: list[tuple[str, int]],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "bench",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 10
    return model


def matmul_fp32_model(w_kn: np.ndarray, m: int) -> onnx.ModelProto:
    """Y = A @ B with a float32 [K, N] initializer."""
    k, n = w_kn.shape
    node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    return _model(
        node, m, k, n, [numpy_helper.from_array(w_kn.astype(np.float32), "B")], [("", 17)]
    )


def matmul_nbits_model(
    w: np.ndarray, scales: np.ndarray, block: int, m: int, accuracy_level: int = 4
) -> onnx.ModelProto:
    """com.microsoft MatMulNBits (bits=4) for int4 weights w [N, K] and scales [ceil(K/block), N].

    Codes are w + 8 with the default zero point 8, so ``(code - 8) * scale == w * scale``.
    """
    n, k = w.shape
    packed = nbits_packed(w, block)
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "scales"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=block,
        accuracy_level=accuracy_level,
    )
    inits = [
        numpy_helper.from_array(packed, "B"),
        numpy_helper.from_array(np.ascontiguousarray(scales.T).reshape(-1), "scales"),
    ]
    return _model(node, m, k, n, inits, [("", 17), ("com.microsoft", 1)])
