"""Reading, converting and checking models, and refusing bad files with one clear error."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import one_node_model, shared_path, with_external_data
from zerop_deploy.errors import InputError, UnsupportedModelError
from zerop_deploy.load.read import read_model
from zerop_deploy.load.to_torch import load_model


def _save(model, path):
    onnx.save(model, str(path))
    return path


def _write(path, data):
    path.write_bytes(data)
    return path


def test_load_small_cnn_converts_with_parity(tmp_path, cnn_bn):
    loaded = load_model(_save(cnn_bn, tmp_path / "m.onnx"))
    assert loaded.parity is not None and loaded.parity.max_abs_diff < 1e-5
    assert loaded.parity.input_shapes == {"input": (2, 3, 16, 16)}
    assert any("BatchNorm" in type(m).__name__ for m in loaded.module.modules())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing.onnx", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d / "e.onnx", b""), "empty"),
        (lambda d: _write(d / "r.onnx", np.random.default_rng(0).bytes(4096)), "ONNX"),
    ],
    ids=["missing", "directory", "empty", "random-bytes"],
)
def test_bad_files_are_refused_with_the_path(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(InputError, match=match) as err:
        read_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_model_is_refused(tmp_path, cnn_bn):
    data = cnn_bn.SerializeToString()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.onnx"):
        read_model(p)


def test_external_data_next_to_the_model_loads(tmp_path):
    path, data = with_external_data(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(data)
    loaded = load_model(path)
    assert numpy_helper.to_array(loaded.proto.graph.initializer[0])[1, 0] == 8.0


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "link.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    path, data = with_external_data(tmp_path, location)
    (tmp_path / "outside.bin").write_bytes(data)
    os.symlink(tmp_path / "outside.bin", path.parent / "link.bin")
    with pytest.raises(InputError, match="path traversal"):
        read_model(path)


def test_external_data_missing_or_short(tmp_path):
    path, data = with_external_data(tmp_path, "weights.bin")
    with pytest.raises(InputError, match="missing"):
        read_model(path)
    (path.parent / "weights.bin").write_bytes(data[:10])
    with pytest.raises(InputError, match="too short"):
        read_model(path)


def test_model_without_inputs_is_refused(tmp_path):
    node = helper.make_node(
        "Constant", [], ["y"], value=numpy_helper.from_array(np.ones(3, np.float32))
    )
    graph = helper.make_graph(
        [node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])]
    )
    p = _save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "n.onnx"
    )
    with pytest.raises(InputError, match="no inputs"):
        read_model(p)


def custom_op_model():
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="frob_1", domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )


def test_op_nobody_can_convert_names_node_op_and_opset(tmp_path):
    p = _save(custom_op_model(), tmp_path / "c.onnx")
    with pytest.raises(UnsupportedModelError) as err:
        load_model(p)
    msg = str(err.value)
    assert "frob_1" in msg and "Frobnicate" in msg and "com.example" in msg and "opset 1" in msg


def test_dynamic_spatial_dims_are_refused_with_the_input_name(tmp_path):
    model = one_node_model("Relu", {"x": ("N", 3, "H", 8)}, None, opset=17)
    with pytest.raises(UnsupportedModelError, match="'x' dimension 2 is dynamic"):
        load_model(_save(model, tmp_path / "d.onnx"))


@pytest.mark.shared
@pytest.mark.parametrize(
    "name",
    [
        "resnet20_cifar10",
        "resnet20_cifar10_folded",
        "shufflenetv2_x0_5_cifar10",
        "shufflenetv2_x0_5_cifar10_folded",
    ],
)
def test_shared_models_convert_within_1e4(name):
    path = shared_path("models", f"{name}.onnx")
    if not path.exists():
        pytest.skip(f"{path} not found (../shared is not beside this checkout)")
    loaded = load_model(path)
    assert loaded.parity.max_abs_diff < 1e-4


def test_a_tensor_whose_data_does_not_fill_its_dims_is_refused(tmp_path, cnn_bn):
    m = onnx.ModelProto()
    m.CopyFrom(cnn_bn)
    t = next(t for t in m.graph.initializer if t.raw_data)
    t.dims[0] += 1  # found by the fuzzer: numpy failed deep inside the converter
    onnx.save(m, str(tmp_path / "m.onnx"))
    with pytest.raises(InputError, match=f"tensor '{t.name}' has dims"):
        read_model(tmp_path / "m.onnx")


def test_a_graph_listed_out_of_order_is_sorted_in_memory(tmp_path):
    nodes = [
        helper.make_node("Relu", ["a"], ["y"], name="second"),
        helper.make_node("Neg", ["x"], ["a"], name="first"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p = _save(model, tmp_path / "u.onnx")
    before = p.read_bytes()
    assert [n.name for n in read_model(p).graph.node] == ["first", "second"]
    assert p.read_bytes() == before


def _changed(model, name, change):
    """A copy of ``model`` whose initializer ``name`` went through ``change(array)`` in place."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    t = next(t for t in m.graph.initializer if t.name == name)
    a = numpy_helper.to_array(t).copy()
    change(a)
    t.CopyFrom(numpy_helper.from_array(a, name))
    return m


def _set(index, value):
    def change(a):
        a.reshape(-1)[index] = value

    return change


@pytest.mark.parametrize(
    "name, change, needle",
    [
        (
            "0.weight",
            _set(slice(0, 3), np.nan),
            "initializer '0.weight' holds 3 NaN values (of 216), read by node '/0/Conv' (Conv)",
        ),
        (
            "8.weight",
            _set(0, np.inf),
            "initializer '8.weight' holds 1 infinite value (of 32), the input 'B' of node "
            "'/8/Gemm' (Gemm)",
        ),
        (
            "1.running_mean",
            _set(1, -np.inf),
            "initializer '1.running_mean' holds 1 infinite value (of 8), the input 'input_mean' of "
            "node '/1/BatchNormalization' (BatchNormalization)",
        ),
        (
            "1.running_var",
            _set(slice(0, 2), -0.5),
            "initializer '1.running_var' holds 2 negative values (of 8), the variance input "
            "'input_var' of node '/1/BatchNormalization' (BatchNormalization)",
        ),
    ],
    ids=["nan-conv-weight", "inf-gemm-weight", "inf-bn-mean", "negative-bn-var"],
)
def test_weights_that_are_not_finite_are_refused_at_load(tmp_path, cnn_bn, name, change, needle):
    p = _save(_changed(cnn_bn, name, change), tmp_path / "w.onnx")
    with pytest.raises(InputError) as err:
        load_model(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: ") and needle in msg and "\n" not in msg
    assert msg.endswith("re-export the model from a checkpoint with finite weights")


def _graph(nodes, inits=(), x=(1, 3, 4, 4), y=(1, 3, 4, 4)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y))],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_nan_in_any_constant_is_refused_naming_the_node_that_reads_it(tmp_path):
    nan = numpy_helper.from_array(np.array([0.0, np.nan, 1.0], np.float32).reshape(1, 3, 1, 1))
    model = _graph(
        [
            helper.make_node("Constant", [], ["c"], name="offsets", value=nan),
            helper.make_node("Add", ["x", "c"], ["y"], name="add_offsets"),
        ]
    )
    with pytest.raises(InputError, match="Constant node 'offsets' holds 1 NaN value") as err:
        load_model(_save(model, tmp_path / "c.onnx"))
    assert "read by node 'add_offsets' (Add)" in str(err.value)


def test_an_infinite_weight_is_found_through_a_transpose(tmp_path):
    w = np.ones((4, 8), np.float32)
    w[2, 3] = np.inf
    model = _graph(
        [
            helper.make_node("Transpose", ["w"], ["wt"], name="wt", perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
        ],
        [("w", w)],
        x=(2, 8),
        y=(2, 4),
    )
    with pytest.raises(InputError, match="the input 'B' of node 'mm' \\(MatMul\\)"):
        load_model(_save(model, tmp_path / "t.onnx"))


def test_infinite_bounds_and_masks_are_legitimate(tmp_path):
    # Clip without a lower bound and a running-maximum start value: infinities by design
    minus_inf = numpy_helper.from_array(np.full((1, 1, 1, 4), -np.inf, np.float32))
    model = _graph(
        [
            helper.make_node("Clip", ["x", "lo", "hi"], ["a"], name="clip"),
            helper.make_node("Constant", [], ["start"], name="start", value=minus_inf),
            helper.make_node("Max", ["a", "start"], ["y"], name="max"),
        ],
        [("lo", np.float32(-np.inf)), ("hi", np.float32(6.0))],
    )
    loaded = load_model(_save(model, tmp_path / "ok.onnx"))
    assert loaded.parity is not None and loaded.parity.max_abs_diff < 1e-6
