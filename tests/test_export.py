"""QDQ export: the original graph plus QDQ pairs, checked by the ONNX checker and a simulation.

The simulation is independent of the exporter: the original model with each quantized layer's
weight replaced by its dequantized weight (bias by the folded bias, BN turned into Identity) is
converted to torch with onnx2torch, and each quantized layer's input is fake-quantized by a forward
pre-hook using :mod:`zerop_deploy.quant.primitives`. onnxruntime must compute the same logits.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from zerop_deploy.errors import ExportError
from zerop_deploy.export.integers import integer_bias, stored_weight_scale
from zerop_deploy.export.qdq import METADATA_KEY, export_qdq, save_qdq
from zerop_deploy.load.parity import random_inputs, run_onnxruntime, run_torch
from zerop_deploy.load.read import read_model
from zerop_deploy.load.summary import quantizable_layers
from zerop_deploy.load.to_torch import convert_model
from zerop_deploy.onnx_facts import constant_tensors
from zerop_deploy.quant import primitives as P
from zerop_deploy.quant.qparams import ActQuant, LayerQuant

# --------------------------------------------------------------------------------------------------
# building LayerQuant lists by hand
# --------------------------------------------------------------------------------------------------


def _consts(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Constant values, following Identity nodes (the TorchScript exporter shares equal tensors)."""
    consts = {k: numpy_helper.to_array(v) for k, v in constant_tensors(proto.graph).items()}
    for n in proto.graph.node:
        if n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    return consts


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _activations(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The input of every quantizable layer in the float model on ``feeds`` (to choose scales)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    nodes = {n.name: n for n in m.graph.node}
    names = sorted({nodes[q["node"]].input[0] for q in quantizable_layers(m)} - set(feeds))
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    outs = run_onnxruntime(m, feeds)
    values = dict(zip([o.name for o in m.graph.output], outs, strict=True))
    return {**values, **feeds}


def _fold_bn(proto, node, consts, w, b):
    readers = [n for n in proto.graph.node if node.output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type != "BatchNormalization":
        return w, b, None
    bn = readers[0]
    gamma, beta, mean, var = (consts[i].astype(np.float64) for i in bn.input[1:5])
    k = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
    w = w * k.reshape(-1, *([1] * (w.ndim - 1)))
    return w, (b - mean) * k + beta, bn.name


def _out_axis(node, w):
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    if node.op_type == "ConvTranspose":
        return 1  # [C_in, C_out/g, kH, kW]
    return w.ndim - 1  # MatMul [K, N]


def _act(x: np.ndarray, bits: int, signed: bool | None, zero_point: bool) -> ActQuant:
    unsigned = (x.min() >= 0) if signed is None else not signed
    if unsigned:
        return ActQuant(bits, False, float(max(x.max(), 1e-6)) / (2**bits - 1), 0)
    qmin, qmax = P.int_range(bits, signed=True)
    if zero_point:  # asymmetric: the range [min, max] mapped onto [qmin, qmax]
        scale = float(x.max() - x.min()) / (qmax - qmin)
        return ActQuant(bits, True, scale, int(np.clip(round(qmin - x.min() / scale), qmin, qmax)))
    return ActQuant(bits, True, float(np.abs(x).max()) / qmax, 0)


def make_layers(proto, feeds, *, wbits=8, abits=8, signed=None, zero_point=False, skip=()):
    """Max-abs per-channel weights (BN folded) and max activation scales for every layer."""
    consts, acts = _consts(proto), _activations(proto, feeds)
    nodes = {n.name: n for n in proto.graph.node}
    layers = []
    for info in quantizable_layers(proto):
        node = nodes[info["node"]]
        if node.name in skip:
            continue
        w = consts[node.input[1]].astype(np.float64)
        axis = _out_axis(node, w)
        channels = w.shape[axis] * (
            _attr(node, "group", 1) if node.op_type == "ConvTranspose" else 1
        )
        has_b = len(node.input) > 2 and node.input[2]
        b = consts[node.input[2]].astype(np.float64) if has_b else np.zeros(channels)
        w, b, bn = _fold_bn(proto, node, consts, w, b) if node.op_type == "Conv" else (w, b, None)
        wt = torch.from_numpy(w.astype(np.float32))
        s = P.symmetric_scale(wt, wbits, axis=axis)
        qmin, qmax = P.int_range(wbits, signed=True, narrow=True)
        q = P.quantize(wt, s, qmin=qmin, qmax=qmax, axis=axis).numpy().astype(np.int8)
        bias = None if node.op_type == "MatMul" else b.astype(np.float32)
        act = _act(acts[node.input[0]], abits, signed, zero_point)
        layers.append(LayerQuant(node.name, node.op_type, wbits, q, s.numpy(), axis, bias, act, bn))
    return layers


# --------------------------------------------------------------------------------------------------
# the independent simulation
# --------------------------------------------------------------------------------------------------


def _set_init(proto, name, value):
    for i, t in enumerate(proto.graph.initializer):
        if t.name == name:
            proto.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(value.astype(np.float32), name)
            )
            return
    proto.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))


def simulate(proto, layers, feeds):
    """Fake-quantized float network in torch (onnx2torch) with the layers' dequantized weights."""
    from onnx2torch.onnx_graph import OnnxGraph

    ref = onnx.ModelProto()
    ref.CopyFrom(proto)
    nodes = {n.name: n for n in ref.graph.node}
    for lq in layers:
        node = nodes[lq.node]
        _set_init(ref, node.input[1], lq.dequantized_weight())
        if lq.bias is not None:
            if len(node.input) < 3:
                node.input.append(f"{node.name}_simulated_bias")
            _set_init(ref, node.input[2], lq.bias)
        if lq.folded_bn:
            bn = nodes[lq.folded_bn]
            bn.op_type = "Identity"
            del bn.input[1:], bn.attribute[:]
    module = convert_model(ref)
    for lq in layers:
        if lq.act is None:
            continue
        a = lq.act
        qmin, qmax = a.qrange

        def hook(_m, args, a=a, qmin=qmin, qmax=qmax):
            q = P.quantize(args[0], torch.tensor(a.scale), a.zero_point, qmin=qmin, qmax=qmax)
            return (P.dequantize(q, torch.tensor(a.scale), a.zero_point), *args[1:])

        module.get_submodule(
            OnnxGraph.generate_node_name(nodes[lq.node])
        ).register_forward_pre_hook(hook)
    return run_torch(module, feeds)


def _ort(model, feeds, disabled=()):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(),
        opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled),
    )
    return sess.run(None, feeds)


def assert_matches_simulation(proto, exported, layers, feeds, *, int32_bias=False):
    """onnxruntime (all optimisations on) against the simulation.

    With a float bias, onnxruntime's WeightBiasQuantization transformer rounds the bias of layers
    whose output feeds a QuantizeLinear to int32 (see export.integer_bias), so it is switched off
    here; with ``int32_bias`` the simulation rounds the bias the same way and onnxruntime runs
    untouched.
    """
    if int32_bias:
        layers = [
            lq if lq.act is None or lq.bias is None else _replace(lq, bias=integer_bias(lq))
            for lq in layers
        ]
    ref = simulate(proto, layers, feeds)[0]
    got = _ort(exported, feeds, () if int32_bias else ["WeightBiasQuantization"])[0]
    assert got.shape == ref.shape
    err = np.abs(got - ref).max()
    assert err <= 1e-4 * max(1.0, np.abs(ref).max()), err
    return err


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


def zoo_model(opset: int = 17) -> onnx.ModelProto:
    """Shared input into Conv and grouped Conv, ConvTranspose (plain, grouped), Gemm, MatMul."""
    rng = np.random.default_rng(1)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["ya"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["yb"], name="conv_b", group=2),
        helper.make_node("Add", ["ya", "yb"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node("ConvTranspose", ["r", "wt", "bt"], ["t"], name="convt", strides=[2, 2]),
        helper.make_node(
            "ConvTranspose", ["t", "wtg"], ["tg"], name="convt_g", group=2, pads=[1, 1, 1, 1]
        ),
        helper.make_node("GlobalAveragePool", ["tg"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "b1", "c1"], ["g1"], name="gemm_t", transB=1),
        helper.make_node("Gemm", ["g1", "b0", "c0"], ["g2"], name="gemm_n"),
        helper.make_node("MatMul", ["g2", "m"], ["logits"], name="matmul"),
    ]
    inits = [
        init("wa", 6, 4, 3, 3),
        init("ba", 6),
        init("wb", 6, 2, 1, 1),
        init("wt", 6, 4, 2, 2),
        init("bt", 4),
        init("wtg", 4, 1, 3, 3),
        init("b1", 5, 2),
        init("c1", 5),
        init("b0", 5, 7),
        init("c0", 7),
        init("m", 7, 3),
    ]
    graph = helper.make_graph(
        nodes,
        "zoo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model.metadata_props.add(key="author", value="test")
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def zoo():
    return zoo_model()


def _feeds(proto, seed=0):
    feeds = random_inputs(proto, batch=4, seed=seed)
    return {k: (v * 2 - 1).astype(np.float32) for k, v in feeds.items()}  # signed inputs


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------

WIDTHS = [(8, 8), (4, 8), (4, 4)]


@pytest.mark.parametrize("wbits, abits", WIDTHS, ids=["W8A8", "W4A8", "W4A4"])
def test_small_cnn_with_bn_matches_simulation(cnn_bn, wbits, abits):
    before = cnn_bn.SerializeToString()
    feeds = random_inputs(cnn_bn, batch=4)
    layers = make_layers(cnn_bn, feeds, wbits=wbits, abits=abits)
    out = export_qdq(cnn_bn, layers)
    assert cnn_bn.SerializeToString() == before  # the input proto is untouched
    onnx.checker.check_model(out, full_check=True)
    opset = [i.version for i in out.opset_import if i.domain == ""][0]
    assert opset == (17 if (wbits, abits) == (8, 8) else 21)
    assert [v.name for v in out.graph.input] == ["input"]
    assert [v.name for v in out.graph.output] == ["logits"]
    ops = [n.op_type for n in out.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 6
    _assert_other_nodes_unchanged(cnn_bn, out, layers)
    _assert_no_float_weights(out)
    assert_matches_simulation(cnn_bn, out, layers, feeds)


def _assert_other_nodes_unchanged(orig, out, layers):
    touched = {lq.node for lq in layers} | {lq.folded_bn for lq in layers}
    new = {n.name: n for n in out.graph.node}
    for node in orig.graph.node:
        if node.name in touched:
            continue
        if node.name not in new:  # only constant plumbing of the removed BN parameters may go
            assert node.op_type in ("Identity", "Constant"), node.name
            continue
        assert new[node.name] == node, node.name
    for lq in layers:
        assert new[lq.node].op_type == lq.op
        assert lq.folded_bn is None or lq.folded_bn not in new


def _assert_no_float_weights(out):
    producers = {o: n for n in out.graph.node for o in n.output}
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            assert producers[node.input[1]].op_type == "DequantizeLinear"
    floats = [t for t in inits.values() if t.data_type == TensorProto.FLOAT and len(t.dims) > 1]
    assert not floats, [t.name for t in floats]


@pytest.mark.parametrize("wbits, abits", WIDTHS, ids=["W8A8", "W4A8", "W4A4"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_zoo_of_layer_types_matches_simulation(zoo, wbits, abits, signed):
    feeds = _feeds(zoo) if signed else random_inputs(zoo, batch=4)
    layers = make_layers(zoo, feeds, wbits=wbits, abits=abits, zero_point=signed)
    assert len(layers) == 7
    out = export_qdq(zoo, layers)
    _assert_other_nodes_unchanged(zoo, out, layers)
    assert_matches_simulation(zoo, out, layers, feeds)
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["author"] == "test"
    doc = json.loads(meta[METADATA_KEY])
    assert doc["layers"] == 7 and doc["weight_bits"] == [wbits]


@pytest.mark.parametrize("wbits, abits", [(8, 8), (4, 4)], ids=["W8A8", "W4A4"])
def test_int32_bias_is_what_onnxruntime_runs_by_default(zoo, cnn_bn, wbits, abits):
    for model in (zoo, cnn_bn):
        feeds = random_inputs(model, batch=4)
        layers = make_layers(model, feeds, wbits=wbits, abits=abits)
        out = export_qdq(model, layers, int32_bias=True)
        assert any(t.data_type == TensorProto.INT32 for t in out.graph.initializer)
        assert_matches_simulation(model, out, layers, feeds, int32_bias=True)


def test_shared_input_gets_one_pair_and_distinct_qparams_get_two(zoo):
    feeds = random_inputs(zoo, batch=2)
    layers = make_layers(zoo, feeds)
    out = export_qdq(zoo, layers)
    q_on_x = [n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    assert len(q_on_x) == 1
    a = next(lq for lq in layers if lq.node == "conv_b")
    other = ActQuant(8, False, a.act.scale * 2, 0)
    layers = [LayerQuant(**{**lq.__dict__, "act": other}) if lq is a else lq for lq in layers]
    out = export_qdq(zoo, layers)
    q_on_x = [n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    assert len(q_on_x) == 2 and len({n.name for n in q_on_x}) == 2
    assert_matches_simulation(zoo, out, layers, feeds)


def test_int4_weight_is_packed_like_primitives(zoo):
    layers = make_layers(zoo, random_inputs(zoo, batch=2), wbits=4, abits=8)
    out = export_qdq(zoo, layers)
    inits = {t.name: t for t in out.graph.initializer}
    dq = {n.output[0]: n for n in out.graph.node if n.op_type == "DequantizeLinear"}
    nodes = {n.name: n for n in out.graph.node}
    for lq in layers:
        w_dq = dq[nodes[lq.node].input[1]]
        q, scale, zp = (inits[i] for i in w_dq.input)
        assert q.data_type == zp.data_type == TensorProto.INT4
        assert _attr(w_dq, "axis", 1) == lq.weight_axis
        np.testing.assert_array_equal(numpy_helper.to_array(q).astype(np.int8), lq.weight)
        np.testing.assert_array_equal(numpy_helper.to_array(scale), lq.weight_scale)
    assert out.ir_version >= 10


def test_name_collisions_are_avoided():
    model = zoo_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "wa_quantized"))
    layers = make_layers(model, random_inputs(model, batch=2), skip={"conv_b"})
    out = export_qdq(model, layers)
    assert "wa_quantized" in {t.name for t in out.graph.initializer}  # unused, but the user's own
    assert "wa_quantized_1" in {t.name for t in out.graph.initializer}
    names = [n.name for n in out.graph.node]
    assert len(names) == len(set(names))


def test_constant_node_weight_and_low_opset_int8_upgrade():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "wv")
    nodes = [
        helper.make_node("Constant", [], ["w"], name="wconst", value=w),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", 1, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", 1, [1, 4, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    feeds = random_inputs(model, batch=1)
    layers = make_layers(model, feeds)
    out = export_qdq(model, layers)
    assert [i.version for i in out.opset_import if i.domain == ""] == [13]
    assert "wconst" not in {n.name for n in out.graph.node}
    assert_matches_simulation(model, out, layers, feeds)


def test_save_qdq_round_trips(tmp_path, cnn_bn):
    out = export_qdq(cnn_bn, make_layers(cnn_bn, random_inputs(cnn_bn, batch=2), wbits=4))
    path = tmp_path / "m.int4.onnx"
    save_qdq(out, path)
    assert read_model(path).SerializeToString() == out.SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == ["m.int4.onnx"]


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


def _replace(lq: LayerQuant, **kw) -> LayerQuant:
    return LayerQuant(**{**lq.__dict__, **kw})


@pytest.fixture(scope="module")
def zoo_layers(zoo):
    return make_layers(zoo, random_inputs(zoo, batch=2))


def _conv_a(layers):
    return next(lq for lq in layers if lq.node == "conv_a")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda lq: _replace(lq, node="nope"), "node 'nope': is not in the graph"),
        (lambda lq: _replace(lq, op="Gemm"), "node 'conv_a': is a Conv node but"),
        (
            lambda lq: _replace(lq, weight=lq.weight[:, :2], weight_scale=lq.weight_scale),
            r"node 'conv_a': the integer weight has shape \(6, 2, 3, 3\)",
        ),
        (
            lambda lq: _replace(
                lq,
                weight=np.zeros((4, 6, 3, 3), np.int8),
                weight_scale=np.ones(6, np.float32),
                weight_axis=1,
            ),
            "node 'conv_a': the integer weight has shape",
        ),
        (lambda lq: _replace(lq, bias=np.zeros(5, np.float32)), "node 'conv_a': bias has shape"),
        (lambda lq: _replace(lq, folded_bn="relu"), "not a BatchNormalization node"),
    ],
    ids=["unknown-node", "op-mismatch", "shape", "layout", "bias", "not-bn"],
)
def test_bad_layer_raises_export_error(zoo, zoo_layers, edit, match):
    layers = [edit(lq) if lq.node == "conv_a" else lq for lq in zoo_layers]
    with pytest.raises(ExportError, match=match):
        export_qdq(zoo, layers)


def test_wrong_axis_and_duplicates_raise(zoo, zoo_layers):
    gemm = next(lq for lq in zoo_layers if lq.node == "gemm_n")  # [K=5, N=7], transB=0 -> axis 1
    bad = _replace(gemm, weight=gemm.weight.reshape(7, 5), weight_axis=0)
    with pytest.raises(ExportError, match="node 'gemm_n': the integer weight has shape"):
        export_qdq(zoo, [bad])
    square = next(lq for lq in zoo_layers if lq.node == "convt")  # [6, 4, 2, 2]: axis 1 expected
    bad = _replace(square, weight_scale=np.ones(6, np.float32), weight_axis=0)
    with pytest.raises(ExportError, match="node 'convt': weight_axis is 0 .* on axis 1"):
        export_qdq(zoo, [bad])
    with pytest.raises(ExportError, match="given twice"):
        export_qdq(zoo, [_conv_a(zoo_layers), _conv_a(zoo_layers)])
    with pytest.raises(ExportError, match="no quantized layers"):
        export_qdq(zoo, [])


def test_bn_with_a_second_reader_is_refused(cnn_bn):
    model = onnx.ModelProto()
    model.CopyFrom(cnn_bn)
    conv_out = model.graph.node[2].output[0]  # /0/Conv -> BN and now also a graph output
    model.graph.output.append(helper.make_tensor_value_info(conv_out, TensorProto.FLOAT, None))
    layers = make_layers(cnn_bn, random_inputs(cnn_bn, batch=2))
    with pytest.raises(
        ExportError, match="'/0/Conv': BatchNormalization '/1/BatchNormalization' is"
    ):
        export_qdq(model, layers)


def test_all_zero_channel_gets_a_usable_scale(cnn_bn):
    feeds = random_inputs(cnn_bn, batch=4)
    layers = make_layers(cnn_bn, feeds, wbits=8, abits=8)
    conv = layers[0]  # /0/Conv, weight [8, 3, 3, 3]: silence channel 2 with an eps scale
    w, s = conv.weight.copy(), conv.weight_scale.copy()
    w[2], s[2] = 0, 1e-12
    layers[0] = _replace(conv, weight=w, weight_scale=s)
    stored = stored_weight_scale(layers[0])
    assert stored[2] == s.max() and np.array_equal(np.delete(stored, 2), np.delete(s, 2))
    out = export_qdq(cnn_bn, layers, int32_bias=True)  # 1e-12 would overflow int32
    assert_matches_simulation(cnn_bn, out, layers, feeds, int32_bias=True)


def test_int32_bias_beyond_the_range_is_clipped_like_the_student(cnn_bn):
    """A degenerate (tiny) input scale: bias levels clip at +-(2^31 - 1), as the student's do."""
    import torch

    from zerop_deploy.quant.modules import ActQuantizer, QuantConv

    feeds = random_inputs(cnn_bn, batch=4)
    layers = make_layers(cnn_bn, feeds, wbits=8, abits=8)
    conv = layers[1]  # a depthwise Conv with a folded BN, so its bias is far from 0
    act = ActQuantizer(8, signed=conv.act.signed)
    act.scale.data.fill_(1e-10)
    effective_scale = float(act.scale.detach().abs() + 1e-12)  # what the student exports
    layers[1] = lq = _replace(conv, act=ActQuant(8, conv.act.signed, effective_scale, 0))
    out = export_qdq(cnn_bn, layers, int32_bias=True)
    levels = [numpy_helper.to_array(t) for t in out.graph.initializer
              if t.data_type == TensorProto.INT32]  # fmt: skip
    assert max(np.abs(v.astype(np.int64)).max() for v in levels) == 2**31 - 1
    assert_matches_simulation(cnn_bn, out, layers, feeds, int32_bias=True)
    module = torch.nn.Conv2d(8, 8, 3, groups=8)
    student = QuantConv(module, 8, act, weight=torch.from_numpy(lq.dequantized_weight()),
                        bias=torch.from_numpy(lq.bias))  # fmt: skip
    student.weight_scale.data.copy_(torch.from_numpy(lq.weight_scale))
    np.testing.assert_array_equal(student.effective_bias().detach().numpy(), integer_bias(lq))


def test_int4_upgrade_rewrites_reducemean_and_keeps_names():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c"], ["y"], name="mean", axes=[2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", 1, ["N", 3, 5, 5])],
        [helper.make_tensor_value_info("y", 1, ["N", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = random_inputs(model, batch=3)
    layers = make_layers(model, feeds, wbits=4, abits=4)
    out = export_qdq(model, layers)
    assert [i.version for i in out.opset_import if i.domain == ""] == [21]
    mean = next(n for n in out.graph.node if n.op_type == "ReduceMean")
    assert mean.name == "mean" and len(mean.input) == 2  # axes became an input (ReduceMean-18)
    added = [n for n in out.graph.node if n.op_type == "Constant"]
    assert len(added) == 1 and added[0].name  # the converter's node gets a deterministic name
    assert_matches_simulation(model, out, layers, feeds)


def test_layer_without_act_keeps_a_float_input(zoo):
    feeds = random_inputs(zoo, batch=3)
    layers = [
        _replace(lq, act=None) if lq.node in ("conv_a", "conv_b") else lq
        for lq in make_layers(zoo, feeds, wbits=4, abits=8)
    ]
    out = export_qdq(zoo, layers)
    assert not [n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    assert {n.input[0] for n in out.graph.node if n.name in ("conv_a", "conv_b")} == {"x"}
    assert_matches_simulation(zoo, out, layers, feeds)
