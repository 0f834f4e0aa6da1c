"""Zero Pad nodes folded into the convolution they feed (load/convert/pads.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from zerop_deploy.load.parity import run_onnxruntime
from zerop_deploy.load.to_torch import convert_model


def _pad_conv(pads, *, value=0.0, computed=True, second_reader=False, opset=13):
    """x -> Pad(pads) -> Conv 3x3 (own padding 1 on H) -> y; pads from a Constant -> Cast chain."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes, inits = [], [w]
    if opset >= 11:
        if computed:  # the TF exporter's form: the pads computed at run time from constants
            value_t = numpy_helper.from_array(np.array(pads, np.int32), "p32")
            nodes += [
                helper.make_node("Constant", [], ["p_raw"], name="pc", value=value_t),
                helper.make_node("Cast", ["p_raw"], ["p"], name="cast", to=TensorProto.INT64),
            ]
        else:
            inits.append(numpy_helper.from_array(np.array(pads, np.int64), "p"))
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "v"))
        nodes.append(helper.make_node("Pad", ["x", "p", "v"], ["xp"], name="pad"))
    else:
        nodes.append(helper.make_node("Pad", ["x"], ["xp"], name="pad", pads=pads, value=value))
    nodes.append(helper.make_node("Conv", ["xp", "w"], ["y"], name="conv", pads=[1, 0, 1, 0]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["xp"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", "c", "h", "w2"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 8])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def _pads_left(module) -> int:
    return sum("Pad" in type(module.get_submodule(n.target)).__name__
               for n in module.graph.nodes if n.op == "call_module")  # fmt: skip


def _check(model, folded: bool):
    module = convert_model(model)
    assert _pads_left(module) == (0 if folded else 1)
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 8)).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x))
    got = got if isinstance(got, (tuple, list)) else [got]
    for g, e in zip(got, run_onnxruntime(model, {"x": x}), strict=True):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-5)
    return module


@pytest.mark.parametrize("computed", [True, False], ids=["computed", "initializer"])
def test_symmetric_zero_pad_goes_into_the_conv(computed):
    module = _check(_pad_conv([0, 0, 2, 1, 0, 0, 2, 1], computed=computed), folded=True)
    conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    assert tuple(conv.padding) == (3, 1)  # its own (1, 0) plus the Pad's (2, 1)
    assert not any(type(m).__name__ == "OnnxCast" for m in module.modules())  # the chain is gone


def test_static_pad_attribute_form_is_folded():
    _check(_pad_conv([0, 0, 1, 1, 0, 0, 1, 1], opset=10), folded=True)


@pytest.mark.parametrize(
    "pads, kw",
    [
        ([0, 0, 0, 0, 0, 0, 1, 1], {}),  # TF "same" at stride 2: after only
        ([0, 0, 1, 1, 0, 0, 1, 1], {"value": 0.5}),  # not zero
        ([1, 0, 1, 1, 0, 0, 1, 1], {}),  # batch padding
        ([0, 0, 1, 1, 0, 0, 1, 1], {"second_reader": True}),  # another node reads the padded tensor
    ],
    ids=["asymmetric", "nonzero", "batch", "shared"],
)
def test_other_pads_stay(pads, kw):
    _check(_pad_conv(pads, **kw), folded=False)
