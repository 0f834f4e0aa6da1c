"""One-node models for every converter in zerop_deploy/convert: onnxruntime vs PyTorch."""

import numpy as np
import onnx2torch
import pytest

from tests.helpers import assert_ort_matches_torch, one_node_model

REDUCE_OPS = ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceProd", "ReduceSumSquare"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [[2, 3], [-1], [1]])
def test_reduce18_constant_axes(op, keepdims, axes):
    model = one_node_model(
        op,
        {"x": (2, 3, 4, 5)},
        None,
        opset=18,
        initializers={"axes": np.array(axes, dtype=np.int64)},
        attrs={"keepdims": keepdims},
    )
    assert_ort_matches_torch(model)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce18_without_axes_reduces_everything(op):
    model = one_node_model(op, {"x": (2, 3, 4)}, None, opset=18, attrs={"keepdims": 0})
    assert_ort_matches_torch(model)


def test_reduce18_noop_with_empty_axes():
    model = one_node_model(
        "ReduceMean", {"x": (2, 3)}, None, opset=18, attrs={"noop_with_empty_axes": 1}
    )
    assert_ort_matches_torch(model)


def test_converted_module_is_named_after_the_onnx_node():
    from zerop_deploy.load.to_torch import convert_model

    model = one_node_model(
        "ReduceMean",
        {"x": (2, 3, 4, 5)},
        None,
        opset=18,
        initializers={"axes": np.array([2, 3], dtype=np.int64)},
    )
    names = dict(convert_model(model).named_modules())
    assert "reducemean_node" in names


# --------------------------------------------------------------------------------------------------
# helpers for ops with several outputs
# --------------------------------------------------------------------------------------------------


def _multi_output_model(op, x_shape, n_outputs, *, opset, initializers=None, attrs=None):
    """One-node model ``op(x, *initializers)`` with ``n_outputs`` float outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers = initializers or {}
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(
        op, ["x", *initializers], outs, name=f"{op.lower()}_node", **(attrs or {})
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        [numpy_helper.from_array(v, n) for n, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 9
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    del model.graph.output[:]
    for v in inferred.graph.output:  # Dropout-7's mask is not inferred: it has x's shape
        has_shape = v.type.tensor_type.HasField("shape")
        model.graph.output.append(
            v if has_shape else helper.make_tensor_value_info(v.name, TensorProto.FLOAT, x_shape)
        )
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------------------------------
# Reshape-19/21
# --------------------------------------------------------------------------------------------------


RESHAPES = [[2, -1], [-1], [2, 3, 2, 2]]
ZERO_COPIES = [[0, 12], [0, -1, 4]]  # allowzero=0 only: with 1 the output would be empty


@pytest.mark.parametrize("opset", [19, 21])
@pytest.mark.parametrize(
    ("allowzero", "shape"),
    [(0, s) for s in RESHAPES + ZERO_COPIES] + [(1, s) for s in RESHAPES],
)
def test_reshape19(opset, allowzero, shape):
    model = one_node_model(
        "Reshape",
        {"x": (2, 3, 4)},
        None,
        opset=opset,
        initializers={"shape": np.array(shape, dtype=np.int64)},
        attrs={"allowzero": allowzero},
    )
    assert_ort_matches_torch(model)


def test_reshape19_allowzero_keeps_literal_zero():
    import torch

    from zerop_deploy.load.convert.convert_reshape import OnnxReshapeAllowZero

    x = torch.zeros(0, 3)
    assert OnnxReshapeAllowZero(True)(x, torch.tensor([3, 0])).shape == (3, 0)
    assert OnnxReshapeAllowZero(False)(torch.zeros(2, 3), torch.tensor([0, 3])).shape == (2, 3)


def test_reshape19_unknown_allowzero_names_the_attribute():
    from zerop_deploy.errors import UnsupportedModelError
    from zerop_deploy.load.to_torch import convert_model

    model = one_node_model(
        "Reshape",
        {"x": (2, 3)},
        (6,),
        opset=19,
        initializers={"shape": np.array([-1], dtype=np.int64)},
        attrs={"allowzero": 2},
    )
    with pytest.raises(UnsupportedModelError, match="allowzero"):
        convert_model(model)


# --------------------------------------------------------------------------------------------------
# Split-18
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axis", "num_outputs"),
    [((2, 6, 3), 1, 2), ((2, 7, 3), 1, 3), ((2, 5, 4), -1, 2), ((4, 3), 0, 4)],
)
def test_split18_num_outputs(shape, axis, num_outputs):
    model = _multi_output_model(
        "Split", shape, num_outputs, opset=18, attrs={"axis": axis, "num_outputs": num_outputs}
    )
    assert_ort_matches_torch(model)


@pytest.mark.parametrize(("axis", "split"), [(1, [1, 5]), (1, [2, 2, 2]), (0, [1, 1])])
def test_split18_split_input(axis, split):
    model = _multi_output_model(
        "Split",
        (2, 6),
        len(split),
        opset=18,
        attrs={"axis": axis},
        initializers={"split": np.array(split, dtype=np.int64)},
    )
    assert_ort_matches_torch(model)


def test_split_sizes_follow_the_onnx_rule():
    from zerop_deploy.load.convert.convert_split import split_sizes

    assert split_sizes(7, 3, uneven=True) == [3, 3, 1]
    assert split_sizes(6, 3, uneven=False) == [2, 2, 2]
    with pytest.raises(ValueError, match="cannot split"):
        split_sizes(7, 3, uneven=False)


# --------------------------------------------------------------------------------------------------
# Gelu-20, AveragePool-19/22, Dropout-7
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu20(approximate):
    model = one_node_model(
        "Gelu", {"x": (2, 3, 4)}, None, opset=20, attrs={"approximate": approximate}
    )
    assert_ort_matches_torch(model)


@pytest.mark.parametrize("opset", [19, 22])
@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [2, 2], "strides": [2, 2]},
        {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
        {"kernel_shape": [2, 2], "strides": [2, 2], "dilations": [1, 1]},
    ],
)
def test_averagepool19(opset, attrs):
    model = one_node_model("AveragePool", {"x": (2, 3, 9, 9)}, None, opset=opset, attrs=attrs)
    assert_ort_matches_torch(model)


def test_averagepool19_dilations_are_refused_by_name():
    from zerop_deploy.errors import UnsupportedModelError
    from zerop_deploy.load.to_torch import convert_model

    model = one_node_model(
        "AveragePool",
        {"x": (1, 1, 8, 8)},
        None,
        opset=19,
        attrs={"kernel_shape": [2, 2], "dilations": [2, 2]},
    )
    with pytest.raises(UnsupportedModelError, match="dilations"):
        convert_model(model)


@pytest.mark.parametrize("ratio", [0.5, 0.1])
@pytest.mark.parametrize("with_mask", [False, True])
def test_dropout7(ratio, with_mask):
    model = _multi_output_model(
        "Dropout", (2, 3, 4), 2 if with_mask else 1, opset=9, attrs={"ratio": ratio}
    )
    assert_ort_matches_torch(model)


# --------------------------------------------------------------------------------------------------
# fold pass: weights computed by Identity / ConstantOfShape
# --------------------------------------------------------------------------------------------------


def _conv_with_computed_weights(ir_version=8, opset=13):
    """Two Convs: one weight through Identity (TorchScript dedup), one from ConstantOfShape."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["w"], ["w_copy"], name="dedup"),
        helper.make_node("Constant", [], ["w2_shape"], name="shape_const",
                         value=numpy_helper.from_array(np.array([4, 4, 1, 1], dtype=np.int64))),
        helper.make_node("ConstantOfShape", ["w2_shape"], ["w2"], name="make_w2",
                         value=numpy_helper.from_array(np.array([0.25], dtype=np.float32))),
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w_copy"], ["b"], name="conv_b", pads=[0, 0, 0, 0]),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="conv_c"),
    ]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 6, 6))]
    if ir_version < 4:  # the IR 3 convention: initializers are also graph inputs
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, w.shape))
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def _with_3_input_channels(model):
    """conv_b reads 4 channels with a 3-channel weight: widen w to (4, 4, 3, 3) via a new tensor."""
    from onnx import numpy_helper

    w = np.random.default_rng(1).standard_normal((4, 4, 3, 3)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "w4"))
    model.graph.node[0].input[0] = "w4"
    return model


@pytest.mark.parametrize(("ir_version", "opset"), [(8, 13), (3, 9)])
def test_fold_constant_weights_makes_computed_weights_convertible(ir_version, opset):
    from zerop_deploy.load.convert.fold import fold_constant_weights

    model = _with_3_input_channels(_conv_with_computed_weights(ir_version, opset))
    with pytest.raises(KeyError):  # onnx2torch alone reads Conv weights from initializers only
        onnx2torch.convert(model)
    assert_ort_matches_torch(model)  # convert_model runs the pre-pass itself
    folded = fold_constant_weights(model)
    assert {n.name for n in folded.graph.node} == {"shape_const", "conv_a", "conv_b", "conv_c"}
    assert {"w_copy", "w2"} <= {t.name for t in folded.graph.initializer}
    assert len(model.graph.node) == 6  # the input is not modified
    assert_ort_matches_torch(folded)


def test_fold_constant_weights_leaves_other_graphs_alone():
    from zerop_deploy.load.convert.fold import fold_constant_weights

    model = one_node_model("Identity", {"x": (2, 3)}, (2, 3), opset=13)
    assert fold_constant_weights(model) is model


@pytest.mark.parametrize("opset", [14, 18])
def test_prepare_drops_inert_allowzero_for_onnx2torch_reshape14(opset):
    from zerop_deploy.load.convert.prepare import prepare_for_onnx2torch

    model = one_node_model(
        "Reshape",
        {"x": (2, 3, 4)},
        (2, 12),
        opset=opset,
        initializers={"shape": np.array([2, -1], dtype=np.int64)},
        attrs={"allowzero": 1},
    )
    with pytest.raises(NotImplementedError, match="allowzero"):
        onnx2torch.convert(model)  # onnx2torch's Reshape-14 refuses allowzero=1
    assert_ort_matches_torch(model)  # convert_model runs the pre-pass itself
    prepared = prepare_for_onnx2torch(model)
    assert prepared.graph.node[0].attribute[0].i == 0
    assert model.graph.node[0].attribute[0].i == 1  # the input is not modified
    assert_ort_matches_torch(prepared)


def test_prepare_keeps_allowzero_when_the_shape_has_a_zero():
    from zerop_deploy.load.convert.prepare import prepare_for_onnx2torch

    model = one_node_model(
        "Reshape",
        {"x": (2, 3)},
        (2, 3),
        opset=18,
        initializers={"shape": np.array([0, 3], dtype=np.int64)},
        attrs={"allowzero": 0},
    )
    assert prepare_for_onnx2torch(model) is model


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [0, 3, 1, 2], [1, 0, 2, 3]])
def test_transpose21(perm):
    model = one_node_model("Transpose", {"x": (2, 3, 4, 5)}, None, opset=21, attrs={"perm": perm})
    assert_ort_matches_torch(model)


# --------------------------------------------------------------------------------------------------
# end to end: torch's default (dynamo) exporter
# --------------------------------------------------------------------------------------------------


def test_default_exporter_cnn_converts(tmp_path):
    """A tiny CNN through torch's default exporter (opset 18+: Reshape-19, Split-18...)."""
    pytest.importorskip("onnxscript", reason="torch's default ONNX exporter needs onnxscript")
    import contextlib
    import io

    import onnx
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(4 * 4 * 4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.pool(torch.relu(self.bn(self.conv(x)))).chunk(2, dim=1)
            return self.fc(nn.functional.gelu(a * b).view(x.shape[0], -1))

    torch.manual_seed(0)
    net = Tiny().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "tiny.onnx"
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(net, (torch.rand(2, 3, 8, 8),), str(path), dynamo=True)
    model = onnx.load(str(path))
    assert {"Split", "Reshape"} <= {n.op_type for n in model.graph.node}
    assert_ort_matches_torch(model, atol=1e-5)


def test_reducel2_18_gradient_is_finite_at_an_all_zero_row():
    """Fine-tuning back-propagates through it; a zero row (padded window) must not make NaN."""
    import torch

    from zerop_deploy.load.to_torch import convert_model

    model = one_node_model("ReduceL2", {"x": (2, 3)}, None, opset=18,
                           initializers={"axes": np.array([1], dtype=np.int64)})  # fmt: skip
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], requires_grad=True)
    convert_model(model)(x).sum().backward()
    assert torch.isfinite(x.grad).all()
