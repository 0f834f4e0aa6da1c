"""Turn weights that a graph computes from constants into initializers, before onnx2torch sees them.

onnx2torch's Conv, ConvTranspose and BatchNormalization converters read their weights from
``graph.initializer`` only. Two kinds of ordinary models compute them instead:

* the TorchScript exporter deduplicates equal initializers and feeds the copies through
  ``Identity`` nodes (zero biases, equal BN-folded weights: every random-weight torchvision model),
* the "light" model-zoo graphs shipped with ``onnx`` build every weight with ``ConstantOfShape``.

:func:`fold_constant_weights` evaluates those nodes (``Identity`` and ``ConstantOfShape`` whose
inputs are initializers or ``Constant`` outputs) and replaces each by an initializer named after the
node's output, so each consumer keeps its own copy of the weight and every other node its name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

FOLDABLE = ("Identity", "ConstantOfShape")
"""Ops evaluated by :func:`fold_constant_weights` when all their inputs are constant."""


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node that holds a tensor (other forms are left alone)."""
    for attr in node.attribute:
        if attr.name == "value" and attr.HasField("t"):
            return numpy_helper.to_array(attr.t)
    return None


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray]) -> np.ndarray:
    if node.op_type == "Identity":
        return inputs[0]
    # ConstantOfShape: a tensor of shape inputs[0] filled with ``value`` (default float32 zero).
    value = np.zeros(1, dtype=np.float32)
    for attr in node.attribute:
        if attr.name == "value":
            value = numpy_helper.to_array(helper.get_attribute_value(attr))
    return np.full(tuple(int(d) for d in inputs[0].reshape(-1)), value.reshape(-1)[0], value.dtype)


def fold_constant_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace constant ``Identity``/``ConstantOfShape`` nodes of the main graph by initializers.

    Args:
        proto: A checked model; it is not modified.

    Returns:
        ``proto`` itself when nothing folds, otherwise a copy without the folded nodes and with one
        new initializer per folded output (and an IR version of at least 4, so that initializers
        need not be listed as graph inputs). Nodes producing graph outputs are never folded.
    """
    graph = proto.graph
    known: dict[str, np.ndarray | None] = {t.name: None for t in graph.initializer}  # lazy values
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    folded: dict[str, np.ndarray] = {}
    drop: set[int] = set()
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant" and not node.domain:
            value = _constant_value(node)
            if value is not None:
                known[node.output[0]] = value
            continue
        if node.op_type not in FOLDABLE or node.domain or node.output[0] in outputs:
            continue
        if not node.input or not all(name in known for name in node.input):
            continue
        values = []
        for name in node.input:
            if known[name] is None:
                known[name] = numpy_helper.to_array(inits[name])
            values.append(known[name])
        result = _evaluate(node, values)
        known[node.output[0]] = folded[node.output[0]] = result
        drop.add(i)
    if not folded:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(n for i, n in enumerate(graph.node) if i not in drop)
    out.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in folded.items())
    # IR 3 requires every initializer to be a graph input too, and ONNX shape inference ignores the
    # others; IR 4 lifts that rule without changing the meaning of a valid IR 3 graph.
    out.ir_version = max(out.ir_version, 4)
    return out
