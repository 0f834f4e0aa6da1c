import copy

import torch
from torch import nn

from zerop_deploy.validate.report import layer_sqnr


def test_layer_sqnr_measures_each_pair_end_to_end():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[2].weight.add_(0.01 * torch.randn_like(student[2].weight))
    x = torch.rand(300, 3, 8, 8)  # more than one chunk of 128
    first, second = layer_sqnr(teacher, student, [("0", "0"), ("2", "2")], x)
    assert first > 250  # identical layer: no noise at all
    with torch.no_grad():
        t, s = teacher(x), student(x)
    expected = 10 * torch.log10(t.double().pow(2).sum() / (s - t).double().pow(2).sum())
    assert abs(second - float(expected)) < 1e-6
    assert not teacher[0]._forward_hooks and not student[0]._forward_hooks  # hooks removed
