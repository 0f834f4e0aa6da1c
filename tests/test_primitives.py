import numpy as np
import pytest
import torch

from zerop_deploy.quant import primitives as P


def test_int_range():
    assert P.int_range(4, signed=True) == (-8, 7)
    assert P.int_range(4, signed=True, narrow=True) == (-7, 7)
    assert P.int_range(8, signed=False) == (0, 255)
    with pytest.raises(ValueError):
        P.int_range(1, signed=True)


def test_worked_example_from_docstring():
    w = torch.tensor([[0.30, -0.72, 0.05, 0.70]])
    s = P.symmetric_scale(w, 4, axis=0)
    assert s.item() == pytest.approx(0.72 / 7)
    q = P.quantize(w, s, qmin=-7, qmax=7, axis=0)
    assert q.tolist() == [[3.0, -7.0, 0.0, 7.0]]
    deq = P.dequantize(q, s, axis=0)
    assert torch.allclose(deq, torch.tensor([[3, -7, 0, 7]]) * 0.72 / 7)


def test_quantize_rounds_half_to_even_like_onnx():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])
    assert P.quantize(x, torch.tensor(1.0), qmin=-8, qmax=7).tolist() == [0, 2, 2, -0, -2]


def test_fake_quantize_forward_equals_quant_dequant_and_has_ste_gradients():
    torch.manual_seed(0)
    x = (torch.randn(4, 6) * 3).requires_grad_()
    scale = torch.tensor([0.5, 0.25, 1.0, 0.1]).requires_grad_()
    y = P.fake_quantize(x, scale, qmin=-8, qmax=7, axis=0)
    ref = P.dequantize(
        P.quantize(x.detach(), scale.detach(), qmin=-8, qmax=7, axis=0), scale.detach(), axis=0
    )
    assert torch.equal(y.detach(), ref)
    y.sum().backward()
    v = x.detach() / scale.detach()[:, None]
    inside = (v >= -8) & (v <= 7)
    assert torch.equal(x.grad, inside.float())
    assert scale.grad is not None and torch.isfinite(scale.grad).all()


def test_fake_quantize_learns_zero_point():
    x = torch.linspace(0.0, 2.0, 11)
    zp = torch.tensor(3.2, requires_grad=True)
    y = P.fake_quantize(x, torch.tensor(0.1), zp, qmin=0, qmax=15)
    y.sum().backward()
    assert zp.grad is not None and zp.grad.abs() > 0


def test_pack_unpack_roundtrip_odd_k():
    rng = np.random.default_rng(0)
    w = rng.integers(-8, 8, size=(5, 7)).astype(np.int8)
    packed = P.pack_int4(w)
    assert packed.shape == (5, 4) and packed.dtype == np.uint8
    assert packed[0, 0] == ((int(w[0, 0]) & 0xF) | ((int(w[0, 1]) & 0xF) << 4))
    assert np.array_equal(P.unpack_int4(packed, 7), w)
    with pytest.raises(ValueError):
        P.pack_int4(np.array([[8]]))


def test_quantize_rows_int8_rule():
    x = np.array([[0.0, 0.0], [1.0, -0.5], [127.0, 63.5]], dtype=np.float32)
    q, s = P.quantize_rows_int8(x)
    assert s.tolist() == [1.0, pytest.approx(1 / 127), 1.0]
    assert q.tolist() == [
        [0, 0],
        [127, -64],
        [127, 64],
    ]  # -63.5 -> -64 and 63.5 -> 64 (half to even)


def test_matmul_int4_reference_matches_float_math():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 70)).astype(np.float32)
    w = rng.integers(-8, 8, size=(9, 70)).astype(np.int8)
    scales = rng.uniform(0.01, 0.1, size=(3, 9)).astype(np.float32)  # groups of 32 over K=70
    bias = rng.standard_normal(9).astype(np.float32)
    y = P.matmul_int4_reference(x, w, scales, bias=bias, group_size=32)
    q, s = P.quantize_rows_int8(x)
    wf = w.astype(np.float64) * np.repeat(scales, 32, axis=0)[:70].T
    expect = (q.astype(np.float64) * s[:, None]) @ wf.T + bias
    assert np.allclose(y, expect, rtol=1e-5, atol=1e-5)
