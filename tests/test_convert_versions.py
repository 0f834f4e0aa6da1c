"""Converters for the op versions the TorchScript exporter writes at its newest opset (19-20).

Each builds a small model, converts it and compares onnxruntime with PyTorch (or checks that a new
option is refused by name).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import assert_ort_matches_torch, one_node_model
from zerop_deploy.errors import UnsupportedModelError
from zerop_deploy.load.to_torch import convert_model


def _model(nodes, inits, x_shape, opset=20) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    if not model.graph.output[0].type.tensor_type.HasField("shape"):
        model.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "d0"
        del model.graph.output[0].type.tensor_type.shape.dim[:]
    onnx.checker.check_model(model)
    return model


def test_constant_cast_shape_constantofshape_identity_equal_at_opset_20():
    """The ops of a ReLU6 bound and an attention mask, as the TorchScript exporter writes them."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.5])
    nodes = [
        helper.make_node("Constant", [], ["c"], value=one),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node(
            "ConstantOfShape",
            ["s"],
            ["ones"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0]),
        ),  # fmt: skip
        helper.make_node("Identity", ["ones"], ["twos"]),
        helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT),
        helper.make_node("Equal", ["xc", "c"], ["eq"]),
        helper.make_node("Mul", ["xc", "twos"], ["m"]),
        helper.make_node("Where", ["eq", "c", "m"], ["y"]),
    ]
    assert_ort_matches_torch(_model(nodes, {}, [2, 3, 4]))


@pytest.mark.parametrize("opset", [18, 19])
def test_pad18_19_constant_and_reflect(opset):
    for mode in ("constant", "reflect"):
        model = one_node_model(
            "Pad", {"x": (1, 2, 5, 5)}, None, opset=opset, attrs={"mode": mode},
            initializers={"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)},
        )  # fmt: skip
        assert_ort_matches_torch(model)


def test_pad19_wrap_is_refused_by_name():
    model = one_node_model(
        "Pad", {"x": (1, 2, 5, 5)}, None, opset=19, attrs={"mode": "wrap"},
        initializers={"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)},
    )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="wrap"):
        convert_model(model)


def test_scatternd18():
    nodes = [helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"])]
    inits = {"idx": np.array([[1], [3]], np.int64), "upd": np.ones((2, 5), np.float32) * 7}
    assert_ort_matches_torch(_model(nodes, inits, [4, 5], opset=18))


@pytest.mark.parametrize("opset", [18, 19])
def test_resize18_19_nearest(opset):
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")]
    inits = {"scales": np.array([1, 1, 2, 2], np.float32)}
    assert_ort_matches_torch(_model(nodes, inits, [1, 2, 3, 3], opset=opset))


def test_resize18_antialias_is_refused_by_name():
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1)]
    inits = {"scales": np.array([1, 1, 0.5, 0.5], np.float32)}
    with pytest.raises(UnsupportedModelError, match="antialias"):
        convert_model(_model(nodes, inits, [1, 2, 8, 8], opset=18))


def test_layernorm_after_a_reshape_of_unknown_shape():
    """Swin/MaxViT window attention: the LayerNorm input's shape is computed at run time."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("LayerNormalization", ["r", "scale", "bias"], ["y"], axis=-1),
    ]
    inits = {"scale": rng.standard_normal(6).astype(np.float32),
             "bias": rng.standard_normal(6).astype(np.float32)}  # fmt: skip
    model = _model(nodes, inits, [2, 4, 6], opset=17)
    inferred = onnx.shape_inference.infer_shapes(model)
    r = next(v for v in inferred.graph.value_info if v.name == "r")
    assert not any(d.dim_value for d in r.type.tensor_type.shape.dim)  # onnx2torch's failing case
    assert_ort_matches_torch(model)


@pytest.mark.parametrize("which", ["max", "min", "both"])
def test_clip_with_bounds_computed_at_run_time(which):
    """Swin-V2 clamps its logit scale with a bound computed by a Log node (onnx2torch refuses)."""
    nodes = [
        helper.make_node("Log", ["hundred"], ["high"]),
        helper.make_node("Neg", ["high"], ["low"]),
        helper.make_node("Clip", ["x", "low" if which != "max" else "",
                                  "high" if which != "min" else ""], ["y"]),
    ]  # fmt: skip
    model = _model(nodes, {"hundred": np.array(100.0, np.float32)}, [2, 3, 4, 4], opset=13)
    model.ir_version = 8
    x = np.random.default_rng(0).normal(0, 8, (2, 3, 4, 4)).astype(np.float32)
    assert_ort_matches_torch(model)
    module = convert_model(model)
    import torch

    y = module(torch.from_numpy(x)).numpy()
    low = -np.log(100.0) if which != "max" else None
    high = np.log(100.0) if which != "min" else None
    assert np.allclose(y, np.clip(x, low, high), atol=1e-6)


def test_dynamic_clip_number_bounds_match_tensor_bounds():
    """0-d CPU bounds take the number path: values and gradients equal clamping by tensors.

    Inputs exactly on a bound get half the gradient there (``max(min(x, hi), lo)``), as with
    tensor bounds; NaN stays NaN.
    """
    import torch

    from zerop_deploy.load.convert.convert_clip import DynamicClip

    low, high = torch.tensor(0.0), torch.tensor(6.0)
    clip = DynamicClip(True, True)
    x = torch.tensor([-1.0, 0.0, 3.0, 6.0, 7.5, float("nan")], requires_grad=True)
    y = clip(x, low, high)
    assert y.grad_fn is not None and "NumberClamp" in type(y.grad_fn).__name__
    ref_x = x.detach().clone().requires_grad_(True)
    ref = torch.clamp(ref_x, low, high)
    assert torch.equal(y.detach().nan_to_num(-9), ref.detach().nan_to_num(-9))
    g = torch.tensor([1.0, -2.0, 3.0, 4.0, 5.0, 0.0])
    y.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad, ref_x.grad)
    assert x.grad.tolist() == [0.0, -1.0, 3.0, 2.0, 0.0, 0.0]
    # integer input and bounds that are not 0-d keep clamping by tensors
    assert clip(torch.tensor([-3, 0, 9]), low, high).tolist() == [0, 0, 6]
    assert clip(x.detach(), low.reshape(1), high).grad_fn is None


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_number_clamp_native_gradient_equals_the_torch_one(channels_last, monkeypatch):
    """The one-pass kernel (kernels/core/clamp.cpp): bounds, ties, NaN, a tail, other layouts."""
    import torch

    from zerop_deploy.load.convert import convert_clip
    from zerop_deploy.native_tensors import library

    if library("clamp_backward") is None:
        pytest.skip("the native kernels are not built")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 67, 71, generator=gen) * 4 + 3  # 71,355 values: 3 blocks and a tail
    x = x.round()  # many values exactly on 0 and 6
    x.view(-1)[::997] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(3, 5, 67, 71, generator=gen)  # contiguous: another layout than x's
    grads = {}
    for native in (True, False):
        monkeypatch.setattr(convert_clip, "NATIVE", native)
        xi = x.detach().clone().requires_grad_(True)
        convert_clip._NumberClamp.apply(xi, 0.0, 6.0).backward(g)
        grads[native] = xi.grad
    nan = x.isnan()
    # torch's own path is not consistent on NaN (its vectorised hardtanh_backward gives 0, its
    # scalar tail and clamping by tensors give the gradient); the kernel follows clamping by tensors
    assert torch.equal(grads[True][~nan], grads[False][~nan])
    assert torch.equal(grads[True][nan], g[nan])
    assert (x == 0).any() and (x == 6).any()
