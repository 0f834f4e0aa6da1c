"""The inspect document: graph facts, quantizable layers, BN folding and the conversion check."""

import numpy as np
import onnx
import pytest

from tests.helpers import one_node_model, shared_path
from zerop_deploy.cli.format import format_summary
from zerop_deploy.load.summary import inspect_model, quantizable_layers, summarize

DESIGN_KEYS = {
    "path",
    "opset",
    "ir_version",
    "inputs",
    "outputs",
    "nodes",
    "op_counts",
    "batchnorm_nodes",
    "bn_folded",
    "quantizable",
    "parameters",
    "conversion",
}


def test_summary_of_bn_model(tmp_path, cnn_bn):
    p = tmp_path / "m.onnx"
    onnx.save(cnn_bn, str(p))
    doc = inspect_model(p)
    assert set(doc) == DESIGN_KEYS | {"float_nodes"}
    assert doc["float_nodes"] == []
    assert doc["opset"] == 17 and doc["batchnorm_nodes"] == 2 and doc["bn_folded"] is False
    assert doc["inputs"] == [{"name": "input", "shape": ["N", 3, 16, 16], "dtype": "float"}]
    assert [q["op"] for q in doc["quantizable"]] == ["Conv", "Conv", "Gemm"]
    assert doc["quantizable"][1]["weight_shape"] == [8, 1, 3, 3]  # depthwise
    # conv weights 3*8*9 + 8*9; BN: the exporter stores the two identical gamma (ones) and beta
    # (zeros) vectors once each, so 2 x 8 + 2 x (mean, var) x 8; Linear 8*4 + 4
    assert doc["parameters"] == 216 + 72 + 16 + 32 + 36
    assert doc["conversion"]["ok"] and doc["conversion"]["max_abs_diff"] < 1e-5
    assert doc["conversion"]["error"] is None


def test_folded_model_reports_bn_folded(cnn_folded):
    doc = summarize(cnn_folded)
    assert doc["batchnorm_nodes"] == 0 and doc["bn_folded"] is True


def test_no_conv_bias_means_not_folded():
    model = one_node_model("Relu", {"x": (1, 3)}, (1, 3), opset=17)
    assert summarize(model)["bn_folded"] is False


def test_matmul_with_constant_weight_is_quantizable_but_not_activation_matmul():
    w = np.ones((4, 5), np.float32)
    const = one_node_model("MatMul", {"x": (2, 4)}, (2, 5), opset=17, initializers={"w": w})
    dyn = one_node_model("MatMul", {"a": (2, 4), "b": (4, 5)}, (2, 5), opset=17)
    assert quantizable_layers(const) == [
        {"node": "matmul_node", "op": "MatMul", "weight_shape": [4, 5]}
    ]
    assert quantizable_layers(dyn) == []


def test_human_table_mentions_the_essentials(tmp_path, cnn_bn):
    p = tmp_path / "m.onnx"
    onnx.save(cnn_bn, str(p))
    text = format_summary(inspect_model(p))
    for part in (
        "opset / IR",
        "17 / ",
        "BatchNormalization  2",
        "quantizable layers  3",
        "ok (max",
    ):
        assert part in text


@pytest.mark.shared
@pytest.mark.parametrize(
    "name, bn, folded",
    [
        ("resnet20_cifar10", 19, False),
        ("resnet20_cifar10_folded", 0, True),
        ("shufflenetv2_x0_5_cifar10", 56, False),
        ("shufflenetv2_x0_5_cifar10_folded", 0, True),
    ],
)
def test_shared_models(name, bn, folded):
    path = shared_path("models", f"{name}.onnx")
    if not path.exists():
        pytest.skip(f"{path} not found (../shared is not beside this checkout)")
    doc = inspect_model(path)
    assert doc["batchnorm_nodes"] == bn and doc["bn_folded"] is folded
    assert doc["conversion"]["ok"] and doc["conversion"]["max_abs_diff"] < 1e-4


def test_float_nodes_name_attention_products_and_computed_weights():
    from onnx import TensorProto, helper, numpy_helper

    from zerop_deploy.cli.format import format_summary
    from zerop_deploy.load.summary import summarize
    from zerop_deploy.quant.graph import float_nodes

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["q"], name="proj"),  # quantized: constant weight
        helper.make_node("Transpose", ["q"], ["kt"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Einsum", ["scores", "q"], ["e"], name="mix", equation="ij,jk->ik"),
        helper.make_node("Identity", ["w"], ["w_copy"], name="copy"),
        helper.make_node("MatMul", ["e", "w_copy"], ["y"], name="out"),  # weight behind Identity
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    found = {f["node"]: f for f in float_nodes(model)}
    assert set(found) == {"scores", "mix", "out"}  # every compute node: quantized or listed
    assert "through an Identity node" in found["out"]["reason"]
    assert [q["node"] for q in quantizable_layers(model)] == ["proj"]
    assert "both operands are activations" in found["scores"]["reason"]
    assert "Einsum" in found["mix"]["reason"]
    text = format_summary({**summarize(model, "m.onnx"), "conversion": {"ok": True,
                                                                        "max_abs_diff": 0.0}})
    assert "kept in float (3 compute nodes)" in text and "scores (MatMul)" in text
