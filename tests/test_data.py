import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from zerop_deploy.data import builtin_pool as _builtin_pool
from zerop_deploy.data.preprocess import Preprocess, normalize
from zerop_deploy.data.sources import (
    BUILTIN,
    fit_images,
    iter_batches,
    load_images,
    load_pool,
    open_source,
    to_model_input,
)
from zerop_deploy.errors import ConfigError, InputError, UnsupportedModelError


def _imgs(n=5, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _folder(root, layout):
    """layout: {relative path: "good" | "bad"}; good files are solid colours, distinct per file."""
    for k, (rel, kind) in enumerate(sorted(layout.items())):
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        if kind == "good":
            Image.new("RGB", (20 + k, 10), color=(10 * k, 100, 200)).save(f)
        else:
            f.write_bytes(b"\xff\xd8 not an image")
    return root


def test_npz_with_labels_and_npy(tmp_path):
    imgs = _imgs()
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(5))
    s = load_images(tmp_path / "a.npz")
    assert s.images.shape == (5, 8, 8, 3) and s.labels.tolist() == [0, 1, 2, 3, 4]
    np.save(tmp_path / "b.npy", imgs[..., 0])  # grayscale N x H x W
    assert load_images(tmp_path / "b.npy").images.shape == (5, 8, 8, 1)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_source_reads_subsets_and_memory_maps_stored_members(tmp_path, save):
    imgs = _imgs(6)
    save(tmp_path / "a.npz", images=imgs, labels=np.arange(6) * 10)
    src = open_source(tmp_path / "a.npz")
    assert (src.kind, src.count, src.labels.tolist()) == ("npz", 6, [0, 10, 20, 30, 40, 50])
    assert src.labels.dtype == np.int64
    assert isinstance(src._array, np.memmap) == (save is np.savez)
    x, idx = src.read([4, 1], (3, 8, 8))
    assert x.dtype == torch.uint8 and idx.tolist() == [4, 1]
    assert torch.equal(x, torch.from_numpy(imgs[[4, 1]]).permute(0, 3, 1, 2))


def test_npy_source_is_memory_mapped_and_fitted(tmp_path):
    imgs = _imgs(4, 8, 8, 1)[..., 0]
    np.save(tmp_path / "g.npy", imgs)
    src = open_source(tmp_path / "g.npy")
    assert isinstance(src._array, np.memmap) and src.labels is None and src.count == 4
    x, idx = src.read([2], (3, 4, 4))
    assert x.shape == (1, 3, 4, 4) and torch.equal(x[:, 0], x[:, 2]) and idx.tolist() == [2]
    with pytest.raises(IndexError):
        src.read([4], (3, 4, 4))


def _save_npz(**arrays):
    return lambda d: np.savez(d / "x.npz", **arrays)


@pytest.mark.parametrize(
    "make, name, needle",
    [
        (_save_npz(pixels=np.zeros((2, 4, 4, 3), np.uint8)), "x.npz", "no 'images'"),
        (_save_npz(images=np.zeros((2, 4, 4, 3), np.float32)), "x.npz", "uint8"),
        (_save_npz(images=np.zeros((4, 4), np.uint8)), "x.npz", "N x H x W x C"),
        (_save_npz(images=np.zeros((2, 4, 4, 5), np.uint8)), "x.npz", "5 channels"),
        (_save_npz(images=np.zeros((2, 4, 4, 2), np.uint8)), "x.npz", "2 channels"),
        (_save_npz(images=np.zeros((0, 4, 4, 3), np.uint8)), "x.npz", "no images"),
        (_save_npz(images=np.zeros((2, 4, 4, 3), np.uint8), labels=[1]), "x.npz", "1 labels"),
        (lambda d: (d / "x.npz").write_bytes(b"junk"), "x.npz", "cannot read the .npz"),
        (lambda d: (d / "x.npz").write_bytes(b"PK\x03\x04junk"), "x.npz", "cannot read"),
        (lambda d: np.save(d / "x.npz.npy", np.zeros(2, np.uint8)), "x.npz.npy", "N x H x W"),
        (lambda d: (d / "x.npy").write_bytes(b"junk"), "x.npy", "cannot read the .npy"),
        (lambda d: np.save(d / "x.npy", np.zeros((2, 4, 4), np.int64)), "x.npy", "uint8"),
        (lambda d: (d / "x.txt").write_text("hi"), "x.txt", "unknown image source suffix"),
        (lambda d: None, "missing.npz", "no such file"),
        (lambda d: (d / "empty").mkdir(), "empty", "no image files"),
        (lambda d: _folder(d / "f", {"a.txt": "bad"}), "f", "no image files"),
    ],
)
def test_bad_sources(tmp_path, make, name, needle):
    make(tmp_path)
    with pytest.raises(InputError, match=needle) as err:
        open_source(tmp_path / name)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_npy_named_npz_is_explained(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 4, 4, 3), np.uint8))
    (tmp_path / "x.npy").rename(tmp_path / "x.npz")
    with pytest.raises(InputError, match="not a .npz archive"):
        open_source(tmp_path / "x.npz")


def test_folder_with_classes_skips_corrupt_files(tmp_path):
    _folder(tmp_path, {"cat/a.png": "good", "dog/a.PNG": "good", "dog/broken.jpg": "bad"})
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    src = open_source(tmp_path)
    assert (src.kind, src.count, src.labels.tolist()) == ("folder", 3, [0, 1, 1])
    x, idx = src.read([2, 1, 0], (3, 8, 8))
    assert x.shape == (2, 3, 8, 8) and idx.tolist() == [1, 0]  # dog/a.PNG, cat/a.png; not broken
    s = load_images(tmp_path)
    assert len(s.images) == 2 and s.skipped == 1 and s.labels.tolist() == [0, 1]
    pool = load_pool(src, (1, 8, 8))
    assert pool.images.shape == (2, 1, 8, 8) and (pool.total, pool.skipped) == (3, 1)


def test_folder_labels_use_top_level_subfolders_only(tmp_path):
    _folder(tmp_path / "a", {"x/deep/1.png": "good", "y/2.png": "good", "y/z/3.png": "good"})
    assert open_source(tmp_path / "a").labels.tolist() == [0, 1, 1]
    _folder(tmp_path / "b", {"root.png": "good", "x/1.png": "good"})
    assert open_source(tmp_path / "b").labels is None


def test_folder_without_readable_image_fails_when_read(tmp_path):
    _folder(tmp_path, {"a.jpg": "bad", "sub/b.png": "bad"})
    src = open_source(tmp_path)
    with pytest.raises(InputError, match="none of the 2 image files could be read"):
        load_pool(src, (3, 8, 8))
    with pytest.raises(InputError, match="none of the 2 image files"):
        list(iter_batches(src, (3, 8, 8)))
    with pytest.raises(InputError, match=str(tmp_path.name)):
        load_images(tmp_path)


def test_builtin_pool_is_deterministic_per_seed_and_index():
    src = open_source(BUILTIN, builtin_images=64, seed=3)
    assert (src.kind, src.count, src.labels) == ("builtin", 64, None)
    a, idx = src.read(range(64), (3, 32, 32))
    assert a.shape == (64, 3, 32, 32) and a.dtype == torch.uint8 and idx.tolist() == list(range(64))
    assert a.float().std() > 20 and a.float().flatten(1).std(1).min() > 1  # no flat images
    assert torch.equal(src.read([40, 5], (3, 32, 32))[0], a[[40, 5]])  # any subset, same pixels
    assert torch.equal(open_source(BUILTIN, seed=3).read(range(8), (3, 32, 32))[0], a[:8])
    other = open_source(BUILTIN, seed=4).read(range(64), (3, 32, 32))[0]
    assert not torch.equal(other, a)


@pytest.mark.parametrize("chw", [(3, 32, 32), (1, 28, 28), (3, 224, 224), (3, 24, 40)])
def test_builtin_pool_shapes(chw):
    x, _ = open_source(BUILTIN).read(range(8), chw)
    assert x.shape == (8, *chw) and x.float().std() > 10


def test_builtin_literal_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    _folder(tmp_path, {"builtin/a.png": "good"})
    monkeypatch.chdir(tmp_path)
    assert open_source("builtin").kind == "builtin"
    assert open_source("./builtin").kind == "folder"


def test_builtin_missing_package_says_what_to_install(monkeypatch):
    real = _builtin_pool.importlib.util.find_spec
    monkeypatch.setattr(
        _builtin_pool.importlib.util,
        "find_spec",
        lambda name: None if name == "sklearn" else real(name),
    )
    _builtin_pool.photo_paths.cache_clear()
    try:
        with pytest.raises(InputError, match="install scikit-learn"):
            open_source(BUILTIN)
    finally:
        _builtin_pool.photo_paths.cache_clear()


def test_load_pool_limit_is_a_deterministic_subset_read_in_batches(tmp_path):
    imgs = _imgs(50)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(50))
    src = open_source(tmp_path / "a.npz")
    sizes = []
    real_read = src.read
    object.__setattr__(src, "read", lambda i, chw: (sizes.append(len(i)), real_read(i, chw))[1])
    pool = load_pool(src, (3, 8, 8), limit=20, seed=1, batch=8)
    assert pool.images.shape == (20, 3, 8, 8) and max(sizes) <= 8 and sum(sizes) == 20
    assert len(set(pool.labels.tolist())) == 20 and (pool.total, pool.skipped) == (50, 0)
    assert torch.equal(pool.images, torch.from_numpy(imgs[pool.labels]).permute(0, 3, 1, 2))
    again = load_pool(src, (3, 8, 8), limit=20, seed=1, batch=8)
    assert torch.equal(again.images, pool.images)
    assert load_pool(src, (3, 8, 8), limit=20, seed=2).labels.tolist() != pool.labels.tolist()
    assert load_pool(src, (3, 8, 8)).labels.tolist() == list(range(50))
    assert load_pool(src, (3, 8, 8), limit=500).images.shape[0] == 50


def test_load_pool_replaces_unreadable_picks(tmp_path):
    _folder(tmp_path, {f"{k}.png": ("bad" if k % 2 else "good") for k in range(8)})
    src = open_source(tmp_path)
    pool = load_pool(src, (3, 8, 8), limit=4, seed=0, batch=2)
    assert pool.images.shape[0] == 4 and pool.total == 8 and pool.skipped > 0


def test_iter_batches_streams_in_order(tmp_path):
    imgs = _imgs(10)
    np.save(tmp_path / "a.npy", imgs)
    src = open_source(tmp_path / "a.npy")
    chunks = list(iter_batches(src, (3, 8, 8), batch=4))
    assert [len(c.images) for c in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat([c.images for c in chunks]), src.read(range(10), (3, 8, 8))[0])
    assert [len(c.images) for c in iter_batches(src, (3, 8, 8), batch=4, limit=5)] == [4, 1]


def test_iter_batches_counts_every_skip(tmp_path):
    bad = {0, 1, 3, 5, 6}  # chunks of 2: [bad bad] [good bad] [good bad] [bad]
    _folder(
        tmp_path,
        {f"{'a' if k < 4 else 'b'}/{k}.png": "bad" if k in bad else "good" for k in range(7)},
    )
    chunks = list(iter_batches(open_source(tmp_path), (3, 8, 8), batch=2))
    assert [len(c.images) for c in chunks] == [1, 1] and [c.skipped for c in chunks] == [3, 2]
    assert np.concatenate([c.labels for c in chunks]).tolist() == [0, 1]


def test_fit_images_channels_and_exact_passthrough():
    imgs = _imgs(2, 8, 8, 4)
    assert torch.equal(
        fit_images(imgs, (3, 8, 8)), torch.from_numpy(imgs[..., :3]).permute(0, 3, 1, 2)
    )
    gray = fit_images(np.full((1, 8, 8, 3), (255, 0, 0), np.uint8), (1, 4, 4))
    assert gray.shape == (1, 1, 4, 4) and torch.all(gray == 76)  # round(0.299 * 255)
    with pytest.raises(UnsupportedModelError, match="2 channels"):
        fit_images(imgs, (2, 8, 8))


def test_to_model_input_resizes_crops_and_converts_channels():
    imgs = np.full((2, 64, 48, 3), 255, np.uint8)
    x = to_model_input(imgs, (3, 32, 32))
    assert x.shape == (2, 3, 32, 32) and torch.allclose(x, torch.ones_like(x))
    g = to_model_input(imgs, (1, 16, 16))
    assert g.shape == (2, 1, 16, 16) and torch.allclose(g, torch.ones_like(g), atol=1e-5)
    pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    n = to_model_input(imgs, (3, 32, 32), preprocess=pre)
    assert torch.allclose(n, torch.full_like(n, 2.0))


def test_normalize_mean_std():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # 1 x 2 x 1 x 2
    y = normalize(x, mean=(0.5, 0.2), std=(0.5, 0.1))
    assert torch.allclose(y, torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]]), atol=1e-6)
    assert torch.equal(normalize(x.float() / 255), x.float() / 255)
    assert torch.allclose(normalize(x, mean=(0.5,)), x.float() / 255 - 0.5)
    with pytest.raises(ConfigError, match="3 values"):
        normalize(x, std=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="positive"):
        normalize(x, std=(0.0,))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x93NUMPY\x01\x00\x10\x00{'descr': '<u1',\n" + b" " * 8,  # header cut mid-dict
        b"\x93NUMPY\x09\x00" + b"x" * 40,  # unknown format version
    ],
)
def test_damaged_npy_headers_are_input_errors(tmp_path, payload):
    # found by the fuzzer: numpy raised tokenize.TokenError / NotImplementedError
    (tmp_path / "x.npy").write_bytes(payload)
    with pytest.raises(InputError, match="cannot read the .npy"):
        open_source(tmp_path / "x.npy")


def test_unsupported_zip_features_are_input_errors(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "x.npz", "w", compression=zipfile.ZIP_BZIP2) as z:
        z.writestr("images.npy", b"\x93NUMPY")
    data = bytearray((tmp_path / "x.npz").read_bytes())
    data[data.index(b"PK\x01\x02") + 10] = 99  # a compression method zipfile does not know
    (tmp_path / "x.npz").write_bytes(bytes(data))
    with pytest.raises(InputError, match="cannot read the .npz"):
        open_source(tmp_path / "x.npz")


def test_a_decompression_bomb_header_is_skipped_without_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    # valid PNG headers claiming 50,000 x 50,000 RGB pixels (7.5 GB decoded; PIL refuses it) and
    # 12,000 x 10,000 (PIL would only warn, on stderr, and decode it), a few bytes each
    for name, w, h in (("bomb.png", 50_000, 50_000), ("big.png", 12_000, 10_000)):
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
        png += chunk(b"IDAT", zlib.compress(b"\0" * 64))
        (tmp_path / name).write_bytes(png + chunk(b"IEND", b""))
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "ok.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = load_pool(open_source(tmp_path), (3, 8, 8))
    assert len(pool.images) == 1 and pool.skipped == 2
    assert not caught  # a warning would be a second line on stderr
    (tmp_path / "ok.png").unlink()
    with pytest.raises(InputError, match="could be read"):
        load_pool(open_source(tmp_path), (3, 8, 8))
