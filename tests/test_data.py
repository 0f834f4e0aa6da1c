import numpy as np
import pytest
import torch
from PIL import Image

from zerop_deploy.data import augment, batch_fn, load_images, to_model_input
from zerop_deploy.errors import InputError


def test_npz_with_labels_and_npy(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(5))
    s = load_images(tmp_path / "a.npz")
    assert s.images.shape == (5, 8, 8, 3) and s.labels.tolist() == [0, 1, 2, 3, 4]
    np.save(tmp_path / "b.npy", imgs[..., 0])  # grayscale N x H x W
    assert load_images(tmp_path / "b.npy").images.shape == (5, 8, 8, 1)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: np.savez(d / "x.npz", pixels=np.zeros((2, 4, 4, 3), np.uint8)), "no 'images'"),
        (lambda d: np.savez(d / "x.npz", images=np.zeros((2, 4, 4, 3), np.float32)), "uint8"),
        (lambda d: np.savez(d / "x.npz", images=np.zeros((4, 4), np.uint8)), "N x H x W x C"),
        (lambda d: np.savez(d / "x.npz", images=np.zeros((2, 4, 4, 5), np.uint8)), "5 channels"),
        (lambda d: np.savez(d / "x.npz", images=np.zeros((2, 4, 4, 2), np.uint8)), "2 channels"),
        (lambda d: np.savez(d / "x.npz", images=np.zeros((0, 4, 4, 3), np.uint8)), "no images"),
        (lambda d: (d / "x.npz").write_bytes(b"junk"), "cannot read"),
    ],
)
def test_bad_npz(tmp_path, make, needle):
    make(tmp_path)
    with pytest.raises(InputError, match=needle):
        load_images(tmp_path / "x.npz")


def test_folder_with_classes_skips_corrupt_files(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (20, 10), color=(200, 10, 10)).save(tmp_path / cls / "a.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    s = load_images(tmp_path)
    assert len(s.images) == 2 and s.skipped == 1 and s.labels.tolist() == [0, 1]


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(InputError, match="no readable image"):
        load_images(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        load_images(tmp_path / "nope")


def test_to_model_input_resizes_crops_and_converts_channels():
    imgs = np.full((2, 64, 48, 3), 255, np.uint8)
    x = to_model_input(imgs, (3, 32, 32))
    assert x.shape == (2, 3, 32, 32) and torch.allclose(x, torch.ones_like(x))
    g = to_model_input(imgs, (1, 16, 16))
    assert g.shape == (2, 1, 16, 16) and torch.allclose(g, torch.ones_like(g), atol=1e-5)
    n = to_model_input(imgs, (3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(n, torch.full_like(n, 2.0))


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
