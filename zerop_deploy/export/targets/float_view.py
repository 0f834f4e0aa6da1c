"""Read an exported QDQ file back: its float graph and the integer grids the student used.

An exported file (:mod:`zerop_deploy.export.qdq`) is the user's graph with a DequantizeLinear on
each quantized weight and a QuantizeLinear -> DequantizeLinear pair on each quantized activation.
:func:`float_view` undoes both: weights become float initializers holding exactly the values the
DequantizeLinear produced (integer level times scale, in float32), activation pairs are removed and
their readers read the float tensor again. What was removed is returned as grids, so a target writer
can put every integer back where it was, on another format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from zerop_deploy.errors import ExportError
from zerop_deploy.export import graph as g
from zerop_deploy.export.qdq import INT_TYPES
from zerop_deploy.export.saturation import UINT8_ZERO_POINT
from zerop_deploy.onnx_facts import constant_tensors, consumers

_KIND = {dtype: kind for kind, dtype in INT_TYPES.items()}
"""Integer tensor type -> (bits, signed), the inverse of the exporter's table."""


@dataclass(frozen=True)
class WeightGrid:
    """A weight as the student quantized it: ``value = level * scale[c]``, symmetric, zero point 0.

    Attributes:
        scales: float32 per-channel scales along ``axis`` (one value when per tensor).
        axis: The channel axis of the weight.
        bits: 4 or 8.
    """

    scales: np.ndarray
    axis: int
    bits: int


@dataclass(frozen=True)
class ActGrid:
    """An activation grid: ``value = (level - zero_point) * scale``, level in the type's range.

    Attributes:
        scale: The step.
        zero_point: The zero point.
        bits: 4 or 8.
        signed: Whether the levels are signed (int) or unsigned (uint).
    """

    scale: float
    zero_point: int
    bits: int
    signed: bool

    @property
    def low(self) -> float:
        """Smallest representable value."""
        qmin = -(1 << (self.bits - 1)) if self.signed else 0
        return float((qmin - self.zero_point) * self.scale)

    @property
    def high(self) -> float:
        """Largest representable value."""
        qmax = (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1
        return float((qmax - self.zero_point) * self.scale)


@dataclass(frozen=True)
class ActUse:
    """One activation pair of the exported file: its grid and the nodes that read through it."""

    grid: ActGrid
    readers: frozenset[str]


@dataclass
class FloatView:
    """The float graph of an exported file and the grids that were removed from it.

    Attributes:
        model: The graph without QDQ: float weights, no activation pairs.
        weights: Float weight initializer name -> its grid.
        acts: Activation tensor name -> its pairs (one per grid; the exporter writes one pair
            per tensor and grid, so layers with different grids on one tensor have one each).
        layers: Names of the nodes whose weight was quantized, in graph order.
    """

    model: onnx.ModelProto
    weights: dict[str, WeightGrid]
    acts: dict[str, list[ActUse]]
    layers: list[str]

    def widest(self, tensor: str) -> ActGrid:
        """The grid with the widest range among the tensor's pairs."""
        return max((u.grid for u in self.acts[tensor]), key=lambda a: a.high - a.low)


def float_view(qdq: onnx.ModelProto) -> FloatView:
    """Undo the QDQ of an exported file; ``qdq`` itself is not modified.

    Raises:
        ExportError: If a DequantizeLinear reads a weight with a non-zero zero point or a
            QuantizeLinear is not followed by DequantizeLinear only (not a file of ours).
    """
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    was_used = g.used_names(graph)
    consts = constant_tensors(graph)
    weights: dict[str, WeightGrid] = {}
    acts: dict[str, list[ActUse]] = {}
    rename: dict[str, str] = {}
    drop: set[int] = set()  # id() of the nodes to remove
    readers = consumers(graph)
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            value, grid = _dequantize(node, consts)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            if grid is not None:
                weights[node.output[0]] = grid
            drop.add(id(node))
        elif node.op_type == "QuantizeLinear" and node.input[0] not in consts:
            grid = _act_grid(node, consts)
            users: set[str] = set()
            for reader in readers.get(node.output[0], []):
                if reader.op_type != "DequantizeLinear":
                    raise ExportError(
                        f"node {node.name!r}: QuantizeLinear feeds {reader.op_type} "
                        f"{reader.name!r}, not DequantizeLinear; not a file written by quantize"
                    )
                rename[reader.output[0]] = node.input[0]
                users.update(r.name for r in readers.get(reader.output[0], []))
                drop.add(id(reader))
            acts.setdefault(node.input[0], []).append(ActUse(grid, frozenset(users)))
            drop.add(id(node))
    kept = [n for n in graph.node if id(n) not in drop]
    for node in kept:
        for j, name in enumerate(node.input):
            if name in rename:
                node.input[j] = rename[name]
    for out in graph.output:
        if out.name in rename:
            raise ExportError(f"graph output {out.name!r} is a DequantizeLinear output")
    del graph.node[:]
    graph.node.extend(kept)
    g.prune(graph, keep_nodes=set(), was_used=was_used)
    layer_inputs = set(weights)
    layers = [n.name for n in graph.node if len(n.input) > 1 and n.input[1] in layer_inputs]
    return FloatView(model, weights, acts, layers)


def _dequantize(
    node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]
) -> tuple[np.ndarray, WeightGrid | None]:
    q = consts[node.input[0]]
    levels = numpy_helper.to_array(q).astype(np.float32)
    dtype = q.data_type
    scale = numpy_helper.to_array(consts[node.input[1]]).astype(np.float32)
    if len(node.input) > 2 and node.input[2]:
        zp = numpy_helper.to_array(consts[node.input[2]])
        if q.data_type == TensorProto.UINT8 and np.all(zp == UINT8_ZERO_POINT):
            levels -= UINT8_ZERO_POINT  # an int8 weight stored unsaturated (export.saturation)
            dtype = TensorProto.INT8
        elif np.any(zp != 0):
            raise ExportError(
                f"node {node.name!r}: weight {node.input[0]!r} has a non-zero zero point; "
                "not a file written by quantize"
            )
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    axis = axis % max(levels.ndim, 1)
    shape = [1] * levels.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    value = (levels * scale.reshape(shape)).astype(np.float32)
    if dtype == TensorProto.INT32:
        return value, None
    return value, WeightGrid(scale.reshape(-1), axis, _KIND[dtype][0])


def _act_grid(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> ActGrid:
    scale = float(numpy_helper.to_array(consts[node.input[1]]).reshape(-1)[0])
    if len(node.input) > 2 and node.input[2]:
        zp_t = consts[node.input[2]]
        dtype, zp = zp_t.data_type, int(numpy_helper.to_array(zp_t).reshape(-1)[0])
    else:
        dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), TensorProto.UINT8)
        zp = 0
    if dtype not in _KIND:
        raise ExportError(f"node {node.name!r}: QuantizeLinear to type {dtype} is not ours")
    return ActGrid(scale, zp, *_KIND[dtype])
