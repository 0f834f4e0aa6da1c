"""Every constant tensor of a model holds as much data as its shape says, and usable numbers.

onnx.checker does not look at sizes, and a tensor whose data does not fill its dims fails later,
deep inside numpy or onnxruntime, with an error that names neither the file nor the tensor. Nor
does it look at values: a NaN weight is carried through conversion and fine-tuning and only shows
as a NaN quantization scale at the very end, so :func:`check_finite_constants` refuses it up front.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zerop_deploy.errors import InputError

_FIELDS = {  # element type -> the typed field its values sit in when raw_data is empty
    TensorProto.FLOAT: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT64: "uint64_data",
    TensorProto.STRING: "string_data",
    TensorProto.COMPLEX64: "float_data",  # two values per element
    TensorProto.COMPLEX128: "double_data",
}
_PACKED = {TensorProto.INT4, TensorProto.UINT4}  # two values per byte


def _expected_raw_bytes(t: TensorProto, n: int) -> int | None:
    if t.data_type in _PACKED:
        return (n + 1) // 2
    try:
        return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None  # a type we cannot size: leave it to the checker


def check_tensor_sizes(tensors: Iterable[TensorProto], source: str) -> None:
    """Raise InputError naming the first tensor whose data does not match its dims.

    Args:
        tensors: The constant tensors (initializers, Constant values), external data loaded.
        source: The file, for the message.
    """
    for t in tensors:
        if any(d < 0 for d in t.dims):
            raise InputError(f"{source}: tensor '{t.name}' has negative dims {list(t.dims)}")
        n = math.prod(t.dims)
        if t.HasField("raw_data") or t.raw_data:
            want, got = _expected_raw_bytes(t, n), len(t.raw_data)
        else:
            field = _FIELDS.get(t.data_type, "int32_data")
            if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
                n *= 2
            if t.data_type in _PACKED:
                n = (n + 1) // 2
            want, got = n, len(getattr(t, field))
        if want is not None and want != got:
            raise InputError(
                f"{source}: tensor '{t.name}' has dims {list(t.dims)} but holds {got} "
                f"{'bytes' if t.raw_data else 'values'} instead of {want}; the file is damaged, "
                "re-export the model"
            )


_FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"}
"""Ops whose every constant input must be finite (weights, biases, BN scale/B/mean/var)."""
_PASS_THROUGH = {"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
"""Ops through which a constant still reaches a layer as its weight."""
_FIX = "re-export the model from a checkpoint with finite weights"


def check_finite_constants(proto: onnx.ModelProto, source: str) -> None:
    """Raise InputError naming the first float constant the model cannot compute with.

    NaN is refused in every float constant. An infinity is refused where a layer reads the
    constant as a parameter: any input of Conv, ConvTranspose, Gemm, MatMul and
    BatchNormalization (scale, B, mean, var), directly or through Identity, Cast, Reshape and the
    like; a negative BatchNormalization variance is refused too. Other infinities are legitimate
    (attention masks, Clip bounds, the initial value of a running maximum) and kept.

    Args:
        proto: The model, external data loaded, nodes named.
        source: The file, for the message.

    Raises:
        InputError: Naming the file, the tensor, how many values, the node and op that read it.
    """
    readers = _readers(proto.graph)
    for name, what, t in _float_constants(proto.graph):
        a = numpy_helper.to_array(t)
        if a.dtype not in (np.float16, np.float32, np.float64):
            a = a.astype(np.float32)  # bfloat16
        finite = bool(np.isfinite(a).all())
        uses = _uses(name, readers)
        if not finite and np.isnan(a).any():
            read = f", read by node '{uses[0][0].name}' ({uses[0][0].op_type})" if uses else ""
            raise InputError(
                f"{source}: {what} holds {_values(np.isnan(a), 'NaN')} (of {a.size}){read}; {_FIX}"
            )
        for node, index in uses:
            if node.op_type not in _WEIGHT_OPS:
                continue
            role = f"{_input_name(node, index)} of node '{node.name}' ({node.op_type})"
            if not finite:
                raise InputError(
                    f"{source}: {what} holds {_values(np.isinf(a), 'infinite')} (of {a.size}), "
                    f"the {role}; {_FIX}"
                )
            if node.op_type == "BatchNormalization" and index == 4 and (a < 0).any():
                raise InputError(
                    f"{source}: {what} holds {_values(a < 0, 'negative')} (of {a.size}), the "
                    f"variance {role}; a variance is never negative: {_FIX}"
                )


def _float_constants(graph: onnx.GraphProto) -> Iterator[tuple[str, str, TensorProto]]:
    """``(value name, description, tensor)`` of every float constant, subgraphs included."""
    for t in graph.initializer:
        if t.data_type in _FLOATS:
            yield t.name, f"initializer '{t.name}'", t
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in _FLOATS:
                if node.op_type == "Constant" and node.output:
                    yield node.output[0], f"Constant node '{node.name}'", a.t
                else:
                    what = f"attribute '{a.name}' of node '{node.name}' ({node.op_type})"
                    yield "", what, a.t
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _float_constants(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _float_constants(g)


def _readers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Value name -> ``(node, input index)`` of every node reading it, subgraphs included."""
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                out.setdefault(name, []).append((node, i))
        for a in node.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs:
                for k, v in _readers(g).items():
                    out.setdefault(k, []).extend(v)
    return out


def _uses(
    name: str, readers: dict[str, list[tuple[onnx.NodeProto, int]]]
) -> list[tuple[onnx.NodeProto, int]]:
    """The nodes reading ``name``, looking through Identity, Reshape and other pass-through ops."""
    out, todo, seen = [], [name], set()
    while todo:
        value = todo.pop()
        if not value or value in seen:
            continue
        seen.add(value)
        for node, i in readers.get(value, []):
            out.append((node, i))
            if node.op_type in _PASS_THROUGH and i == 0:
                todo.extend(node.output)
    return sorted(out, key=lambda use: use[0].op_type not in _WEIGHT_OPS)


def _input_name(node: onnx.NodeProto, index: int) -> str:
    """``input 'W'``: the schema's name of a node's input (``input 1`` when it has none)."""
    try:
        return f"input '{onnx.defs.get_schema(node.op_type).inputs[index].name}'"
    except Exception:  # noqa: BLE001 - unknown op or variadic input: the index says enough
        return f"input {index}"


def _values(mask: np.ndarray, kind: str) -> str:
    """``"3 NaN values"``, ``"1 negative value"``."""
    n = int(mask.sum())
    return f"{n} {kind} value{'s' if n != 1 else ''}"
