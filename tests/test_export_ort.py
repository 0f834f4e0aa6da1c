"""Exports that stock onnxruntime must load with its default session options (ORT_ENABLE_ALL).

Each test here pins one onnxruntime limit that the exporter works around; each fails without the
workaround (the onnxruntime session refuses the file, or its optimisers change the numbers).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.test_export import assert_matches_simulation, make_layers
from zerop_deploy.export.qdq import export_qdq
from zerop_deploy.load.parity import random_inputs


def clip_relu_model() -> onnx.ModelProto:
    """Conv -> ReLU6 (Clip 0..6) -> Conv -> Relu -> Conv -> Clip(-1, 1) -> Conv -> pool -> Gemm."""
    rng = np.random.default_rng(3)

    def init(name, *shape, scale=0.5):
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        return numpy_helper.from_array(values, name)

    consts = [
        numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("zero", 0.0), ("six", 6.0), ("m_one", -1.0), ("one", 1.0))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c0", "zero", "six"], ["r0"], name="relu6"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Clip", ["c2", "m_one", "one"], ["r2"], name="hardtanh"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        init("w0", 8, 3, 3, 3, scale=1.5),
        init("b0", 8),
        init("w1", 8, 8, 1, 1),
        init("b1", 8),
        init("w2", 8, 8, 1, 1),
        init("b2", 8),
        init("w3", 8, 8, 1, 1),
        init("b3", 8),
        init("wg", 5, 8),
        init("bg", 5),
        *consts,
    ]
    graph = helper.make_graph(
        nodes,
        "clip_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _default_session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _reference(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    """The ONNX semantics (no fusion, float DequantizeLinear -> op)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("wbits, abits", [(4, 4), (8, 4)], ids=["W4A4", "W8A4"])
def test_4bit_activations_after_clip_and_relu_load_and_match(wbits, abits):
    """ClipQuantFusion refuses a UINT4/INT4 zero-point input; ReluQuantFusion misreads INT4 ones."""
    model = clip_relu_model()
    feeds = {"x": (random_inputs(model, batch=6, seed=1)["x"] * 4 - 2).astype(np.float32)}
    layers = make_layers(model, feeds, wbits=wbits, abits=abits)
    signed = {lq.node: lq.act.signed for lq in layers}
    assert signed == {"conv0": True, "conv1": False, "conv2": False, "conv3": True, "fc": True}
    out = export_qdq(model, layers)
    _default_session(out)  # onnxruntime 1.32 raised here: clip_quantizelinear.cc ... of 21
    assert_matches_simulation(model, out, layers, feeds)
    four_bit_zero_points = [
        t.name for t in out.graph.initializer
        if t.data_type in (TensorProto.UINT4, TensorProto.INT4) and t.name.endswith("zero_point")
        and len(t.dims) == 0
    ]  # fmt: skip
    assert four_bit_zero_points == []
    quantize = [n for n in out.graph.node if n.op_type == "QuantizeLinear"]
    assert {helper.get_attribute_value(a) for n in quantize for a in n.attribute} == {
        TensorProto.UINT4,
        TensorProto.INT4,
    }


def test_int4_zero_point_input_after_relu_is_what_onnxruntime_misreads():
    """The limit itself: Relu -> QuantizeLinear(INT4 zero point 0) loses the Relu in onnxruntime.

    If a later onnxruntime fixes this, the workaround in export.py may go; this test then fails
    and says so.
    """
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4, 1, 1)).astype(
        np.float32), "w")  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
        helper.make_node("Conv", ["d", "w"], ["y"]),
    ]
    inits = [w, numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             helper.make_tensor("zp", TensorProto.INT4, [], [0])]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 3, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    x = {"x": np.random.default_rng(1).standard_normal((2, 4, 3, 3)).astype(np.float32) * 3}
    ref = _reference(model, x)
    got = _default_session(model).run(None, x)[0]
    assert np.abs(got - ref).max() > 0.1, "onnxruntime now keeps the Relu: drop the workaround?"


def _u8s8_model(levels: np.ndarray, op: str) -> onnx.ModelProto:
    """Q/DQ(x) -> Conv 1x1 or MatMul with int8 weight ``levels`` (zero point 0) -> Q/DQ(y)."""
    k, n = levels.shape
    w = levels if op == "MatMul" else levels.T.reshape(n, k, 1, 1)
    axis = 1 if op == "MatMul" else 0
    x_shape, y_shape = (["N", k], ["N", n]) if op == "MatMul" else (["N", k, 2, 2], ["N", n, 2, 2])
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.uint8), "xz"),
        numpy_helper.from_array(w.astype(np.int8), "wq"),
        numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(n, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.5, np.float32), "ys"),
        numpy_helper.from_array(np.array(128, np.uint8), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dqw", axis=axis),
        helper.make_node(op, ["xd", "wd"], ["y"], name="layer"),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"], name="qy"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"], name="dqy"),
    ]
    graph = helper.make_graph(
        nodes,
        "u8s8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _saturating_case(op: str):
    """Weights of 127 next to each other and inputs of 255: each product pair is 64,770."""
    k = 64
    levels = np.full((k, 8), 127, np.int8)
    levels[::3] = -127
    x = np.ones((3, k), np.float32) if op == "MatMul" else np.ones((3, k, 2, 2), np.float32)
    return _u8s8_model(levels, op), {"x": x}


@pytest.mark.parametrize("op", ["MatMul", "Conv"])
def test_int8_weights_beyond_64_run_exactly_on_the_integer_kernels(op, tmp_path):
    """Without VNNI, u8s8 kernels add product pairs in int16 (vpmaddubsw) and saturate."""
    from zerop_deploy.export.saturation import store_weights_unsaturated

    model, feeds = _saturating_case(op)
    ref = _reference(model, feeds)
    assert store_weights_unsaturated(model) == ["dqw"]
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["wq"].data_type == inits["wz"].data_type == TensorProto.UINT8
    np.testing.assert_array_equal(_reference(model, feeds), ref)  # the same values
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, feeds)[0], ref)
    ops = {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}
    assert ops & {"QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat"}, ops  # still integer


def test_int8_weights_within_64_and_shared_tensors_are_left_alone():
    from zerop_deploy.export.saturation import store_weights_unsaturated

    levels = np.random.default_rng(0).integers(-64, 65, (16, 4)).astype(np.int8)
    model = _u8s8_model(levels, "MatMul")
    assert store_weights_unsaturated(model) == []
    model, _ = _saturating_case("MatMul")
    model.graph.output.append(helper.make_tensor_value_info("wq", TensorProto.INT8, None))
    model.graph.node.append(helper.make_node("Identity", ["wz"], ["wz_copy"], name="other"))
    model.graph.output.append(helper.make_tensor_value_info("wz_copy", TensorProto.INT8, None))
    store_weights_unsaturated(model)
    inits = {t.name: t for t in model.graph.initializer}
    # a graph output and another node read them: kept as they were, the weight gets copies
    assert inits["wq"].data_type == inits["wz"].data_type == TensorProto.INT8
    dq = next(n for n in model.graph.node if n.name == "dqw")
    assert dq.input[0] != "wq" and dq.input[2] != "wz"
    assert inits[dq.input[0]].data_type == inits[dq.input[2]].data_type == TensorProto.UINT8


def test_onnxruntime_u8s8_still_saturates_without_vnni():
    """Canary: the int8 file is wrong on such a CPU (drop the workaround once it is not)."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx2" not in flags or "avx512_vnni" in flags or "avx_vnni" in flags:
        pytest.skip(
            "the CPU has VNNI (or no AVX2): onnxruntime's u8s8 kernels do not saturate here"
        )
    model, feeds = _saturating_case("MatMul")
    got = _default_session(model).run(None, feeds)[0]
    assert np.abs(got - _reference(model, feeds)).max() > 1.0
