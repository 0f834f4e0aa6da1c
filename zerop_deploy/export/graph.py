"""Small ONNX graph utilities for the exporter: names, uses, dead-code pruning and opset upgrades.

Nothing here knows about quantization; every function works on a ``GraphProto``/``ModelProto`` and
either returns a new value or edits the proto it is given (said in each docstring).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx
from onnx import helper, version_converter

from zerop_deploy.errors import ExportError
from zerop_deploy.onnx_facts import opset_of


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Return every value name read by a node (subgraphs included) or listed as a graph output."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(i for i in node.input if i)
        for sub in _subgraphs(node):
            used |= used_names(sub)
    return used


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Return every name in the graph (values, nodes, initializers, inputs, outputs, value_info)."""
    names = {t.name for t in graph.initializer}
    names |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for sub in _subgraphs(node):
            names |= all_names(sub)
    names.discard("")
    return names


class NameMaker:
    """Deterministic fresh names: ``base``, then ``base_1``, ``base_2``... skipping taken names."""

    def __init__(self, taken: Iterable[str]) -> None:
        self._taken = set(taken)

    def __call__(self, base: str) -> str:
        """Return a name built from ``base`` that nothing in the graph uses yet, and reserve it."""
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name


def dead_nodes(graph: onnx.GraphProto) -> set[str]:
    """Return the names of nodes none of whose outputs is read (the user's own dead code)."""
    used = used_names(graph)
    return {n.name for n in graph.node if not any(o in used for o in n.output if o)}


def prune(graph: onnx.GraphProto, *, keep_nodes: set[str], was_used: set[str]) -> None:
    """Remove, in place, what an edit made dead: nodes and initializers nothing reads any more.

    A node is removed when none of its outputs is read and its name is not in ``keep_nodes`` (pass
    the nodes that were already dead before the edit); an initializer is removed when nothing reads
    it now but something did before (``was_used``), together with a graph input of the same name
    (old IR versions list initializers as inputs).

    Args:
        graph: The edited graph.
        keep_nodes: Node names never to remove.
        was_used: Value names that were read before the edit.

    """
    while True:
        used = used_names(graph)
        dead = [
            n
            for n in graph.node
            if n.name not in keep_nodes and not any(o in used for o in n.output if o)
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = used_names(graph)
    gone = {t.name for t in graph.initializer if t.name not in used and t.name in was_used}
    _remove_where(graph.initializer, lambda t: t.name in gone)
    _remove_where(graph.input, lambda v: v.name in gone)
    values = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
    values |= {v.name for v in graph.input}
    _remove_where(graph.value_info, lambda v: v.name not in values and v.name in was_used)


def _remove_where(field, pred) -> None:  # type: ignore[no-untyped-def]
    keep = [x for x in field if not pred(x)]
    if len(keep) != len(field):
        del field[:]
        field.extend(keep)


def upgrade_opset(proto: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """Return a copy of ``proto`` with the default domain converted to opset ``target``.

    ``onnx.version_converter`` rewrites ops whose signature changed (ReduceMean-18 takes ``axes`` as
    an input, so it adds a Constant node). It keeps node names; nodes it adds get a deterministic
    name from their first output (the user's unnamed nodes stay unnamed). The original
    ``value_info`` is restored (the converter adds inferred shapes the user's file did not have)
    and ``ir_version`` is raised to what the new opset needs.

    Raises:
        ExportError: If the converter fails (names the opsets and the reason).

    """
    outputs_before = {o for n in proto.graph.node for o in n.output}
    try:
        new = version_converter.convert_version(proto, target)
    except Exception as e:  # the converter raises RuntimeError/ValueError/its own types
        raise ExportError(
            f"model: cannot convert opset {opset_of(proto)} to {target} with "
            f"onnx.version_converter ({e}); re-export the model with opset >= {target}"
        ) from e
    maker = NameMaker(all_names(new.graph) | all_names(proto.graph))
    for node in new.graph.node:
        if not node.name and node.output and node.output[0] not in outputs_before:
            node.name = maker(f"{node.output[0]}_{node.op_type}")
    del new.graph.value_info[:]
    new.graph.value_info.extend(proto.graph.value_info)
    new.ir_version = max(proto.ir_version, min_ir_version(new))
    return new


def min_ir_version(proto: onnx.ModelProto) -> int:
    """Return the lowest IR version the model's opset imports need."""
    return int(helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True))
