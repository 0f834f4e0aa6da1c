"""One-node models for every converter in zerop_deploy/convert: onnxruntime vs PyTorch."""

import numpy as np
import pytest

from tests.helpers import assert_ort_matches_torch, one_node_model

REDUCE_OPS = ["ReduceMean", "ReduceMax", "ReduceMin"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [[2, 3], [-1], [1]])
def test_reduce18_constant_axes(op, keepdims, axes):
    model = one_node_model(
        op, {"x": (2, 3, 4, 5)}, None, opset=18,
        initializers={"axes": np.array(axes, dtype=np.int64)}, attrs={"keepdims": keepdims},
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
    from zerop_deploy.load import convert_model

    model = one_node_model(
        "ReduceMean", {"x": (2, 3, 4, 5)}, None, opset=18,
        initializers={"axes": np.array([2, 3], dtype=np.int64)},
    )
    names = dict(convert_model(model).named_modules())
    assert "reducemean_node" in names
