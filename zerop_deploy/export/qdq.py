"""QDQ export: the user's ORIGINAL ONNX graph with QDQ pairs and integer weights.

For every :class:`~zerop_deploy.quant.qparams.LayerQuant` the exporter

* inserts ``QuantizeLinear -> DequantizeLinear`` (per tensor, the layer's :class:`ActQuant`)
  before the node's first input, one pair per (tensor, qparams) even when several layers read it;
* replaces the float weight by an INT4/INT8 initializer feeding ``DequantizeLinear`` with
  per-channel float32 scales along ``weight_axis`` and all-zero zero points of the same type (an
  8-bit weight with levels beyond +-64 as UINT8 with zero point 128 instead, the same values, so
  that onnxruntime's integer kernels compute it exactly on CPUs without VNNI: see
  :mod:`zerop_deploy.export.saturation`);
* replaces the bias by the layer's float bias (BatchNorm already folded into it) when one is given;
* removes the BatchNormalization node named by ``folded_bn``; the layer's output takes over the
  BN's output name so that every downstream node is unchanged.

Every other node, name, graph input/output, initializer and metadata entry is kept; weights,
biases and BN statistics that nothing reads any more are dropped (no fp32 copy stays in the file),
and one metadata entry, :data:`METADATA_KEY`, records a short JSON summary. New tensors and nodes
are named after what they replace (``<weight>_quantized``, ``<input>_QuantizeLinear``...) and never
collide with an existing name.

Opset: INT4/UINT4 tensors need the default domain at opset >= 21 (and IR >= 10). The model is
upgraded with ``onnx.version_converter`` *before* any QDQ node is inserted, so that the converter
only has to rewrite the user's own ops (e.g. ReduceMean-18 takes ``axes`` as an input) and never
sees INT4 types that older opsets lack. Int8-only exports keep the model's opset when it is >= 13,
the first opset with per-axis DequantizeLinear; older models are upgraded to 13.

Verified in onnxruntime 1.32 (CPU): QuantizeLinear/DequantizeLinear at opset 21 with uint4, int4,
uint8 and int8 activations and per-axis int4/int8 weights (with or without zero point) reproduce
:mod:`zerop_deploy.quant.primitives` bit for bit. One onnxruntime optimisation changes numerics:
WeightBiasQuantization rounds a float bias to int32 (see
:func:`zerop_deploy.export.integers.integer_bias`).

4-bit activation pairs with zero point 0 carry no zero-point input: QuantizeLinear names its type
with ``output_dtype`` (opset 21) instead. onnxruntime's optimisers read a 4-bit zero-point input
wrongly (ORT_4BIT_ZERO_POINT, onnxruntime 1.32, default session options): ClipQuantFusion refuses
to load any Clip -> QuantizeLinear whose zero point is UINT4/INT4 ("Unexpected data type for
QuantizeLinear input y_zero_point", so every ReLU6 network failed at W4A4), and ReluQuantFusion
removes a Relu before an INT4 zero point 0, which changes the results. Without the input both
fusions read the range correctly (a 4-bit range lies inside the uint8 range they then assume, so
a Clip or Relu they remove was redundant). A non-zero 4-bit zero point (signed
``--asymmetric-activations``) keeps its input, and is refused with an ExportError naming the node
when a Clip or Relu produces the tensor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zerop_deploy.errors import ExportError
from zerop_deploy.export import graph as g
from zerop_deploy.export.checks import check_layers
from zerop_deploy.export.integers import bias_levels, bias_scale, int_tensor, stored_weight_scale
from zerop_deploy.export.saturation import store_weights_unsaturated
from zerop_deploy.io import atomic_write_bytes
from zerop_deploy.onnx_facts import opset_of, producers
from zerop_deploy.quant.qparams import ActQuant, LayerQuant

METADATA_KEY = "zerop_deploy.quantization"
"""metadata_props key of the JSON summary the exporter adds."""

INT4_OPSET = 21
"""First default-domain opset with INT4/UINT4 QuantizeLinear/DequantizeLinear."""

PER_AXIS_OPSET = 13
"""First default-domain opset with per-axis (``axis`` attribute) DequantizeLinear."""

INT_TYPES = {
    (4, True): TensorProto.INT4,
    (4, False): TensorProto.UINT4,
    (8, True): TensorProto.INT8,
    (8, False): TensorProto.UINT8,
}


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def export_qdq(
    proto: onnx.ModelProto, layers: list[LayerQuant], *, int32_bias: bool = False
) -> onnx.ModelProto:
    """Return a new model: ``proto`` with QDQ pairs, integer weights and folded BatchNorms.

    ``proto`` itself is never modified.

    Args:
        proto: The user's original model (as read, BatchNormalization nodes still in it).
        layers: One entry per quantized Conv/ConvTranspose/Gemm/MatMul node, named as in ``proto``.
        int32_bias: Store the bias of each layer with a quantized input as INT32 feeding
            DequantizeLinear with per-channel scale ``act.scale * weight_scale`` (the value of
            :func:`~zerop_deploy.export.integers.integer_bias`, clipped to the int32 range like the
            student's) instead of float32. onnxruntime's WeightBiasQuantization transformer (on by
            default) does this rounding itself for every layer whose output goes straight into a
            QuantizeLinear; with ``int32_bias`` every runtime computes the same thing, whatever
            follows the layer.

    Returns:
        The QDQ model; it passes ``onnx.checker.check_model(..., full_check=True)``.

    Raises:
        ExportError: One line naming the node and what to do, for an unknown node, an op,
            shape, axis or bias that does not match the graph, a BN that is not the layer's single
            consumer, or a failed opset upgrade.

    """
    if not layers:
        raise ExportError("export: no quantized layers given; nothing to export")
    check_layers(proto, layers)
    target = _target_opset(proto, layers)
    model = g.upgrade_opset(proto, target) if target else _copy(proto)
    graph = model.graph
    keep_nodes, was_used = g.dead_nodes(graph), g.used_names(graph)
    _Rewriter(graph, int32_bias=int32_bias).apply(layers)
    store_weights_unsaturated(model)
    g.prune(graph, keep_nodes=keep_nodes, was_used=was_used)
    if any(lq.wbits == 4 or (lq.act is not None and lq.act.bits == 4) for lq in layers):
        model.ir_version = max(model.ir_version, 10)
    _set_metadata(model, layers)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"export: the exported model fails the ONNX checker: {e}") from e
    return model


def save_qdq(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write an exported model atomically (temporary file, then rename; never a partial file).

    Args:
        proto: The model from :func:`export_qdq` (under 2 GB: all tensors stay inside the file).
        path: Output ``.onnx`` path (check it first with
            :func:`zerop_deploy.io.check_output_path`).

    Raises:
        ExportError: If the model is too large to serialise into one file.
        InputError: If the file cannot be written.

    """
    atomic_write_bytes(path, qdq_bytes(proto, path))


def qdq_bytes(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> bytes:
    """The serialised model; ``path`` only names it in the error.

    Raises:
        ExportError: If the model is too large to serialise into one file (2 GB).
    """
    try:
        return proto.SerializeToString()
    except ValueError as e:  # protobuf refuses messages over 2 GB
        raise ExportError(
            f"{path}: the model cannot be serialised ({e}); it must stay under 2 GB"
        ) from e


# --------------------------------------------------------------------------------------------------
# checks (on the original proto, before anything is built)
# --------------------------------------------------------------------------------------------------


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    return new


def _target_opset(proto: onnx.ModelProto, layers: list[LayerQuant]) -> int:
    """Return the opset to upgrade to, or 0 when the model's own opset can carry the export."""
    opset = opset_of(proto)
    needs_int4 = any(lq.wbits == 4 or (lq.act is not None and lq.act.bits == 4) for lq in layers)
    need = INT4_OPSET if needs_int4 else PER_AXIS_OPSET
    return need if opset < need else 0


# --------------------------------------------------------------------------------------------------
# rewriting (on the copy)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Rewriter:
    """Builds the new nodes and initializers for each layer, then splices them into the graph."""

    graph: onnx.GraphProto
    int32_bias: bool = False
    before: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    pairs: dict[tuple[str, int, bool, float, int], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = g.NameMaker(g.all_names(self.graph))
        self.nodes = {n.name: n for n in self.graph.node}
        self.order = {n.name: i for i, n in enumerate(self.graph.node)}
        self.producer = producers(self.graph)

    def apply(self, layers: list[LayerQuant]) -> None:
        """Rewrite every layer (in graph order, so shared pairs sit before their first reader)."""
        for lq in sorted(layers, key=lambda lq: self.order[lq.node]):
            node = self.nodes[lq.node]
            if lq.act is not None:
                node.input[0] = self._activation_pair(node, lq.act)
            if lq.bias is not None:
                self._bias(node, lq)
            node.input[1] = self._weight(node, lq)
            if lq.folded_bn is not None:
                bn = self.nodes[lq.folded_bn]
                node.output[0] = bn.output[0]
                self.removed.add(bn.name)
        new_nodes = []
        for node in self.graph.node:
            if node.name not in self.removed:
                new_nodes.extend(self.before.get(node.name, []))
                new_nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(new_nodes)

    def _init(self, tensor: TensorProto) -> str:
        self.graph.initializer.append(tensor)
        return tensor.name

    def _activation_pair(self, node: onnx.NodeProto, act: ActQuant) -> str:
        x = node.input[0]
        key = (x, act.bits, act.signed, float(act.scale), int(act.zero_point))
        if key in self.pairs:
            return self.pairs[key]
        qtype = INT_TYPES[(act.bits, act.signed)]
        scale = self._init(
            numpy_helper.from_array(np.array(act.scale, np.float32), self.names(f"{x}_scale"))
        )
        q_out, dq_out = self.names(f"{x}_quantized"), self.names(f"{x}_dequantized")
        q_attrs: dict[str, int] = {}
        if act.bits == 4 and int(act.zero_point) == 0:
            # ORT_4BIT_ZERO_POINT: see the module docstring
            q_inputs, q_attrs = [x, scale], {"output_dtype": qtype}
        else:
            self._check_zero_point_reader(node, x, act)
            zp = self._init(
                helper.make_tensor(self.names(f"{x}_zero_point"), qtype, [], [int(act.zero_point)])
            )
            q_inputs = [x, scale, zp]
        self.before.setdefault(node.name, []).extend(
            [
                helper.make_node(
                    "QuantizeLinear",
                    q_inputs,
                    [q_out],
                    name=self.names(f"{x}_QuantizeLinear"),
                    **q_attrs,
                ),
                helper.make_node(
                    "DequantizeLinear",
                    [q_out, *q_inputs[1:]],
                    [dq_out],
                    name=self.names(f"{x}_DequantizeLinear"),
                ),
            ]
        )
        self.pairs[key] = dq_out
        return dq_out

    def _check_zero_point_reader(self, node: onnx.NodeProto, x: str, act: ActQuant) -> None:
        """Refuse a 4-bit zero-point input right after Clip/Relu (ORT_4BIT_ZERO_POINT)."""
        producer = self.producer.get(x)
        if act.bits == 4 and producer is not None and producer.op_type in ("Clip", "Relu"):
            raise ExportError(
                f"node '{node.name}': its input comes from {producer.op_type} "
                f"'{producer.name}' and is quantized to 4 bits with zero point "
                f"{act.zero_point}; onnxruntime cannot load (Clip) or miscomputes (Relu) that "
                "pattern: drop --asymmetric-activations, or give this layer 8-bit activations "
                "with --layer-config"
            )

    def _weight(self, node: onnx.NodeProto, lq: LayerQuant) -> str:
        w = node.input[1]
        q = self._init(int_tensor(self.names(f"{w}_quantized"), np.asarray(lq.weight), lq.wbits))
        scale = self._init(
            numpy_helper.from_array(stored_weight_scale(lq), self.names(f"{w}_scale"))
        )
        zeros = np.zeros(len(lq.weight_scale), dtype=np.int8)
        zp = self._init(int_tensor(self.names(f"{w}_zero_point"), zeros, lq.wbits))
        out = self.names(f"{w}_dequantized")
        self.before.setdefault(node.name, []).append(
            helper.make_node(
                "DequantizeLinear",
                [q, scale, zp],
                [out],
                name=self.names(f"{w}_DequantizeLinear"),
                axis=lq.weight_axis,
            )
        )
        return out

    def _bias(self, node: onnx.NodeProto, lq: LayerQuant) -> None:
        old = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        base = f"{old}_folded" if old else f"{node.input[1]}_bias"
        bias = np.asarray(lq.bias, np.float32)
        if self.int32_bias and lq.act is not None:
            scale = bias_scale(lq)
            levels = bias_levels(bias, scale)
            q = self._init(
                numpy_helper.from_array(levels.astype(np.int32), self.names(f"{base}_quantized"))
            )
            s = self._init(numpy_helper.from_array(scale, self.names(f"{base}_scale")))
            name = self.names(f"{base}_dequantized")
            self.before.setdefault(node.name, []).append(
                helper.make_node(
                    "DequantizeLinear",
                    [q, s],
                    [name],
                    name=self.names(f"{base}_DequantizeLinear"),
                    axis=0,
                )
            )
        else:
            name = self._init(numpy_helper.from_array(bias, self.names(base)))
        if len(node.input) > 2:
            node.input[2] = name
        else:
            node.input.append(name)


def _set_metadata(model: onnx.ModelProto, layers: list[LayerQuant]) -> None:
    doc = {
        "format": "QDQ",
        "layers": len(layers),
        "weight_bits": sorted({lq.wbits for lq in layers}),
        "activation_bits": sorted({lq.act.bits for lq in layers if lq.act is not None}),
        "folded_batchnorms": sum(lq.folded_bn is not None for lq in layers),
        "opset": opset_of(model),
    }
    value = json.dumps(doc, separators=(",", ":"))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = value
            return
    model.metadata_props.add(key=METADATA_KEY, value=value)
