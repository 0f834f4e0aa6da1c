"""The feature loss on the native kernels (kernels/core/feature_mse.cpp) against torch's."""

from __future__ import annotations

import pytest
import torch

from zerop_deploy.native_tensors import library
from zerop_deploy.quant import distill

pytestmark = pytest.mark.skipif(
    library("feature_mse_forward") is None, reason="the native kernels are not built"
)


def _both(s, t, monkeypatch):
    out = {}
    for native in (True, False):
        monkeypatch.setattr(distill, "NATIVE", native)
        si = s.detach().clone().requires_grad_(True)
        err, power = distill.image_mse(si, t)
        g = torch.linspace(0.5, 2.0, err.numel())
        (err * g).sum().backward()
        out[native] = (err.detach(), power, si.grad)
    return out


@pytest.mark.parametrize(
    "s_format, t_format",
    [("nchw", "nchw"), ("nhwc", "nhwc"), ("nhwc", "nchw")],
    ids=["contiguous", "channels_last", "mixed"],
)
def test_native_image_mse_equals_torch(s_format, t_format, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    shape = (3, 5, 67, 71)  # 23,785 values an image: blocks of one image never span two
    fmt = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
    s = torch.randn(shape, generator=gen).contiguous(memory_format=fmt[s_format])
    t = (torch.randn(shape, generator=gen) * 2).contiguous(memory_format=fmt[t_format])
    got = _both(s, t, monkeypatch)
    for a, b in zip(got[True], got[False], strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert got[True][2].stride() == s.stride()  # the gradient in the student's layout


def test_native_image_mse_sums_do_not_depend_on_the_thread_count(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 40000, 3, generator=gen), torch.randn(4, 40000, 3, generator=gen)
    monkeypatch.setattr(distill, "NATIVE", True)
    old = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(distill.image_mse(s, t)[0])
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_other_tensors_keep_the_torch_path(monkeypatch):
    monkeypatch.setattr(distill, "NATIVE", True)
    s = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    err, _ = distill.image_mse(s, torch.randn(2, 3, 4, 4, dtype=torch.float64))
    assert "ImageMse" not in type(err.grad_fn).__name__
    s = torch.randn(2, 6, 4, requires_grad=True)
    err, _ = distill.image_mse(s, torch.randn(2, 6, 8)[:, :, ::2])  # not dense: copied, native
    assert "ImageMse" in type(err.grad_fn).__name__
