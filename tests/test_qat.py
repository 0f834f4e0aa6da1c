"""The fine-tuning loop: loss, schedule, feature matching, checkpoints, interrupts."""

import os
import signal

import pytest
import torch

from zerop_deploy.config import QuantConfig, TrainConfig
from zerop_deploy.data.batches import batch_fn
from zerop_deploy.errors import InputError
from zerop_deploy.load.to_torch import convert_model
from zerop_deploy.quant.calibrate import calibrate_activations, init_weight_scales
from zerop_deploy.quant.checkpoint import load_checkpoint, save_checkpoint
from zerop_deploy.quant.distill import feature_pairs, kd_loss
from zerop_deploy.quant.loop import _lr_factor, train
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
    pairs = feature_pairs(cnn_bn, plan)
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


def _run(proto, tmp_path, batches, *, resume=False):
    torch.manual_seed(0)  # _setup calibrates on random images
    teacher, student, _ = _setup(proto)
    cfg = TrainConfig(steps=6, batch_size=4, checkpoint_every_s=1e9)
    tmp_path.mkdir(exist_ok=True)
    ckpt = tmp_path / "run.ckpt"
    train(teacher, student, batches, cfg, device=torch.device("cpu"), checkpoint=ckpt,
          resume=resume, progress=False)  # fmt: skip
    return student.state_dict(), ckpt


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_inside_a_step_waits_for_the_step_and_resumes_exactly(cnn_bn, tmp_path, sig):
    """The signal lands mid-step (while the batch is drawn); the step still completes whole."""
    images = torch.rand(24, 3, 16, 16)
    reference, _ = _run(cnn_bn, tmp_path / "ref", batch_fn(images, 4, seed=0))

    def interrupting(step):
        if step == 2:
            os.kill(os.getpid(), sig)  # delivered at once; held until step 2 is done
        return batch_fn(images, 4, seed=0)(step)

    class Stop(KeyboardInterrupt):
        pass

    def raise_stop(*_):
        raise Stop

    previous = signal.signal(sig, raise_stop)
    try:
        with pytest.raises(Stop):
            _run(cnn_bn, tmp_path / "int", interrupting)
        assert signal.getsignal(sig) is raise_stop  # the caller's handler is back
    finally:
        signal.signal(sig, previous)
    assert load_checkpoint(tmp_path / "int" / "run.ckpt", "")["step"] == 3
    resumed, _ = _run(cnn_bn, tmp_path / "int", batch_fn(images, 4, seed=0), resume=True)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_a_second_interrupt_stops_mid_step_without_a_half_done_checkpoint(cnn_bn, tmp_path):
    images = torch.rand(24, 3, 16, 16)

    def twice(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again: stop now
        return batch_fn(images, 4, seed=0)(step)

    with pytest.raises(KeyboardInterrupt):
        _run(cnn_bn, tmp_path, twice)
    assert not (tmp_path / "run.ckpt").exists()  # no periodic checkpoint yet, none half-done
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_micro_batches_give_the_update_of_the_whole_batch(cnn_bn, monkeypatch):
    """A batch above the pixel budget is split; the step's loss and gradients match one pass."""
    import copy

    from zerop_deploy.quant import loop as qat
    from zerop_deploy.quant.distill import FeatureTaps
    from zerop_deploy.quant.loop import _micro_batches, _step, param_groups

    x = torch.rand(10, 3, 16, 16)
    monkeypatch.setenv("ZEROP_MICRO_BATCH_PIXELS", str(4 * 16 * 16))
    assert [len(p) for p in _micro_batches(x)] == [4, 4, 2]
    monkeypatch.setenv("ZEROP_MICRO_BATCH_PIXELS", "0")
    assert len(_micro_batches(x)) == 1
    monkeypatch.delenv("ZEROP_MICRO_BATCH_PIXELS")
    assert qat.MICRO_BATCH_PIXELS // (224 * 224) == 16
    assert len(_micro_batches(torch.rand(64, 3, 32, 32))) == 1  # CIFAR batches stay whole

    teacher, student, plan = _setup(cnn_bn)
    cfg = TrainConfig(feature_weight=1.0)
    results = {}
    for budget in ("0", str(3 * 16 * 16)):
        monkeypatch.setenv("ZEROP_MICRO_BATCH_PIXELS", budget)
        s = copy.deepcopy(student)
        qat._trainable(s)
        taps = FeatureTaps(teacher, s, feature_pairs(cnn_bn, plan))
        opt = torch.optim.SGD(param_groups(s, cfg), lr=0.0)  # lr 0: keep the gradients to compare
        n, loss = _step(teacher, s, x, cfg, opt, taps)
        taps.remove()
        assert n == 10 and not taps.teacher and not taps.student  # every recorded output was used
        results[budget] = loss, [p.grad.clone() for p in s.parameters() if p.requires_grad]
    (loss_a, grads_a), (loss_b, grads_b) = results.values()
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_every_step_size_moves_by_the_same_fraction_of_itself_and_8_bit_weights_16x_less(cnn_bn):
    """Adam's first step moves a parameter by about its learning rate whatever the gradient, so
    the rates are set per grid: an absolute rate wrecked the small 8-bit steps of EfficientNet-Lite0
    (W8A8 87.6 % -> 74.6 % in 10 steps, docs/experiments.md)."""
    from zerop_deploy.quant import loop
    from zerop_deploy.quant.loop import REFERENCE_STEP, param_groups
    from zerop_deploy.quant.modules import ActQuantizer, QuantLayer

    teacher = convert_model(cnn_bn)
    student, plan = build_student(teacher, cnn_bn, QuantConfig(wbits=4, first_last_bits=8))
    init_weight_scales(student)
    calibrate_activations(student, [torch.rand(8, 3, 16, 16)])
    layers = [m for m in student.modules() if isinstance(m, QuantLayer)]
    acts = [m for m in student.modules() if isinstance(m, ActQuantizer)]
    assert {m.wbits for m in layers} == {4, 8} and len(acts) >= 2
    before = {id(m): m.scale.detach().abs().item() for m in acts}
    assert max(before.values()) > 1.5 * min(before.values())  # a rule for different sizes
    weights = {id(m): m.weight.detach().clone() for m in layers}
    cfg = TrainConfig(lr=1e-3)
    opt = torch.optim.Adam(param_groups(student, cfg))
    loop._trainable(student)
    x = torch.rand(4, 3, 16, 16)
    (1e6 * kd_loss(student(x), teacher(x).detach(), 1.0)).backward()  # gradients >> Adam eps
    opt.step()
    rel = cfg.lr / REFERENCE_STEP
    for m in acts:
        if m.scale.grad is not None and m.scale.grad.abs() > 0:
            moved = abs(m.scale.detach().abs().item() - before[id(m)]) / before[id(m)]
            assert moved == pytest.approx(rel, rel=0.05)  # an absolute rate: off by 1.5x or more
    for m in layers:
        moved = (m.weight.detach() - weights[id(m)]).abs().max().item()
        assert moved == pytest.approx(cfg.lr / 2 ** (m.wbits - 4), rel=1e-3)
