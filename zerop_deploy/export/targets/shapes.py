"""Fold integer arithmetic (shapes, pads) into constants where the data cannot change it.

Exporters write ``x.view(x.size(0), g, -1, h, w)`` as ``Shape -> Gather -> ... -> Concat ->
Reshape``. onnxruntime evaluates that arithmetic on every run, and in a quantized graph it also
keeps a DequantizeLinear alive just so that ``Shape`` can read the tensor (ShuffleNetV2: 78 of its
79 DequantizeLinear nodes), which blocks nothing but costs a full pass over the activation.

:func:`fold_batch_shapes` evaluates each such value with onnxruntime at two batch sizes. A value
that is the same for both becomes a constant; a Reshape target that differs in one entry only,
in proportion to the batch, becomes a constant with ``-1`` there (Reshape infers it, for every
batch size). Anything else is left as it is. The folded graph is checked against the original on a
batch of three before it is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from zerop_deploy.export import graph as g
from zerop_deploy.onnx_facts import constant_tensors, consumers

_SOURCES = ("Shape", "Size")
_BATCHES = (1, 3)


def fold_batch_shapes(model: onnx.ModelProto) -> int:
    """Fold, in place, shape arithmetic that only depends on the batch size; return the count.

    Only for a model with one input whose dimensions other than the first are fixed. Returns 0
    (model unchanged) otherwise, when there is nothing to fold, or when the folded graph does not
    give the original's outputs bit for bit.
    """
    graph = model.graph
    shape = _input_shape(graph)
    if shape is None:
        return 0
    boundary = _boundary(graph)
    if not boundary:
        return 0
    values = [_evaluate(model, boundary, [b, *shape]) for b in _BATCHES]
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    count = _replace(folded.graph, boundary, values)
    if not count or not _same_outputs(model, folded, [_BATCHES[-1], *shape]):
        return 0
    model.CopyFrom(folded)
    return count


def _input_shape(graph: onnx.GraphProto) -> list[int] | None:
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != 1 or not inputs[0].type.HasField("tensor_type"):
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) < 2 or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims[1:]):
        return None
    return [d.dim_value for d in dims[1:]]


def _boundary(graph: onnx.GraphProto) -> list[str]:
    """Values computed from shapes and constants only, read by a node that is not.

    Constants computed by nodes (``Constant -> Cast`` pads, for one) count: onnxruntime folds them
    in a float graph, but a rewrite that needs the value (a Pad folded into its Conv) needs it now.
    """
    consts = set(constant_tensors(graph))
    derived: dict[str, None] = {}  # in graph order, so the folded file is the same every run
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type in _SOURCES or (
            inputs
            and node.op_type != "Constant"
            and all(i in derived or i in consts for i in inputs)
        ):
            derived.update(dict.fromkeys(o for o in node.output if o))
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    return [
        name for name in derived
        if name not in outputs
        and any(not all(o in derived for o in r.output if o) for r in readers.get(name, []))
    ]  # fmt: skip


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _evaluate(model: onnx.ModelProto, names: list[str], shape: list[int]) -> list[np.ndarray]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    sess = _session(probe)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return sess.run(names, {sess.get_inputs()[0].name: x})


def _reshape_target(v1: np.ndarray, v3: np.ndarray) -> np.ndarray | None:
    """``v1`` with -1 where it scales with the batch, if that is the only difference."""
    if v1.ndim != 1 or v1.shape != v3.shape or np.any(v1 <= 0):
        return None
    diff = np.flatnonzero(v1 != v3)
    if len(diff) != 1 or v3[diff[0]] != _BATCHES[1] * v1[diff[0]]:
        return None
    out = v1.copy()
    out[diff[0]] = -1
    return out


def _replace(graph: onnx.GraphProto, names: list[str], values: list[list[np.ndarray]]) -> int:
    was_used = g.used_names(graph)
    make = g.NameMaker(g.all_names(graph))
    readers = consumers(graph)
    count = 0
    for i, name in enumerate(names):
        v1, v3 = values[0][i], values[1][i]
        if not np.issubdtype(v1.dtype, np.integer):
            continue  # shapes, pads and indices are integers; float math stays as written
        if np.array_equal(v1, v3):
            const, ok = v1, lambda node, j: True
        else:
            const = _reshape_target(v1, v3)
            ok = lambda node, j: node.op_type == "Reshape" and j == 1  # noqa: E731
            if const is None:
                continue
        new = make(f"{name}_folded")
        graph.initializer.append(numpy_helper.from_array(np.asarray(const), new))
        for node in readers.get(name, []):
            for j, inp in enumerate(node.input):
                if inp == name and ok(node, j):
                    node.input[j] = new
                    count += 1
    g.prune(graph, keep_nodes=set(), was_used=was_used)
    return count


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, shape: list[int]) -> bool:
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ra = _session(a).run(None, {a.graph.input[0].name: x})
    rb = _session(b).run(None, {b.graph.input[0].name: x})
    return all(np.array_equal(p, q) for p, q in zip(ra, rb, strict=True))
