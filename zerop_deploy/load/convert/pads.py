"""Fold explicit zero ``Pad`` nodes into the convolution they feed, in the converted module.

TensorFlow's "same" padding reaches ONNX as a ``Pad`` node in front of each convolution, its pads
computed at run time from constants (EfficientNet-Lite0: 17 of them, each fed by a chain of
Constant, Reshape, Slice, Transpose, Concat and Cast nodes). onnx2torch turns each into an
``F.pad`` call: a copy of the activation forward and another backward, at every step of the
fine-tuning, for teacher and student. Where the padding is zero, on the spatial axes only, and the
same before and after on each axis, it is exactly the convolution's own zero padding: the conv's
``padding`` takes it and the ``Pad`` node and the chain that computed its pads leave the graph.
Asymmetric pads (stride-2 "same" on an even size) stay as they are. The ONNX graph itself, and so
every exported file, keeps its Pad nodes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _NotConstant(Exception):
    """A value depends on a graph input."""


def fold_pads_into_convs(module: fx.GraphModule) -> int:
    """Fold every foldable constant zero ``Pad`` into the convolution it feeds; edits ``module``.

    Returns:
        How many Pad nodes were folded.
    """
    graph = module.graph
    cache: dict[fx.Node, Any] = {}
    folded = 0
    for node in list(graph.nodes):
        conv = _conv_fed_by_pad(module, node)
        if conv is None:
            continue
        pads = _pads(module, node, cache, conv)
        if pads is None:
            continue
        conv.padding = tuple(int(p) + b for p, b in zip(conv.padding, pads, strict=True))
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
        folded += 1
    if folded:
        graph.eliminate_dead_code()
        module.delete_all_unused_submodules()
        module.recompile()
    return folded


def _conv_fed_by_pad(module: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The zero-padded convolution that is the only reader of a constant-mode Pad ``node``."""
    if node.op != "call_module" or type(module.get_submodule(node.target)).__name__ not in (
        "OnnxPadDynamic",
        "OnnxPadStatic",
    ):
        return None
    if getattr(module.get_submodule(node.target), "mode", None) != "constant":
        return None
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module" or users[0].args[:1] != (node,):
        return None
    conv = module.get_submodule(users[0].target)
    if not isinstance(conv, _CONVS) or conv.padding_mode != "zeros":
        return None
    if isinstance(conv.padding, str):
        return None
    return conv


def _pads(
    module: fx.GraphModule, node: fx.Node, cache: dict[fx.Node, Any], conv: nn.Module
) -> tuple[int, ...] | None:
    """Per spatial axis, the zero padding of a symmetric Pad ``node``; None if it is not one."""
    pad = module.get_submodule(node.target)
    try:
        if type(pad).__name__ == "OnnxPadStatic":
            value, torch_pads = float(pad.constant_value), list(pad.pads)
        else:
            args = [_evaluate(module, a, cache) for a in node.args[1:]]
            onnx_pads = [int(v) for v in torch.as_tensor(args[0]).reshape(-1).tolist()]
            value = 0.0 if len(args) < 2 or args[1] is None else float(torch.as_tensor(args[1]))
            half = len(onnx_pads) // 2
            begin, end = onnx_pads[:half][::-1], onnx_pads[half:][::-1]
            torch_pads = [v for pair in zip(begin, end, strict=True) for v in pair]
    except _NotConstant:
        return None
    spatial = len(conv.padding)
    if value != 0.0 or len(torch_pads) < 2 * spatial:
        return None
    if any(torch_pads[2 * spatial :]):  # batch or channel padding
        return None
    pairs = [(torch_pads[2 * i], torch_pads[2 * i + 1]) for i in range(spatial)][::-1]
    if any(b != e or b < 0 for b, e in pairs):
        return None
    return tuple(b for b, _ in pairs)


def _evaluate(module: fx.GraphModule, arg: Any, cache: dict[fx.Node, Any]) -> Any:
    """The value of ``arg`` when it is computed from constants only, else raise _NotConstant."""
    if not isinstance(arg, fx.Node):
        return fx.node.map_aggregate(
            arg, lambda a: _evaluate(module, a, cache) if isinstance(a, fx.Node) else a
        )
    if arg in cache:
        if cache[arg] is _NotConstant:
            raise _NotConstant
        return cache[arg]
    try:
        if arg.op == "get_attr":
            value = _attr(module, str(arg.target))
        elif arg.op in ("call_module", "call_function", "call_method"):
            args = _evaluate(module, arg.args, cache)
            kwargs = _evaluate(module, arg.kwargs, cache)
            with torch.no_grad():
                if arg.op == "call_module":
                    value = module.get_submodule(str(arg.target))(*args, **kwargs)
                elif arg.op == "call_function":
                    value = arg.target(*args, **kwargs)  # type: ignore[operator]
                else:
                    value = getattr(args[0], str(arg.target))(*args[1:], **kwargs)
        else:
            raise _NotConstant
    except _NotConstant:
        cache[arg] = _NotConstant
        raise
    cache[arg] = value
    return value


def _attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
