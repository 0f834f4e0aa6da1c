"""Every constant tensor of a model holds as much data as its shape says.

onnx.checker does not look at sizes, and a tensor whose data does not fill its dims fails later,
deep inside numpy or onnxruntime, with an error that names neither the file nor the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import onnx
from onnx import TensorProto, helper

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


def graph_constants(graph: onnx.GraphProto) -> Iterable[TensorProto]:
    """Initializers and Constant-node tensors of ``graph`` and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from graph_constants(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from graph_constants(g)
