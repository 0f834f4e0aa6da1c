"""Cross-layer equalization of the activation between two quantized layers (DFQ, Nagel et al. 2019).

Where a Conv A feeds a Conv B and nothing else (through A's folded BatchNorm and at most a ReLU),
dividing A's output channel ``c`` (weights and bias) by ``s_c`` and multiplying B's input channel
``c`` by ``s_c`` leaves the network's function unchanged (ReLU commutes with positive scales). The
activation between them is quantized per tensor, so channels with a small range get few of its 16
levels; depthwise convolutions followed by BatchNorm (MobileNet, ShuffleNet) produce such uneven,
signed channels. With ``r_c`` the channel's range on calibration images and ``w_c`` the largest
weight of B's input channel ``c``, ``s_c = sqrt(r_c / w_c)`` gives both the same range
``sqrt(r_c * w_c)``, the balance DFQ derives. A's weights are quantized per output channel, so its
own precision does not change.

The teacher is untouched: the student's output of A now differs from the teacher's by the channel
scales, kept on A as the buffer ``channel_divisor``; layer-output matching and the report's
per-layer SQNR divide the teacher's output by it.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
import torch

from zerop_deploy.onnx_facts import consumers, producers
from zerop_deploy.quant.graph import int_attribute
from zerop_deploy.quant.modules import QuantConv, float_mode

_S_RANGE = (1e-3, 1e3)  # guards against dead channels and empty weights


def equalization_pairs(proto: onnx.ModelProto, plan: list) -> list[tuple[str, str]]:
    """``(module of A, module of B)`` for every quantized Conv pair that can be equalized.

    B must be an ungrouped quantized Conv whose input has no other reader; that input must come
    from a quantized Conv A (or from the BatchNorm folded into A), possibly through a ReLU that
    has no other reader either.
    """
    prod, cons = producers(proto.graph), consumers(proto.graph)
    nodes = {n.name: n for n in proto.graph.node}
    graph_outputs = {o.name for o in proto.graph.output}

    def single_reader(value: str) -> bool:  # read by one node and not a graph output
        return len(cons.get(value, [])) == 1 and value not in graph_outputs

    done = [p for p in plan if p.skipped is None]
    by_output: dict[str, object] = {}
    for p in done:
        if p.op == "Conv":
            by_output[nodes[p.node].output[0]] = p
            if p.folded_bn:
                by_output[nodes[p.folded_bn].output[0]] = p
    out = []
    for b in done:
        node_b = nodes[b.node]
        if b.op != "Conv" or int_attribute(node_b, "group", 1) != 1:
            continue
        x = node_b.input[0]
        if not single_reader(x):
            continue
        src = prod.get(x)
        if src is not None and src.op_type == "Relu" and single_reader(src.input[0]):
            x = src.input[0]
        a = by_output.get(x)
        if a is None or a is b:
            continue
        conv_out = nodes[a.node].output[0]
        if a.folded_bn is None or single_reader(conv_out):  # A's conv output feeds only its BN
            out.append((a.module, b.module))
    return out


def _absmax_per_channel(t: torch.Tensor) -> torch.Tensor:
    """``max |t|`` over every axis but 1: per activation channel, or per Conv input channel."""
    return t.detach().abs().transpose(0, 1).reshape(t.shape[1], -1).amax(1)


@torch.no_grad()
def channel_ranges(
    student: torch.nn.Module, modules: list[str], batches: Iterable[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-channel ``max |x|`` of the inputs of ``modules`` in the float student on ``batches``."""
    ranges: dict[str, torch.Tensor] = {}
    hooks = []
    for name in modules:

        def hook(_m, args, name=name):
            r = _absmax_per_channel(args[0])
            ranges[name] = r if name not in ranges else torch.maximum(ranges[name], r)

        hooks.append(student.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with float_mode(student):
            for x in batches:
                student(x)
    finally:
        for h in hooks:
            h.remove()
    return ranges


@torch.no_grad()
def equalize(
    student: torch.nn.Module, pairs: list[tuple[str, str]], batches: list[torch.Tensor]
) -> None:
    """Rescale every pair in place; A keeps its channel scales ``s`` as ``channel_divisor``.

    One pass measures all ranges: equalizing a pair changes no activation but its own (a layer can
    be B of one pair and A of the next).
    """
    pairs = [
        (a, b)
        for a, b in pairs
        if isinstance(student.get_submodule(a), QuantConv)
        and isinstance(student.get_submodule(b), QuantConv)
        and student.get_submodule(a).weight.shape[0] == student.get_submodule(b).weight.shape[1]
    ]
    ranges = channel_ranges(student, [b for _, b in pairs], batches)
    for a_name, b_name in pairs:
        a, b = student.get_submodule(a_name), student.get_submodule(b_name)
        r = ranges[b_name].double()
        w = _absmax_per_channel(b.weight.double())  # per input channel of B
        s = torch.sqrt(r / w)
        s = torch.where((r > 0) & (w > 0) & torch.isfinite(s), s, torch.ones_like(s))
        s = s.clamp(*_S_RANGE)
        shape_a = [-1] + [1] * (a.weight.dim() - 1)
        shape_b = [1, -1] + [1] * (b.weight.dim() - 2)
        a.weight.div_(s.to(a.weight.dtype).view(shape_a))
        if a.bias is not None:
            a.bias.div_(s.to(a.bias.dtype))
        b.weight.mul_(s.to(b.weight.dtype).view(shape_b))
        # kept on A (and in checkpoints): layer-output matching and the report's per-layer SQNR
        # divide the teacher's output by it
        a.register_buffer("channel_divisor", s.float())
