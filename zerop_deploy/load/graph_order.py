"""Graph order checks: values that no node produces, cycles, and nodes listed out of order.

The ONNX checker reports all three as "not topologically sorted"; these checks say which node and
which value, and sort a graph that is merely listed out of order (in memory only).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from zerop_deploy.errors import InputError


def check_order(graph: onnx.GraphProto, p: Path) -> None:
    """Refuse reads of values nobody produces and cycles; put an unsorted DAG in order.

    The ONNX checker reports both as "not topologically sorted", which does not tell the user
    what is wrong. A graph that is merely listed out of order is sorted in memory (the file is
    never touched).
    """
    available = {"", *(i.name for i in graph.input), *(t.name for t in graph.initializer)}
    producer = {o: n for n in graph.node for o in n.output if o}
    for n in graph.node:
        for i in n.input:
            if i not in available and i not in producer:
                raise InputError(
                    f"{p}: node '{n.name}' ({n.op_type}) reads '{i}', which no node produces and "
                    "is no graph input or initializer; re-export the model"
                )
    done = set(available)
    for n in graph.node:
        if not all(i in done for i in n.input):
            break
        done.update(n.output)
    else:
        return  # already in order
    order, done, pending = [], set(available), list(graph.node)
    while pending:
        ready = [n for n in pending if all(i in done for i in n.input)]
        if not ready:
            raise InputError(
                f"{p}: the graph has a cycle: {_cycle(pending, producer)}; "
                "an ONNX graph must be acyclic, re-export the model"
            )
        order += ready
        done.update(o for n in ready for o in n.output)
        placed = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in placed]
    nodes = [onnx.NodeProto() for _ in order]  # copies: the originals are cleared below
    for dst, src in zip(nodes, order, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)


def _cycle(stuck: list[onnx.NodeProto], producer: dict[str, onnx.NodeProto]) -> str:
    """``a -> b -> a``: node names around one cycle among nodes that cannot be ordered."""
    ids = {id(n) for n in stuck}
    path, node = [], stuck[0]
    while all(node is not q for q in path):
        path.append(node)
        node = next(producer[i] for i in node.input if i in producer and id(producer[i]) in ids)
    loop = path[next(k for k, q in enumerate(path) if q is node) :]
    names = [q.name or q.op_type for q in reversed(loop)]
    return " -> ".join([*names, names[0]])
