"""Build the fake-quantized student from the fp32 teacher: fold BatchNorm, swap in quantized layers.

The teacher (from :func:`zerop_deploy.load.to_torch.convert_model`) is left untouched, BatchNorm
statistics included, for the proxy-data and synthesis stages. The student is a deep copy in which

* every BatchNormalization that alone follows a Conv is folded into that Conv and becomes Identity;
* every Conv, ConvTranspose, Gemm (as nn.Linear) and MatMul with a constant weight becomes a
  :class:`~zerop_deploy.quant.modules.QuantLayer` with the bit widths of :class:`QuantConfig`;
* an input quantizer is unsigned when the ONNX graph proves its input non-negative.

Layers that cannot be quantized are not skipped silently: each is listed with its reason in the
plan.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from zerop_deploy.config import QuantConfig
from zerop_deploy.errors import ConfigError
from zerop_deploy.onnx_facts import gemm_scales, quantizable_nodes
from zerop_deploy.quant.finite import onnx_nodes
from zerop_deploy.quant.graph import (
    bn_parameters,
    conv_bn_pairs,
    int_attribute,
    module_node_names,
    nonnegative_values,
)
from zerop_deploy.quant.modules import (
    ActQuantizer,
    QuantConv,
    QuantConvTranspose,
    QuantLayer,
    QuantLinear,
    QuantMatMul,
)
from zerop_deploy.quant.qparams import ActQuant, LayerQuant


@dataclass(frozen=True)
class LayerPlan:
    """What happened to one quantizable ONNX node."""

    node: str
    op: str
    module: str
    wbits: int | None
    abits: int | None
    act_signed: bool | None
    folded_bn: str | None
    skipped: str | None = None


def fold_bn_into_conv(
    conv: nn.Module, bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Folded ``(weight, bias)`` of ``conv`` followed by an inference BatchNorm.

    ``w' = w * gamma / sqrt(var + eps)`` per output channel and
    ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``, computed in float64.

    Args:
        conv: The Conv module (weight ``[C_out, ...]``, optional bias).
        bn: ``(gamma, beta, mean, var, eps)`` from :func:`zerop_deploy.quant.graph.bn_parameters`.
    """
    # on the conv's device: the module may already sit on the GPU (synthesis moved it there)
    gamma, beta, mean, var, eps = (
        torch.as_tensor(v, dtype=torch.float64, device=conv.weight.device) for v in bn
    )
    factor = gamma / torch.sqrt(var + eps)
    with torch.no_grad():
        w = conv.weight.double() * factor.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        b = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        return w.float(), ((b - mean) * factor + beta).float()


class _PassThrough(nn.Module):
    """Stands where a folded BatchNorm was: returns its first input, ignores the BN parameters."""

    def forward(self, x: torch.Tensor, *_bn_inputs: torch.Tensor) -> torch.Tensor:
        """Identity on ``x``."""
        return x


def _inner(module: nn.Module) -> nn.Module:
    """onnx2torch wraps a Conv with asymmetric padding in Sequential(pad, conv): return the conv."""
    if isinstance(module, nn.Sequential):
        return module[-1]
    return module


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def build_student(
    teacher: torch.fx.GraphModule, proto: onnx.ModelProto, config: QuantConfig
) -> tuple[torch.fx.GraphModule, list[LayerPlan]]:
    """Make the fake-quantized student of ``teacher``.

    Args:
        teacher: fp32 module converted from ``proto``.
        proto: The original model (node names, constants, graph structure).
        config: Bit widths, first/last policy and per-layer overrides.

    Returns:
        ``(student, plan)``: the student (training mode off, quantizers uninitialised) and one
        :class:`LayerPlan` per quantizable node, skipped ones included with their reason.

    Raises:
        ConfigError: ``config.overrides`` names a node that is no quantizable node of ``proto``
            (:func:`check_layer_names`).
    """
    student = copy.deepcopy(teacher).eval()
    node_of = module_node_names(proto)
    module_of = {v: k for k, v in node_of.items()}
    nodes = {n.name: n for n in proto.graph.node}
    bn_of = conv_bn_pairs(proto) if config.fold_bn else {}
    nonneg = nonnegative_values(proto)
    candidates = [n.name for n in quantizable_nodes(proto.graph)]
    check_layer_names(proto, config, candidates)
    student.meta["onnx_nodes"] = onnx_nodes(proto)  # calibration names the node of a NaN
    edges = {candidates[0], candidates[-1]} if candidates else set()  # first and last layer
    plan = []
    for name in candidates:
        node, mname = nodes[name], module_of[name]
        bits = config.bits_for(name, edge=name in edges)
        folded = bn_of.get(name)
        if bits is None:
            plan.append(
                LayerPlan(name, node.op_type, mname, None, None, None, None, "override: skip")
            )
            continue
        act = ActQuantizer(
            bits[1], signed=node.input[0] not in nonneg, asymmetric=config.asymmetric_activations
        )
        bn = bn_parameters(proto, folded) if folded else None
        layer, why = _quant_layer(student, mname, node, bits[0], act, bn)
        if layer is None:
            plan.append(LayerPlan(name, node.op_type, mname, None, None, None, None, why))
            continue
        _replace(student, mname, layer)
        if folded:
            _replace(student, module_of[folded], _PassThrough())
        plan.append(LayerPlan(name, node.op_type, mname, bits[0], bits[1], act.signed, folded))
    student.recompile()
    return student, plan


def check_layer_names(
    proto: onnx.ModelProto, config: QuantConfig, quantizable: list[str] | None = None
) -> None:
    """Refuse per-layer overrides that name no quantizable node (a typo is never ignored).

    Args:
        proto: The model.
        config: Its quantization settings; ``config.overrides`` is checked.
        quantizable: The names of :func:`~zerop_deploy.onnx_facts.quantizable_nodes` of
            ``proto``, when already computed.

    Raises:
        ConfigError: Naming ``--layer-config``, the name, and the closest quantizable node names,
            or the op of a node that exists but is not quantizable.
    """
    if quantizable is None:
        quantizable = [n.name for n in quantizable_nodes(proto.graph)]
    known = set(quantizable)
    ops = {n.name: n.op_type for n in proto.graph.node}
    for name in config.overrides:
        if name in known:
            continue
        if name in ops:
            why = (
                f"node '{name}' is a {ops[name]}, not a quantizable layer (Conv, ConvTranspose, "
                "Gemm or MatMul with a constant weight)"
            )
        else:
            why = f"the model has no node '{name}'"
        close = difflib.get_close_matches(name, quantizable, n=3, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(repr(c) for c in close)}?"
            if close
            else "`zerop-deploy inspect MODEL` lists the quantizable nodes"
        )
        raise ConfigError(f"--layer-config: {why}; {hint}")


@dataclass(frozen=True)
class _Site:
    """Where a quantized layer goes: the student, the module's name, its node, its settings."""

    student: nn.Module
    mname: str
    node: onnx.NodeProto
    module: nn.Module
    wbits: int
    act: ActQuantizer
    bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None


_Handler = Callable[[_Site], "tuple[nn.Module | None, str] | None"]
_HANDLERS: dict[str, _Handler] = {}
"""ONNX op -> the handler that builds its quantized layer (None: this module type is not one)."""


def _handles(op: str) -> Callable[[_Handler], _Handler]:
    def register(handler: _Handler) -> _Handler:
        _HANDLERS[op] = handler
        return handler

    return register


@_handles("Conv")
def _conv(site: _Site) -> tuple[nn.Module | None, str] | None:
    if not isinstance(site.module, nn.modules.conv._ConvNd):
        return None
    w, b = fold_bn_into_conv(site.module, site.bn) if site.bn is not None else (None, None)
    layer = QuantConv(site.module, site.wbits, site.act, weight=w, bias=b)
    return _wrap_padded(site.student, site.mname, layer), ""


@_handles("ConvTranspose")
def _conv_transpose(site: _Site) -> tuple[nn.Module | None, str] | None:
    if not isinstance(site.module, nn.modules.conv._ConvTransposeNd):
        return None
    return QuantConvTranspose(site.module, site.wbits, site.act), ""


@_handles("Gemm")
def _gemm(site: _Site) -> tuple[nn.Module | None, str] | None:
    if gemm_scales(site.node):
        return None, "Gemm with alpha/beta != 1 is kept in float"
    if isinstance(site.module, nn.Linear):
        return QuantLinear(site.module, site.wbits, site.act), ""
    return None, "Gemm with a transposed or non-constant input is kept in float"


@_handles("MatMul")
def _matmul(site: _Site) -> tuple[nn.Module | None, str] | None:
    weight = _matmul_weight(site.student, site.mname)
    if weight is not None and weight.dim() == 2:
        return QuantMatMul(weight, site.wbits, site.act), ""
    return None, "MatMul weight is not a 2-D constant; kept in float"


def _quant_layer(
    student: nn.Module,
    mname: str,
    node: onnx.NodeProto,
    wbits: int,
    act: ActQuantizer,
    bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None,
) -> tuple[nn.Module | None, str]:
    """The quantized replacement of one module (its op's handler), or ``(None, reason)``."""
    module = _inner(student.get_submodule(mname))
    handler = _HANDLERS.get(node.op_type)
    built = (
        None if handler is None else handler(_Site(student, mname, node, module, wbits, act, bn))
    )
    if built is None:
        return None, f"{node.op_type} converted to {type(module).__name__}; kept in float"
    return built


def _wrap_padded(student: nn.Module, mname: str, layer: nn.Module) -> nn.Module:
    """Keep onnx2torch's explicit padding module in front of the quantized conv."""
    original = student.get_submodule(mname)
    if isinstance(original, nn.Sequential):
        return nn.Sequential(*list(original)[:-1], layer)
    return layer


def _matmul_weight(student: torch.fx.GraphModule, mname: str) -> torch.Tensor | None:
    """The constant second operand of a MatMul call in the fx graph."""
    for n in student.graph.nodes:
        if n.op == "call_module" and n.target == mname and len(n.args) > 1:
            arg = n.args[1]
            if getattr(arg, "op", None) == "get_attr":
                return student.get_buffer(arg.target).detach().clone()
    return None


def layer_of(student: nn.Module, mname: str) -> QuantLayer:
    """The quantized layer of a student module (the last of an explicit-padding Sequential)."""
    module = student.get_submodule(mname)
    return module[-1] if isinstance(module, nn.Sequential) else module


def _act_of(layer: QuantLayer) -> ActQuant | None:
    if layer.act is None:
        return None
    q = layer.act
    return ActQuant(
        bits=q.bits,
        signed=q.signed,
        scale=float(q.scale.detach().abs() + 1e-12),
        zero_point=int(round(float(q.zero_point))) if q.asymmetric else 0,
    )


def layer_quants(
    student: nn.Module, plan: list[LayerPlan], proto: onnx.ModelProto
) -> list[LayerQuant]:
    """The exporter's description of every quantized layer of a trained student.

    Integer weights and scales are exactly those of the student's forward pass; weights are laid out
    as the ONNX node stores them (Gemm with ``transB=0`` and MatMul keep ``[K, N]``).
    """
    nodes = {n.name: n for n in proto.graph.node}
    out = []
    for p in plan:
        if p.skipped is not None:
            continue
        layer = layer_of(student, p.module)
        w = layer.integer_weight().numpy().astype(np.int8)
        scale = layer.step_sizes().detach().numpy().astype(np.float32)
        axis = layer.weight_axis
        if p.op == "Gemm" and not int_attribute(nodes[p.node], "transB", 0):
            w, axis = w.T.copy(), 1
        bias = None if layer.bias is None else layer.bias.detach().numpy().astype(np.float32)
        out.append(
            LayerQuant(
                node=p.node,
                op=p.op,
                wbits=layer.wbits,
                weight=w,
                weight_scale=scale,
                weight_axis=axis,
                bias=bias,
                act=_act_of(layer),
                folded_bn=p.folded_bn,
            )
        )
    return out
