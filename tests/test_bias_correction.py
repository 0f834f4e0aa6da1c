"""Empirical bias correction: every quantized layer ends with the fp32 per-channel mean output."""

import onnx
import pytest
import torch
from torch import nn

from zerop_deploy.config import QuantConfig
from zerop_deploy.demo import onnx_bytes
from zerop_deploy.load.to_torch import convert_model
from zerop_deploy.quant.bias_correction import channel_means, correct_biases
from zerop_deploy.quant.calibrate import calibrate_activations, init_weight_scales
from zerop_deploy.quant.distill import feature_pairs
from zerop_deploy.quant.student import build_student


class _Net(nn.Module):
    """stem -> depthwise+BN -> ReLU6 -> 1x1 -> pool -> fc: the layer kinds of a mobile network."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8))
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = self.pw(torch.clamp(self.dw(self.stem(x)), 0, 6))
        return self.fc(torch.relu(y).mean((2, 3)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():
        net.dw[1].weight.copy_(torch.logspace(-1, 0.5, 8))
        net.dw[1].running_mean.uniform_(-0.5, 0.5)
    return onnx.load_from_string(onnx_bytes(net.eval(), (1, 3, 12, 12), keep_bn=True, opset=17))


def _calibrated(proto, x):
    teacher = convert_model(proto).eval()
    student, plan = build_student(teacher, proto, QuantConfig(wbits=4, abits=8, first_last_bits=4))
    init_weight_scales(student)
    calibrate_activations(student, [x])
    return teacher, student, feature_pairs(proto, plan)


@torch.no_grad()
def _mean_errors(teacher, student, pairs, x):
    """Largest per-channel mean difference of every paired output, relative to its spread."""
    t_out, s_out = {}, {}
    hooks = [teacher.get_submodule(t).register_forward_hook(
        lambda _m, _i, o, k=s: t_out.__setitem__(k, o)) for t, s in pairs]  # fmt: skip
    hooks += [student.get_submodule(s).register_forward_hook(
        lambda _m, _i, o, k=s: s_out.__setitem__(k, o)) for _, s in pairs]  # fmt: skip
    teacher(x)
    student(x)
    for h in hooks:
        h.remove()
    errs = {}
    for _, s in pairs:
        axis = 1 if t_out[s].dim() == 4 else -1
        diff = channel_means(s_out[s], axis) - channel_means(t_out[s], axis)
        errs[s] = float(diff.abs().max() / t_out[s].std())
    return errs


def test_every_layer_gets_the_fp32_channel_means(model):
    torch.manual_seed(1)
    x = torch.rand(32, 3, 12, 12)
    teacher, student, pairs = _calibrated(model, x)
    assert len(pairs) == 4
    before = _mean_errors(teacher, student, pairs, x)
    stats = correct_biases(teacher, student, pairs, [x])
    after = _mean_errors(teacher, student, pairs, x)
    assert stats["layers"] == 4 and stats["images"] == 32 and stats["largest_shift"] > 0
    # each correction saw the corrected outputs of the layers before it: on the same images every
    # layer's channel means are the teacher's, not only the first layer's, up to the rounding of
    # the bias onto its int32 grid (input step x weight step, about 1 % of the spread at 4 bits)
    assert max(after.values()) < 0.015, after
    for name in before:
        assert after[name] < before[name] / 3, (name, before, after)


def test_held_out_images_improve_too(model):
    torch.manual_seed(2)
    x, held = torch.rand(64, 3, 12, 12), torch.rand(64, 3, 12, 12)
    teacher, student, pairs = _calibrated(model, x)
    before = _mean_errors(teacher, student, pairs, held)
    correct_biases(teacher, student, pairs, [x[:32], x[32:]])
    after = _mean_errors(teacher, student, pairs, held)
    assert sum(after.values()) < 0.5 * sum(before.values()), (before, after)


def test_batches_average_their_estimates(model):
    """Two batches give the mean of their two corrections, not the last batch's."""
    torch.manual_seed(3)
    a, b = torch.rand(32, 3, 12, 12), torch.rand(32, 3, 12, 12) * 0.5
    teacher, student, pairs = _calibrated(model, a)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    correct_biases(teacher, student, pairs, [a, b])
    both = {k: v.clone() for k, v in student.state_dict().items()}
    student.load_state_dict(state)
    correct_biases(teacher, student, pairs, [b])
    only_b = {k: v.clone() for k, v in student.state_dict().items()}
    first = next(k for k in state if k.endswith("bias") and "stem" in k)
    got, last = both[first], only_b[first]
    student.load_state_dict(state)
    correct_biases(teacher, student, pairs, [a])
    only_a = student.state_dict()[first].clone()
    # the first layer sees no earlier correction: its two estimates average (up to the int32
    # rounding of the bias the second batch sees)
    mean = (only_a + last) / 2
    assert (got - mean).abs().max() < 0.25 * (only_a - last).abs().max()
    assert (got - last).abs().max() > 0.3 * (only_a - last).abs().max()


def test_config_default_and_report():
    assert QuantConfig().bias_correction is False  # on only when asked (--bias-correction)
    assert QuantConfig(bias_correction=True).to_dict()["bias_correction"] is True
