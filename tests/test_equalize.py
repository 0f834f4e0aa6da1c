"""Cross-layer equalization: which pairs, function kept, ranges balanced, feature targets scaled."""

import onnx
import pytest
import torch
from torch import nn

from zerop_deploy.config import QuantConfig
from zerop_deploy.demo import onnx_bytes
from zerop_deploy.load.to_torch import convert_model
from zerop_deploy.quant.distill import FeatureTaps
from zerop_deploy.quant.equalize import channel_ranges, equalization_pairs, equalize
from zerop_deploy.quant.modules import float_mode
from zerop_deploy.quant.student import build_student
from zerop_deploy.validate.report import layer_sqnr


class _Block(nn.Module):
    """stem -> depthwise+BN (signed, uneven channels) -> 1x1 -> ReLU -> 1x1, plus a residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8))
        self.pw1 = nn.Conv2d(8, 8, 1)
        self.pw2 = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        s = self.stem(x)
        y = self.pw2(torch.relu(self.pw1(self.dw(s))))
        return self.head(y + s)  # s has two readers: stem is not paired with anything


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    net = _Block()
    with torch.no_grad():
        bn = net.dw[1]
        bn.weight.copy_(torch.logspace(-2, 1, 8))  # channel ranges 1000x apart
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return onnx.load_from_string(onnx_bytes(net.eval(), (1, 3, 8, 8), keep_bn=True, opset=17))


def _student(proto):
    teacher = convert_model(proto).eval()
    student, plan = build_student(teacher, proto, QuantConfig())
    return teacher, student, plan


def test_pairs_are_single_reader_conv_chains(block):
    _, _, plan = _student(block)
    pairs = equalization_pairs(block, plan)
    names = {p.module: p.node for p in plan}
    got = [(names[a], names[b]) for a, b in pairs]
    # dw -> pw1 (through the folded BN) and pw1 -> pw2 (through a ReLU); stem has two readers,
    # pw2 feeds an Add, the depthwise conv is grouped (never a B)
    assert len(got) == 2
    assert all("dw" in a or "pw1" in a for a, _ in got)
    assert {b.split("/")[1] for _, b in got} == {"pw1", "pw2"}


def test_equalization_keeps_the_function_and_balances_ranges(block):
    teacher, student, plan = _student(block)
    pairs = equalization_pairs(block, plan)
    x = [torch.randn(16, 3, 8, 8)]
    b_names = [b for _, b in pairs]
    with float_mode(student):
        before = student(x[0])
        r0 = channel_ranges(student, b_names, x)
        equalize(student, pairs, x)
        after = student(x[0])
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, teacher(x[0]), rtol=1e-4, atol=1e-4)
    r1 = channel_ranges(student, b_names, x)
    dw_b = next(b for a, b in pairs if "dw" in a)
    spread = (r0[dw_b].max() / r0[dw_b].min()).item(), (r1[dw_b].max() / r1[dw_b].min()).item()
    assert spread[1] < spread[0] / 10, spread  # the 1000x spread of the depthwise output shrinks
    a_names = {a for a, _ in pairs}
    for a, b in pairs:  # B's input range and B's input-channel weight range now agree
        assert student.get_submodule(a).channel_divisor.shape == (8,)
        if b in a_names:  # B's rows were rescaled afterwards as the A of the next pair
            continue
        w = student.get_submodule(b).weight.detach().abs().amax(dim=(0, 2, 3))
        torch.testing.assert_close(r1[b], w, rtol=1e-4, atol=1e-6)


def test_feature_targets_and_layer_sqnr_follow_the_channel_divisor():
    teacher, student = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 3, 1)
    s = torch.tensor([2.0, 0.5, 4.0])
    with torch.no_grad():
        student.weight.copy_(teacher.weight / s.view(-1, 1, 1, 1))
        student.bias.copy_(teacher.bias / s)
    t_root, s_root = nn.Sequential(teacher), nn.Sequential(student)
    x = torch.randn(4, 2, 5, 5)
    plain = FeatureTaps(t_root, s_root, [("0", "0")])
    t_root(x), s_root(x)
    assert plain.loss().item() > 0.1  # without the divisor the scaled layer looks wrong
    plain.remove()
    assert layer_sqnr(t_root, s_root, [("0", "0")], x)[0] < 10
    student.register_buffer("channel_divisor", s)
    taps = FeatureTaps(t_root, s_root, [("0", "0")])
    t_root(x), s_root(x)
    assert taps.loss().item() < 1e-10
    taps.remove()
    assert layer_sqnr(t_root, s_root, [("0", "0")], x)[0] > 100


def test_equalized_student_saves_and_reloads(block):
    """The divisor is part of the state: a checkpoint of an equalized student loads back."""
    _, student, plan = _student(block)
    equalize(student, equalization_pairs(block, plan), [torch.randn(8, 3, 8, 8)])
    state = student.state_dict()
    assert sum(k.endswith("channel_divisor") for k in state) == 2
    _, again, plan2 = _student(block)
    equalize(again, equalization_pairs(block, plan2), [torch.randn(8, 3, 8, 8)])
    again.load_state_dict(state)
    for k, v in state.items():
        assert torch.equal(again.state_dict()[k], v)


def test_a_value_that_is_also_a_graph_output_is_not_rescaled(block):
    _, _, plan = _student(block)
    names = {p.module: p.node for p in plan}
    dw_pair = next((a, b) for a, b in equalization_pairs(block, plan) if "dw" in names[a])
    dw_bn = next(p.folded_bn for p in plan if p.module == dw_pair[0])
    exposed = onnx.ModelProto()
    exposed.CopyFrom(block)
    bn_out = next(n.output[0] for n in exposed.graph.node if n.name == dw_bn)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info(bn_out, 1, None))
    assert dw_pair not in equalization_pairs(exposed, plan)
    assert len(equalization_pairs(exposed, plan)) == 1
