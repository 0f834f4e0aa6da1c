"""Building the student: BN folding, layer swapping, signedness, bit plans; calibration."""

import numpy as np
import onnx
import pytest
import torch

from tests.helpers import log_of_one_minus_input_model
from zerop_deploy.config import LayerOverride, QuantConfig
from zerop_deploy.errors import ConfigError, InputError
from zerop_deploy.load.to_torch import convert_model
from zerop_deploy.quant.calibrate import (
    calibrate_activations,
    init_weight_scales,
    mse_activation_scale,
    mse_weight_scales,
)
from zerop_deploy.quant.graph import conv_bn_pairs, nonnegative_values
from zerop_deploy.quant.modules import QuantConv, float_mode, quant_layers
from zerop_deploy.quant.primitives import fake_quantize
from zerop_deploy.quant.student import (
    build_student,
    check_layer_names,
    fold_bn_into_conv,
    layer_quants,
)


def _student(proto, **kw):
    teacher = convert_model(proto)
    student, plan = build_student(teacher, proto, QuantConfig(**kw))
    return teacher, student, plan


def test_folded_float_student_equals_teacher(cnn_bn):
    teacher, student, plan = _student(cnn_bn)
    assert [p.folded_bn is not None for p in plan] == [True, True, False]
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad(), float_mode(student):
        assert torch.allclose(student(x), teacher(x), atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())  # teacher untouched


def test_bn_folding_stays_on_the_conv_device():
    # found on a GPU: synthesis had moved the model to cuda, the BN constants were on the CPU
    conv = torch.nn.Conv2d(3, 4, 3).to("meta")
    bn = (np.ones(4), np.zeros(4), np.zeros(4), np.ones(4), 1e-5)
    w, b = fold_bn_into_conv(conv, bn)
    assert w.device.type == "meta" and b.device.type == "meta" and w.shape == (4, 3, 3, 3)


def test_plan_bits_first_last_and_overrides(cnn_bn):
    names = [n.name for n in cnn_bn.graph.node if n.op_type in ("Conv", "Gemm")]
    _, _, plan = _student(cnn_bn, wbits=4, abits=4, first_last_bits=8)
    assert [(p.wbits, p.abits) for p in plan] == [(8, 8), (4, 4), (8, 8)]
    over = {names[1]: LayerOverride(wbits=8), names[2]: LayerOverride(skip=True)}
    _, student, plan = _student(cnn_bn, first_last_bits=4, overrides=over)
    assert [(p.wbits, p.abits) for p in plan[:2]] == [(4, 4), (8, 4)]
    assert plan[2].skipped == "override: skip"
    assert len(quant_layers(student)) == 2


@pytest.mark.parametrize(
    "name, needle",
    [
        ("/0/conv", "the model has no node '/0/conv'; did you mean '/0/Conv', '/3/Conv'?"),
        ("/1/BatchNormalization", "node '/1/BatchNormalization' is a BatchNormalization, not a"),
        ("classifier.weight", "no node 'classifier.weight'; `zerop-deploy inspect MODEL` lists"),
    ],
)
def test_overrides_of_nodes_that_are_not_quantizable_layers_are_refused(cnn_bn, name, needle):
    # a misspelt layer used to be ignored silently: the run went on with the default bits
    config = QuantConfig(overrides={"/3/Conv": LayerOverride(wbits=8), name: LayerOverride()})
    with pytest.raises(ConfigError) as err:
        build_student(convert_model(cnn_bn), cnn_bn, config)
    msg = str(err.value)
    assert msg.startswith("--layer-config: ") and needle in msg and "\n" not in msg
    check_layer_names(cnn_bn, QuantConfig(overrides={"/3/Conv": LayerOverride(wbits=8)}))


def test_calibration_refuses_nan_naming_the_onnx_node_where_it_starts():
    proto = log_of_one_minus_input_model()
    _, student, _ = _student(proto)
    white = torch.rand(2, 3, 16, 16) * 0.5
    white[1, :, 3, 4] = 1.0  # log(1 - 1) = -inf
    with pytest.raises(InputError) as err:
        calibrate_activations(student, [torch.rand(2, 3, 16, 16) * 0.5, white])
    assert "NaN or Inf on the images it is calibrated on: node 'log_b' (Log) is the first" in str(
        err.value
    )


def test_activation_sign_follows_the_graph(cnn_bn):
    _, _, plan = _student(cnn_bn)
    # graph input may be negative; after ReLU the depthwise conv and (via pool/flatten) Gemm are >=
    # 0
    assert [p.act_signed for p in plan] == [True, False, False]
    assert conv_bn_pairs(cnn_bn) and nonnegative_values(cnn_bn)


def test_mse_scales_beat_max_abs_on_outliers():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    w[:, 0] = 8.0  # an outlier per channel
    s_mse = mse_weight_scales(w, 0, -7, 7)
    s_max = w.abs().amax(1) / 7
    err = lambda s: (fake_quantize(w, s, qmin=-7, qmax=7, axis=0) - w).pow(2).sum()  # noqa: E731
    assert err(s_mse) <= err(s_max)
    v = torch.cat([torch.rand(10000), torch.tensor([50.0])])
    assert mse_activation_scale(v, 0, 15) < 50.0 / 15


def test_calibration_and_exact_handover(cnn_bn):
    teacher, student, plan = _student(cnn_bn)
    init_weight_scales(student)
    n = calibrate_activations(student, [torch.rand(8, 3, 16, 16) for _ in range(2)])
    assert n == 16
    layers = quant_layers(student)
    assert all(q.act.scale.item() != 1.0 for q in layers.values())
    handover = layer_quants(student, plan, cnn_bn)
    conv = next(iter(layers.values()))
    assert isinstance(conv, QuantConv)
    np.testing.assert_array_equal(
        handover[0].dequantized_weight(), conv.quantized_weight().detach().numpy()
    )
    assert handover[0].folded_bn is not None and handover[0].act.signed


def test_fused_lsq_matches_the_primitive_forward_and_gradients():
    from zerop_deploy.quant.primitives import lsq_fake_quantize

    torch.manual_seed(1)
    for axis, shape in ((None, ()), (0, (5,))):
        x1 = (torch.randn(5, 7) * 4).requires_grad_()
        s1 = (torch.rand(shape) + 0.3).requires_grad_()
        x2, s2 = x1.detach().clone().requires_grad_(), s1.detach().clone().requires_grad_()
        y1 = lsq_fake_quantize(x1, s1, -8, 7, axis, 0.5)
        y2 = fake_quantize(x2, s2 * 0.5 + (s2 - s2 * 0.5).detach(), qmin=-8, qmax=7, axis=axis)
        assert torch.equal(y1, y2)
        g = torch.randn(5, 7)
        (y1 * g).sum().backward()
        (y2 * g).sum().backward()
        assert torch.allclose(x1.grad, x2.grad) and torch.allclose(s1.grad, s2.grad, atol=1e-5)


def test_fused_lsq_with_a_zero_point_matches_the_primitive():
    from zerop_deploy.quant.primitives import lsq_fake_quantize

    torch.manual_seed(2)
    x1 = (torch.randn(6, 9) * 3 + 2).requires_grad_()
    s1 = torch.tensor(0.4, requires_grad=True)
    x2, s2 = x1.detach().clone().requires_grad_(), s1.detach().clone().requires_grad_()
    z = torch.tensor(-5.0)
    y1 = lsq_fake_quantize(x1, s1, -8, 7, None, 0.5, z)
    y2 = fake_quantize(x2, s2 * 0.5 + (s2 - s2 * 0.5).detach(), z, qmin=-8, qmax=7)
    assert torch.equal(y1, y2)
    assert (y1 > 0.4 * 7).any()  # the zero point really shifted the range upwards
    g = torch.randn(6, 9)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert torch.allclose(x1.grad, x2.grad) and torch.allclose(s1.grad, s2.grad, atol=1e-5)


def test_asymmetric_calibration_finds_a_zero_point_and_hands_it_over(cnn_bn):
    from zerop_deploy.quant.calibrate import mse_activation_qparams

    v = torch.rand(20000) * 3 - 0.3  # signed, but mostly positive
    s, z = mse_activation_qparams(v, -8, 7)
    sym = mse_activation_scale(v, -8, 7)

    def err(scale, zp):
        return float((fake_quantize(v, torch.tensor(scale), zp, qmin=-8, qmax=7) - v).pow(2).mean())

    assert z < -4 and err(s, z) < 0.5 * err(sym, 0)
    teacher = convert_model(cnn_bn)
    student, plan = build_student(teacher, cnn_bn, QuantConfig(asymmetric_activations=True))
    init_weight_scales(student)
    calibrate_activations(student, [torch.rand(8, 3, 16, 16) * 2 + 0.5])  # all-positive input
    first = next(iter(quant_layers(student).values()))
    assert first.act.signed and first.act.asymmetric and first.act.zero_point.item() < 0
    handover = layer_quants(student, plan, cnn_bn)
    assert handover[0].act.zero_point == int(first.act.zero_point.item())
    unsigned = [q.act for q in quant_layers(student).values() if not q.act.signed]
    assert unsigned and all(a.zero_point.item() == 0 and not a.asymmetric for a in unsigned)


def _convtranspose_matmul_model():
    import io

    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1)
            self.w = nn.Parameter(torch.randn(4 * 7 * 7, 5) * 0.1)

        def forward(self, x):
            return torch.relu(self.up(x)).flatten(1) @ self.w

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.onnx.export(
        Net().eval(),
        (torch.rand(1, 2, 4, 4),),
        buf,
        input_names=["x"],
        output_names=["y"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
    )
    return onnx.load_from_string(buf.getvalue())


def test_convtranspose_and_matmul_are_quantized_and_exported_exactly():
    from zerop_deploy.export.qdq import export_qdq
    from zerop_deploy.load.parity import run_onnxruntime

    proto = _convtranspose_matmul_model()
    teacher, student, plan = _student(proto, wbits=8, abits=8)
    assert [(p.op, p.skipped) for p in plan] == [("ConvTranspose", None), ("MatMul", None)]
    assert plan[1].act_signed is False  # after ReLU and Flatten
    init_weight_scales(student)
    x = torch.rand(16, 2, 4, 4)
    calibrate_activations(student, [x])
    with torch.no_grad():
        expect = student(x).numpy()
    q = export_qdq(proto, layer_quants(student, plan, proto), int32_bias=True)
    got = run_onnxruntime(q, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)


def test_gemm_that_scales_its_product_is_kept_in_float_with_the_reason():
    from tests.helpers import one_node_model
    from zerop_deploy.quant.student import build_student

    rng = np.random.default_rng(0)
    model = one_node_model(
        "Gemm", {"x": (2, 4)}, None, opset=17, attrs={"alpha": 2.0, "transB": 1},
        initializers={"w": rng.standard_normal((3, 4)).astype(np.float32),
                      "b": rng.standard_normal(3).astype(np.float32)},
    )  # fmt: skip
    _student, plan = build_student(convert_model(model), model, QuantConfig())
    assert [p.skipped for p in plan] == ["Gemm with alpha/beta != 1 is kept in float"]
