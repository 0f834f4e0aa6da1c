"""Graph rewrites that keep every number and let onnxruntime run more of the graph as integers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zerop_deploy.export import graph as g
from zerop_deploy.onnx_facts import constant_tensors, consumers


def channel_shuffles_to_gather(model: onnx.ModelProto) -> int:
    """Replace, in place, each channel shuffle by one Gather on the channel axis; return the count.

    ShuffleNet's shuffle is ``Reshape [N, g, C/g, H, W] -> Transpose (0, 2, 1, 3, 4) -> Reshape
    [N, C, H, W]``. onnxruntime cannot move its NHWC layout through a 5-D reshape, so around every
    shuffle of a quantized graph it converts NHWC -> NCHW and back (a third of ShuffleNetV2's int8
    time at batch 64). ``Gather(axis=1)`` with the same permutation of channels computes the same
    tensor, element for element, and is one op.
    """
    graph = model.graph
    consts = constant_tensors(graph)
    readers = consumers(graph)
    make = g.NameMaker(g.all_names(graph))
    was_used = g.used_names(graph)
    count = 0
    for first in list(graph.node):
        found = _match(first, readers, consts)
        if found is None:
            continue
        last, groups, channels = found
        per = channels // groups
        perm = np.array([i1 * per + i2 for i2 in range(per) for i1 in range(groups)], np.int64)
        name = make(f"{last.name or last.output[0]}_channel_perm")
        graph.initializer.append(numpy_helper.from_array(perm, name))
        gather = helper.make_node(
            "Gather", [first.input[0], name], [last.output[0]],
            name=make(f"{last.name or last.output[0]}_Gather"), axis=1,
        )  # fmt: skip
        index = list(graph.node).index(last)
        graph.node.insert(index, gather)
        graph.node.remove(last)
        count += 1
    if count:
        g.prune(graph, keep_nodes=set(), was_used=was_used)
    return count


def _target(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
        return None
    if any(a.name == "allowzero" and a.i for a in node.attribute):
        return None
    return numpy_helper.to_array(consts[node.input[1]]).astype(np.int64)


def _match(first, readers, consts):  # type: ignore[no-untyped-def]
    five = _target(first, consts)
    if five is None or five.shape != (5,) or np.any(five[1:] <= 0):
        return None
    after = readers.get(first.output[0], [])
    if len(after) != 1 or after[0].op_type != "Transpose":
        return None
    transpose = after[0]
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
    if perm != [0, 2, 1, 3, 4]:
        return None
    after = readers.get(transpose.output[0], [])
    if len(after) != 1:
        return None
    last = after[0]
    four = _target(last, consts)
    if four is None or four.shape != (4,) or np.any(four[1:] <= 0):
        return None
    groups, per = int(five[1]), int(five[2])
    if four[1] != groups * per or list(four[2:]) != list(five[3:]) or five[0] != four[0]:
        return None
    return last, groups, groups * per


def pads_into_convs(model: onnx.ModelProto, acts: dict) -> int:  # type: ignore[type-arg]
    """Fold, in place, each zero Pad read only by a Conv into the Conv's ``pads``; return the count.

    TensorFlow's "same" padding is exported as an explicit Pad before the Conv (EfficientNet-Lite).
    onnxruntime folds it into a float Conv but not into an integer one: the Pad runs in float
    between a DequantizeLinear and a QuantizeLinear (two thirds of EfficientNet-Lite0's int8 time).
    Padding with zeros inside the Conv computes the same numbers. ``acts`` (tensor -> activation
    grid) moves the grid of the Pad's output to its input: a grid with an integer zero point holds
    0 exactly, so quantizing before or after zero padding is the same.
    """
    graph = model.graph
    consts = constant_tensors(graph)
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    was_used = g.used_names(graph)
    count = 0
    for pad in list(graph.node):
        found = _pad_conv(pad, readers, consts, outputs)
        if found is None:
            continue
        conv, spatial = found
        src, out = pad.input[0], pad.output[0]
        if out in acts and src in acts and acts[src] != acts[out]:
            continue
        if out in acts:
            acts[src] = acts.pop(out)
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0] * len(spatial))
        rank = len(spatial) // 2
        new = [old[i] + spatial[i] for i in range(2 * rank)]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = src
        count += 1
    if count:
        g.prune(graph, keep_nodes=set(), was_used=was_used)
    return count


def _pad_conv(pad, readers, consts, outputs):  # type: ignore[no-untyped-def]
    """(conv, conv-style spatial pads) when ``pad`` is a zero Pad that only a Conv reads."""
    if pad.op_type != "Pad" or pad.output[0] in outputs or len(pad.input) < 2:
        return None
    mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
    if mode != "constant" or pad.input[1] not in consts:
        return None
    if len(pad.input) > 2 and pad.input[2]:
        if pad.input[2] not in consts or np.any(numpy_helper.to_array(consts[pad.input[2]])):
            return None
    if len(pad.input) > 3 and pad.input[3]:
        return None
    after = readers.get(pad.output[0], [])
    if len(after) != 1 or after[0].op_type != "Conv" or after[0].input[0] != pad.output[0]:
        return None
    conv = after[0]
    if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute):
        return None
    pads = numpy_helper.to_array(consts[pad.input[1]]).astype(np.int64).reshape(-1)
    rank = len(pads) // 2
    if rank < 3 or np.any(pads < 0) or np.any(pads[[0, 1, rank, rank + 1]] != 0):
        return None
    spatial = [int(v) for v in (*pads[2:rank], *pads[rank + 2 :])]
    return conv, spatial
