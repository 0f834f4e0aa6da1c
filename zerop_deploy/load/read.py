"""Read a user's ONNX model safely: structure, external data (only from the model's folder), names.

Every failure is an :class:`~zerop_deploy.errors.InputError` with one line naming the file and what
to do; nothing here writes a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from zerop_deploy.errors import InputError
from zerop_deploy.load.graph_order import check_order
from zerop_deploy.load.tensor_checks import check_tensor_sizes
from zerop_deploy.onnx_facts import all_tensors


def read_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and check an ONNX file, with its external data, refusing anything unsafe or broken.

    External data must be a relative location that resolves (symlinks followed) inside the model's
    folder and must be long enough for the tensor it holds.

    Args:
        path: The ``.onnx`` file.

    Returns:
        The checked ModelProto with all external data loaded into it.

    Raises:
        InputError: Missing, unreadable, empty, corrupt or unsafe file, or a graph without inputs.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file; pass the path of an .onnx model")
    if p.is_dir():
        raise InputError(f"{p}: is a directory; pass the path of an .onnx model file")
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e.strerror}); check its permissions") from e
    if size == 0:
        raise InputError(f"{p}: the file is empty; pass a valid .onnx model")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InputError(
            f"{p}: not a valid ONNX protobuf (truncated or not an ONNX file: {e}); "
            "re-export the model"
        ) from e
    _check_structure(proto, p)
    _load_external_data(proto, p)
    check_tensor_sizes(all_tensors(proto.graph), str(p))
    check_order(proto.graph, p)
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise InputError(f"{p}: the ONNX checker rejects the model: {short_error(e)}") from e
    return proto


def short_error(e: BaseException, limit: int = 300) -> str:
    """A library's error as one line of at most ``limit`` characters, for our messages."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_structure(proto: onnx.ModelProto, p: Path) -> None:
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise InputError(f"{p}: holds no ONNX graph (not an ONNX model?); re-export the model")
    if proto.ir_version < 3:
        raise InputError(
            f"{p}: ONNX IR version {proto.ir_version} is too old; re-export with opset >= 11"
        )
    if not graph_inputs(proto):
        raise InputError(
            f"{p}: the graph has no inputs; a model to quantize must take an image tensor"
        )


def _load_external_data(proto: onnx.ModelProto, p: Path) -> None:
    base = p.resolve().parent
    external = [t for t in all_tensors(proto.graph) if external_data_helper.uses_external_data(t)]
    for t in external:
        info = external_data_helper.ExternalDataInfo(t)
        loc = info.location
        if not loc or os.path.isabs(loc) or Path(loc).is_absolute():
            raise InputError(
                f"{p}: tensor '{t.name}' points to external data at absolute path '{loc}'; refused "
                "(path traversal); keep external data files next to the model"
            )
        target = (base / loc).resolve()
        if base != target and base not in target.parents:
            raise InputError(
                f"{p}: tensor '{t.name}' points to external data '{loc}' outside the model's "
                "folder; "
                "refused (path traversal); keep external data files next to the model"
            )
        if not target.is_file():
            raise InputError(
                f"{p}: external data file '{loc}' of tensor '{t.name}' is missing; "
                "copy it next to the model"
            )
        offset = int(info.offset or 0)
        need = offset + int(info.length) if info.length else offset + 1
        if target.stat().st_size < need:
            raise InputError(
                f"{p}: external data file '{loc}' is too short for tensor '{t.name}'; "
                "the file is truncated: copy it again"
            )
    if external:
        try:
            external_data_helper.load_external_data_for_model(proto, str(base))
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: external data cannot be read: {short_error(e)}") from e


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (old exporters also list initializers as inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in inits]


def ensure_node_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Name every unnamed node ``<OpType>_<index>`` (in a copy); named nodes keep their names.

    Later stages identify layers by node name (onnx2torch names modules after nodes, the exporter
    finds the nodes to rewrite by name), so a node without a name could not be mapped back.
    """
    if all(n.name for n in proto.graph.node):
        return proto
    named = onnx.ModelProto()
    named.CopyFrom(proto)
    taken = {n.name for n in named.graph.node if n.name}
    for i, node in enumerate(named.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return named


# --------------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------------
