"""The proxy images quantize trains on: held in memory, or streamed when they are too big."""

import numpy as np
import torch
from PIL import Image

from zerop_deploy.config import DataConfig
from zerop_deploy.data.sources import open_source
from zerop_deploy.proxy.select import Sources, StreamedImages, proxy_data


def _folder(tmp_path, n=30):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(n):
        Image.new("RGB", (12, 12), color=(i * 8, 255 - i * 8, 100)).save(d / f"{i:03d}.png")
    (d / "015.png").write_bytes(b"\x89PNG but broken")  # one unreadable file
    return d


def test_big_sets_are_streamed_and_small_ones_held(tmp_path):
    d = _folder(tmp_path)
    # the teacher only runs once on the first images (a finiteness check): any module does
    kw = dict(teacher=torch.nn.Identity(), proto=None, chw=(3, 8, 8), seed=0)
    cfg = DataConfig(proxy=str(d), holdout=0.2)
    held = proxy_data(cfg, sources=Sources(cfg, 0), **kw)
    assert isinstance(held.train, torch.Tensor) and held.section["streamed"] is False
    assert held.section["skipped_files"] == 1 and len(held.train) + len(held.holdout) == 29
    small = DataConfig(proxy=str(d), holdout=0.2, max_pool_bytes=10 * 3 * 8 * 8)
    streamed = proxy_data(small, sources=Sources(small, 0), **kw)
    assert isinstance(streamed.train, StreamedImages) and streamed.section["streamed"] is True
    assert len(streamed.train) == 24 and len(streamed.holdout) == 6
    batch = streamed.train[torch.tensor([0, 5, 5, 23])]
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 8, 8)
    assert torch.equal(batch[1], batch[2])
    assert torch.equal(streamed.train[torch.tensor([0, 5])], batch[:2])  # a function of indices
    assert streamed.train[:3].shape == (3, 3, 8, 8)


def test_an_unreadable_file_is_replaced_within_its_batch(tmp_path):
    d = _folder(tmp_path)
    src = open_source(d)
    bad = [i for i, f in enumerate(sorted(d.iterdir())) if f.name == "015.png"][0]
    pool = StreamedImages([src], np.array([[0, 1], [0, bad], [0, 2]]), (3, 8, 8))
    x = pool[np.arange(3)]
    assert torch.equal(x[1], x[0])  # the broken file's slot holds a readable image
    assert x.float().std() > 0


def test_quantize_trains_on_streamed_images(tmp_path, cnn_bn):
    import onnx

    from zerop_deploy.api import quantize
    from zerop_deploy.config import RunConfig, TrainConfig

    onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
    d = _folder(tmp_path, n=40)
    doc = quantize(
        tmp_path / "m.onnx",
        train=TrainConfig(steps=3, batch_size=8, calib_images=16),
        data=DataConfig(proxy=str(d), max_pool_bytes=1000),
        run=RunConfig(output=tmp_path / "q.onnx", progress=False),
    )
    assert doc["proxy"]["streamed"] is True and doc["training"]["steps"] == 3
    assert doc["validation"]["images"] == 4 and (tmp_path / "q.onnx").is_file()


def test_auto_shows_a_bar_over_the_candidates_on_a_terminal(tmp_path, cnn_bn, monkeypatch):
    import io
    import sys

    from zerop_deploy.load.to_torch import convert_model

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    a, b = _folder(tmp_path), tmp_path / "b.npy"
    np.save(b, np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8))
    cfg = DataConfig(proxy="auto", candidates=(str(a), str(b)), samples=8)
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    teacher = convert_model(cnn_bn).eval()
    got = proxy_data(cfg, teacher, cnn_bn, (3, 16, 16), 0, Sources(cfg, 0), progress=True)
    assert got.section["method"] == "bns" and len(got.section["ranking"]) == 2
    assert "scoring candidates" in err.getvalue() and "2/2" in err.getvalue()


def test_a_model_that_computes_nan_on_the_proxy_images_is_refused_before_training(tmp_path):
    import pytest

    from tests.helpers import log_of_one_minus_input_model
    from zerop_deploy.errors import InputError
    from zerop_deploy.load.to_torch import convert_model

    proto = log_of_one_minus_input_model()  # -inf on a 255 pixel
    teacher = convert_model(proto)
    d = tmp_path / "red"
    d.mkdir()
    for i in range(20):
        Image.new("RGB", (12, 12), color=(255, i * 8, 100)).save(d / f"{i:03d}.png")
    for max_pool_bytes in (256 << 20, 1000):  # held and streamed
        cfg = DataConfig(proxy=str(d), max_pool_bytes=max_pool_bytes)
        with pytest.raises(InputError, match=r"proxy images: node 'log_b' \(Log\) is the first"):
            proxy_data(cfg, teacher, proto, (3, 16, 16), 0, Sources(cfg, 0))
