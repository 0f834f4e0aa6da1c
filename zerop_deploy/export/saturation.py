"""8-bit weights stored so that onnxruntime's integer kernels compute them exactly on every x86 CPU.

onnxruntime runs a fused int8 Conv/Gemm/MatMul as uint8 activations times int8 weights (u8s8). On
x86 CPUs without VNNI (AVX2, AVX-512 without VNNI, SSE4.1) its kernels multiply with
``vpmaddubsw``, which adds two neighbouring uint8 x int8 products into an int16 and saturates
above 32767. ``255 * (|w1| + |w2|)`` stays below that only when every weight level is within
+-64 (:data:`U8S8_EXACT_LEVEL`). Seen on an AVX2 CPU, onnxruntime 1.32, default session options:
a W8A8 test file with levels up to 127 computed 0.057 off on outputs of 0.7.

An 8-bit weight with a level beyond that bound is stored as uint8 with zero point 128 instead
(``(level + 128) - 128`` is the same value, so the file's numbers do not change): onnxruntime then
runs the layer on its u8u8 kernels, which widen to 16 bits before they multiply and never
saturate. onnxruntime fuses the same nodes either way (QLinearConv, QGemm, MatMulIntegerToFloat).
4-bit levels (-8..7, held in int8 by the ``ort-cpu`` target) are always exact and stay int8.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from zerop_deploy.export import graph as g
from zerop_deploy.onnx_facts import consumers

U8S8_EXACT_LEVEL = 64
"""The largest |int8 weight level| that onnxruntime's u8s8 kernels sum exactly on any x86 CPU."""

UINT8_ZERO_POINT = 128
"""The zero point of an int8 weight stored as uint8: ``uint8 level = int8 level + 128``."""


def saturates_u8s8(levels: np.ndarray) -> bool:
    """Whether int8 weight ``levels`` can overflow the int16 pair sums of a CPU without VNNI."""
    return levels.size > 0 and int(np.abs(levels.astype(np.int16)).max()) > U8S8_EXACT_LEVEL


def store_weights_unsaturated(model: onnx.ModelProto) -> list[str]:
    """Store every int8 weight that :func:`saturates_u8s8` as uint8 with zero point 128.

    Edits ``model`` in place. A weight is a constant int8 tensor with all-zero zero points read by
    a ``DequantizeLinear``; its levels and zero points are rewritten in place, or as new
    initializers named after them where another node reads them too.

    Returns:
        The names of the ``DequantizeLinear`` nodes whose weight was rewritten.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers = consumers(graph)
    names = g.all_names(graph)
    outputs = {o.name for o in graph.output}
    done: list[str] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        q = inits[node.input[0]]
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = numpy_helper.to_array(inits[zp_name]) if zp_name in inits else None
        if q.data_type != TensorProto.INT8 or (zp_name and (zp is None or zp.any())):
            continue
        levels = numpy_helper.to_array(q)
        if not saturates_u8s8(levels):
            continue
        zeros = np.full(() if zp is None else zp.shape, UINT8_ZERO_POINT, np.uint8)
        shifted = (levels.astype(np.int16) + UINT8_ZERO_POINT).astype(np.uint8)
        while len(node.input) < 3:
            node.input.append("")
        node.input[0] = _put(graph, inits, readers, outputs, node, q.name, shifted, names)
        zp_new = zp_name or f"{q.name}_zero_point"
        node.input[2] = _put(graph, inits, readers, outputs, node, zp_new, zeros, names)
        done.append(node.name)
    return done


def _put(graph, inits, readers, outputs, node, name, value, names) -> str:  # type: ignore[no-untyped-def]
    """Store ``value`` for ``node``: in place of ``name`` when only ``node`` reads it, else anew."""
    only_node = all(r is node for r in readers.get(name, []))
    if name in inits and name in node.input and only_node and name not in outputs:
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
        return name
    fresh, i = name, 1
    while fresh in names:
        fresh, i = f"{name}_{i}", i + 1
    names.add(fresh)
    inits[fresh] = numpy_helper.from_array(value, fresh)
    graph.initializer.append(inits[fresh])
    return fresh
