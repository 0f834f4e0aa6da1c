"""The native LSQ quantizer (kernels/core/lsq.cpp) against the torch formulation it replaces."""

from __future__ import annotations

import pytest
import torch

from zerop_deploy.native_tensors import library
from zerop_deploy.quant import native_lsq
from zerop_deploy.quant.primitives import lsq_fake_quantize

pytestmark = pytest.mark.skipif(
    library("lsq_forward") is None, reason="the native kernels are not built"
)


def _run(x0, scale, qmin, qmax, zp, native, g, monkeypatch):
    monkeypatch.setattr(native_lsq, "ENABLED", native)
    x = x0.detach().clone().requires_grad_()
    s = torch.tensor(scale, requires_grad=True)
    y = lsq_fake_quantize(x, s, qmin, qmax, None, 0.37, zp)
    y.backward(g)
    return y.detach(), x.grad, s.grad


def _inputs(shape, channels_last, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 3
    # exact ties and range ends: half-integer levels round to even, the ends count as inside
    flat = x.view(-1)
    flat[:6] = torch.tensor([0.25, 0.75, -0.25, 3.75, 1.75, -2.0])
    g = torch.randn(shape, generator=gen)
    if channels_last:
        x, g = (
            x.contiguous(memory_format=torch.channels_last),
            g.contiguous(memory_format=torch.channels_last),
        )
    return x, g


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "qmin,qmax,zp", [(0, 15, None), (-8, 7, None), (0, 255, None), (-8, 7, -3.0), (-128, 127, 5.0)]
)
def test_native_lsq_equals_the_torch_path(channels_last, qmin, qmax, zp, monkeypatch):
    # 3 x 5 x 67 x 71 = 71,355 values: three kernel blocks and a tail that is no multiple of 8
    x, g = _inputs((3, 5, 67, 71), channels_last, seed=qmax)
    z = None if zp is None else torch.tensor(zp)
    scale = 0.5 if qmax < 16 else 0.03125  # both clip part of the values
    assert native_lsq.applies(x, torch.tensor(scale), None) is not None
    y_n, gx_n, gs_n = _run(x, scale, qmin, qmax, z, True, g, monkeypatch)
    y_t, gx_t, gs_t = _run(x, scale, qmin, qmax, z, False, g, monkeypatch)
    assert torch.equal(y_n, y_t)
    assert y_n.stride() == x.stride()  # the output keeps the input's memory format
    assert torch.equal(gx_n, gx_t)
    assert float((gx_n == 0).float().mean()) > 0.01  # some values were clipped
    assert torch.allclose(gs_n, gs_t, rtol=1e-4, atol=1e-6)


def test_native_lsq_gradient_in_another_memory_format(monkeypatch):
    x, g = _inputs((2, 4, 9, 11), channels_last=True, seed=0)
    g = g.contiguous()  # autograd may hand back a gradient laid out unlike the input
    y_n, gx_n, gs_n = _run(x, 0.3, 0, 15, None, True, g, monkeypatch)
    y_t, gx_t, gs_t = _run(x, 0.3, 0, 15, None, False, g, monkeypatch)
    assert torch.equal(gx_n, gx_t) and torch.allclose(gs_n, gs_t, rtol=1e-4, atol=1e-6)


def test_native_lsq_step_size_gradient_does_not_depend_on_the_thread_count(monkeypatch):
    x, g = _inputs((4, 8, 64, 64), channels_last=False, seed=3)
    before = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            grads.append(_run(x, 0.2, -8, 7, None, True, g, monkeypatch)[2])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_native_lsq_keeps_nan(monkeypatch):
    x = torch.tensor([1.0, float("nan"), -3.0, 100.0] * 5)
    y_n, gx_n, _ = _run(x, 0.5, 0, 15, None, True, torch.ones(20), monkeypatch)
    y_t, gx_t, _ = _run(x, 0.5, 0, 15, None, False, torch.ones(20), monkeypatch)
    assert torch.equal(y_n.isnan(), y_t.isnan()) and y_n.isnan().sum() == 5
    assert torch.equal(y_n.nan_to_num(), y_t.nan_to_num()) and torch.equal(gx_n, gx_t)


def test_other_tensors_keep_the_torch_path():
    s = torch.tensor(0.5)
    assert native_lsq.applies(torch.randn(4, 4).double(), s, None) is None
    assert native_lsq.applies(torch.randn(4, 4), torch.ones(4), 0) is None  # per channel
    assert native_lsq.applies(torch.randn(4, 6)[:, ::2], s, None) is None  # not dense
