import numpy as np
import pytest
import torch

from zerop_deploy.batches import augment, batch_fn, blend


def _imgs(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_batch_fn_uint8_matches_float():
    images = torch.from_numpy(_imgs(30, 8, 8)).permute(0, 3, 1, 2).contiguous()
    synth = torch.from_numpy(_imgs(10, 8, 8, seed=1)).permute(0, 3, 1, 2).contiguous()
    kw = dict(seed=5, sd_ratio=0.25, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    b8 = batch_fn(images, 8, synthetic=synth, **kw)
    bf = batch_fn(images.float() / 255, 8, synthetic=synth.float() / 255, **kw)
    for step in range(3):
        assert b8(step).dtype == torch.float32
        assert torch.allclose(b8(step), bf(step), atol=1e-6)


def test_batches_are_a_function_of_seed_and_step():
    images = torch.rand(50, 3, 8, 8)
    synth = torch.rand(20, 3, 8, 8) + 10
    b1 = batch_fn(images, 8, seed=1, synthetic=synth, sd_ratio=0.5)
    b2 = batch_fn(images, 8, seed=1, synthetic=synth, sd_ratio=0.5)
    assert torch.equal(b1(7), b2(7)) and not torch.equal(b1(7), b1(8))
    assert (b1(3) > 5).float().mean() == pytest.approx(0.5)  # half of every batch is synthetic


def test_augment_keeps_shape_and_values():
    x = torch.rand(6, 3, 16, 16)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= x.min() and y.max() <= x.max()


def test_blend_off_is_the_identity_and_on_is_deterministic():
    x = torch.rand(8, 3, 8, 8)
    for mode in ("mixup", "cutmix"):
        assert torch.equal(blend(x, torch.Generator().manual_seed(0), 0.0, mode), x)
        a = blend(x, torch.Generator().manual_seed(3), 1.0, mode)
        b = blend(x, torch.Generator().manual_seed(3), 1.0, mode)
        assert torch.equal(a, b) and not torch.equal(a, x)


def test_mixup_gives_convex_blends_of_two_batch_images():
    # constant images make every blend a constant between two of the batch's values
    levels = torch.arange(8.0)
    x = levels.view(8, 1, 1, 1).expand(8, 3, 4, 4).clone()
    y = blend(x, torch.Generator().manual_seed(0), 1.0, "mixup")
    assert (y.amax((1, 2, 3)) - y.amin((1, 2, 3))).abs().max() < 1e-6
    assert y.min() >= 0 and y.max() <= 7
    assert (y.flatten(1)[:, 0] != levels).any()


def test_cutmix_pastes_whole_pixels_from_the_other_image():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16).clone()
    y = blend(x, torch.Generator().manual_seed(1), 1.0, "cutmix")
    assert torch.equal(y, y.round())  # no pixel is a blend
    per_image = [set(img.unique().tolist()) for img in y]
    assert all(len(v) <= 2 and i in v or len(v) == 1 for i, v in enumerate(per_image))
    assert any(len(v) == 2 for v in per_image)  # some rectangle was pasted


def test_batch_fn_mix_is_a_function_of_seed_and_step():
    images = torch.rand(40, 3, 8, 8)
    b1 = batch_fn(images, 8, seed=2, mix=0.5, mix_mode="cutmix")
    b2 = batch_fn(images, 8, seed=2, mix=0.5, mix_mode="cutmix")
    plain = batch_fn(images, 8, seed=2)
    assert torch.equal(b1(4), b2(4)) and not torch.equal(b1(4), plain(4))
