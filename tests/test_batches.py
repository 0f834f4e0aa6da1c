import numpy as np
import pytest
import torch

from zerop_deploy.data.batches import augment, batch_fn, images_per_pass
from zerop_deploy.data.preprocess import Preprocess


def _imgs(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_batch_fn_uint8_matches_float():
    images = torch.from_numpy(_imgs(30, 8, 8)).permute(0, 3, 1, 2).contiguous()
    synth = torch.from_numpy(_imgs(10, 8, 8, seed=1)).permute(0, 3, 1, 2).contiguous()
    pre = Preprocess(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    kw = dict(seed=5, sd_ratio=0.25, preprocess=pre)
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


def test_inference_passes_shrink_only_for_big_inputs():
    assert images_per_pass((3, 32, 32), 2048) == 2048  # CIFAR-size batches as they were
    assert images_per_pass((64, 3, 32, 32), 256) == 256  # a whole N, C, H, W works the same
    assert images_per_pass((3, 224, 224), 256) == 41
    assert images_per_pass((3, 224, 224), 16) == 16
    assert images_per_pass((3, 4096, 4096), 256) == 1
