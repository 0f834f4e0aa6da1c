"""The fine-tuning loop: loss, schedule, feature matching, checkpoints."""

import pytest
import torch

from zerop_deploy.api import _feature_pairs
from zerop_deploy.batches import batch_fn
from zerop_deploy.config import QuantConfig, TrainConfig
from zerop_deploy.errors import InputError
from zerop_deploy.load import convert_model
from zerop_deploy.quant.calibrate import calibrate_activations, init_weight_scales
from zerop_deploy.quant.qat import _lr_factor, kd_loss, load_checkpoint, save_checkpoint, train
from zerop_deploy.quant.student import build_student


def test_kd_loss_is_zero_only_for_equal_logits():
    a = torch.randn(4, 10)
    assert kd_loss(a, a, 2.0).abs() < 1e-6
    assert kd_loss(a, a.flip(1), 2.0) > 0.01


def test_cosine_schedule_follows_steps_or_budget():
    assert _lr_factor(0, 100, 0.0, None) == pytest.approx(1.0)
    assert _lr_factor(50, 100, 0.0, None) == pytest.approx(0.5)
    assert _lr_factor(10, 100, 90.0, 100.0) == pytest.approx(_lr_factor(90, 100, 0.0, None))


def _setup(proto):
    teacher = convert_model(proto)
    student, plan = build_student(teacher, proto, QuantConfig())
    init_weight_scales(student)
    calibrate_activations(student, [torch.rand(8, 3, 16, 16)])
    return teacher, student, plan


def test_feature_matching_trains_and_leaves_no_hooks(cnn_bn):
    teacher, student, plan = _setup(cnn_bn)
    pairs = _feature_pairs(cnn_bn, plan)
    assert [s for _, s in pairs] == [p.module for p in plan]
    assert pairs[0][0] != pairs[0][1]  # the first conv is matched against the teacher's BN
    before = [p.detach().clone() for p in student.parameters()]
    cfg = TrainConfig(steps=3, batch_size=4, feature_weight=1.0, checkpoint_every_s=1e9)
    batches = batch_fn(torch.rand(20, 3, 16, 16), 4, seed=0)
    result = train(
        teacher,
        student,
        batches,
        cfg,
        device=torch.device("cpu"),
        progress=False,
        feature_pairs=pairs,
    )
    assert result.steps == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    modules = [*teacher.modules(), *student.modules()]
    assert all(not m._forward_hooks for m in modules)


def test_checkpoint_roundtrip_and_fingerprint_check(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"student": {"w": torch.ones(2)}, "step": 5, "fingerprint": "abc"})
    assert load_checkpoint(path, "abc")["step"] == 5
    with pytest.raises(InputError, match="other settings"):
        load_checkpoint(path, "xyz")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        load_checkpoint(path, "abc")
