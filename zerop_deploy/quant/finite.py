"""Refuse a model whose outputs go NaN or Inf on images, naming the ONNX node where it starts.

Finite weights (checked at load) do not make a finite model: a Log, Sqrt or Div can produce NaN or
Inf on real images. Such values would otherwise travel through calibration and fine-tuning and
end as a NaN quantization scale at export. The first forward passes on images (the proxy stage,
calibration) check their outputs with :func:`all_finite`; only when one is not finite is the model
run again node by node (:class:`torch.fx.Interpreter`) to find the first node whose output is not
finite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import onnx
import torch

from zerop_deploy.errors import InputError
from zerop_deploy.quant.graph import module_node_names

NodeNames = Mapping[str, tuple[str, str]]
"""fx submodule name -> ``(ONNX node name, op type)``."""

_FIX = (
    "check the model on such images in its own framework and the input preprocessing "
    "(--mean/--std), then re-export it"
)


def onnx_nodes(proto: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Map the converted module's submodule names to ``(ONNX node name, op type)``."""
    ops = {n.name: n.op_type for n in proto.graph.node}
    return {m: (node, ops.get(node, "?")) for m, node in module_node_names(proto).items()}


def all_finite(value: Any) -> bool:
    """Whether every float tensor in ``value`` (a tensor, or nested tuples/lists) is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return all(all_finite(v) for v in value)
    return True


class _Found(Exception):
    def __init__(self, node: torch.fx.Node) -> None:
        super().__init__(node.name)
        self.node = node


class _Probe(torch.fx.Interpreter):
    """Runs a graph node by node and stops at the first computed value that is not finite."""

    def run_node(self, n: torch.fx.Node) -> Any:  # noqa: D102 - see class docstring
        out = super().run_node(n)
        if n.op in ("call_module", "call_function", "call_method") and not all_finite(out):
            raise _Found(n)
        return out


@torch.no_grad()
def nonfinite_origin(module: torch.nn.Module, *inputs: torch.Tensor) -> torch.fx.Node | None:
    """The first node of ``module``'s fx graph whose output holds NaN or Inf on ``inputs``.

    Returns:
        The node, or None when ``module`` is no :class:`torch.fx.GraphModule` or every value
        stays finite.
    """
    if not isinstance(module, torch.fx.GraphModule):
        return None
    try:
        _Probe(module).run(*inputs)
    except _Found as found:
        return found.node
    return None


def nonfinite_error(
    module: torch.nn.Module, x: torch.Tensor, *, what: str, nodes: NodeNames | None = None
) -> InputError:
    """The error for a model that computes NaN or Inf on ``x``: it names where that starts.

    Args:
        module: The model.
        x: The input batch it goes non-finite on.
        what: The images, for the message.
        nodes: Submodule name -> ``(ONNX node, op)``.

    Returns:
        An InputError naming the first ONNX node whose output is not finite when it can be
        found, else the model's output.
    """
    origin = nonfinite_origin(module, x)
    if origin is None:
        where = "its output holds NaN or Inf"
    elif origin.op == "call_module" and nodes and str(origin.target) in nodes:
        name, op = nodes[str(origin.target)]
        where = f"node '{name}' ({op}) is the first to compute NaN or Inf"
    else:
        name = str(origin.target) if origin.op == "call_module" else origin.name
        where = f"'{name}' is the first to compute NaN or Inf"
    return InputError(f"the model computes NaN or Inf on {what}: {where}; {_FIX}")
