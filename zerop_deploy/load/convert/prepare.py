"""Graph rewrites that make ordinary models convertible by onnx2torch, meaning unchanged.

:func:`prepare_for_onnx2torch` is meant to run on a checked model right before
``onnx2torch.convert``. It applies, in order:

1. :func:`zerop_deploy.load.convert.fold.fold_constant_weights`: weights computed by ``Identity`` or
   ``ConstantOfShape`` become initializers (onnx2torch reads Conv/BN weights from initializers
   only);
2. :func:`drop_inert_allowzero`: ``Reshape`` nodes with ``allowzero=1`` and a constant shape
   without zeros get ``allowzero=0``. Both values mean the same for such a shape, and onnx2torch's
   Reshape-14 converter (opsets 14-18) refuses ``allowzero=1``, which torch's default exporter
   writes on every ``view``; that converter is registered already, so ``add_converter`` cannot
   replace it.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from zerop_deploy.load.convert.fold import fold_constant_weights


def _constant_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    shapes = {t.name: numpy_helper.to_array(t).reshape(-1).tolist() for t in graph.initializer
              if t.data_type == onnx.TensorProto.INT64}  # fmt: skip
    for node in graph.node:
        if node.op_type == "Constant" and not node.domain:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.INT64:
                    shapes[node.output[0]] = numpy_helper.to_array(attr.t).reshape(-1).tolist()
    return shapes


def drop_inert_allowzero(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Set ``allowzero=0`` on Reshape nodes whose constant target shape has no zero.

    Args:
        proto: A checked model; it is not modified.

    Returns:
        ``proto`` itself when no node changes, otherwise a modified copy.
    """
    shapes = _constant_shapes(proto.graph)
    targets = [
        i for i, n in enumerate(proto.graph.node)
        if n.op_type == "Reshape" and not n.domain and len(n.input) > 1
        and any(a.name == "allowzero" and a.i == 1 for a in n.attribute)
        and n.input[1] in shapes and 0 not in shapes[n.input[1]]
    ]  # fmt: skip
    if not targets:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for i in targets:
        node = out.graph.node[i]
        kept = [a for a in node.attribute if a.name != "allowzero"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("allowzero", 0)])
    return out


def prepare_for_onnx2torch(proto: onnx.ModelProto) -> onnx.ModelProto:
    """All rewrites of this module; returns ``proto`` itself when none applies."""
    return drop_inert_allowzero(fold_constant_weights(proto))
