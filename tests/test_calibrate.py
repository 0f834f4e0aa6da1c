"""The vectorised MSE step-size searches give bit for bit what the old per-ratio loops gave.

Exported models are promised byte-identical for a fixed seed, so the calibrated step sizes must not
move by one ulp. ``_ref_*`` below are the loops calibrate.py had before (one ``fake_quantize`` per
clipping ratio, through its autograd straight-through path), kept here as the reference.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from zerop_deploy.quant import calibrate
from zerop_deploy.quant.calibrate import (
    _RATIOS,
    mse_activation_qparams,
    mse_activation_scale,
    mse_weight_scales,
)
from zerop_deploy.quant.primitives import fake_quantize

# --------------------------------------------------------------------------------------------------
# the reference: the loops as they were
# --------------------------------------------------------------------------------------------------


def _ref_weight_scales(w: torch.Tensor, axis: int, qmin: int, qmax: int) -> torch.Tensor:
    wc = w.detach().float().movedim(axis, 0).reshape(w.shape[axis], -1)
    amax = wc.abs().amax(dim=1).clamp_min(1e-8)
    best_err = torch.full_like(amax, float("inf"))
    best = amax / qmax
    for r in _RATIOS:
        s = r * amax / qmax
        err = (fake_quantize(wc, s, qmin=qmin, qmax=qmax, axis=0) - wc).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def _ref_activation_scale(values: torch.Tensor, qmin: int, qmax: int) -> float:
    v = values.float()
    amax = float(v.clamp_min(0).max() if qmin == 0 else v.abs().max())
    if amax <= 0:
        return 1.0
    top = qmax if qmin == 0 else max(qmax, -qmin)
    best_s, best_err = amax / top, float("inf")
    for r in _RATIOS:
        s = float(r) * amax / top
        err = float((fake_quantize(v, torch.tensor(s), qmin=qmin, qmax=qmax) - v).pow(2).mean())
        if err < best_err:
            best_s, best_err = s, err
    return best_s


def _ref_activation_qparams(values: torch.Tensor, qmin: int, qmax: int) -> tuple[float, int]:
    v = values.float()
    s0 = _ref_activation_scale(v, qmin, qmax)
    best = (
        s0,
        0,
        float((fake_quantize(v, torch.tensor(s0), qmin=qmin, qmax=qmax) - v).pow(2).mean()),
    )
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    if hi - lo <= 0:
        return best[0], best[1]
    for r in _RATIOS:
        s = float(r) * (hi - lo) / (qmax - qmin)
        z = int(min(qmax, max(qmin, round(qmin - float(r) * lo / s))))
        err = float((fake_quantize(v, torch.tensor(s), z, qmin=qmin, qmax=qmax) - v).pow(2).mean())
        if err < best[2]:
            best = (s, z, err)
    return best[0], best[1]


def _ref_weight_errors(w: torch.Tensor, axis: int, qmin: int, qmax: int):
    """The old loop's ``[C, K]`` weight, its per-ratio scales and errors (stacked)."""
    wc = w.detach().float().movedim(axis, 0).reshape(w.shape[axis], -1)
    amax = wc.abs().amax(dim=1).clamp_min(1e-8)
    scales = [r * amax / qmax for r in _RATIOS]
    errs = [
        (fake_quantize(wc, s, qmin=qmin, qmax=qmax, axis=0) - wc).pow(2).sum(dim=1) for s in scales
    ]
    return wc, torch.stack(scales), torch.stack(errs)


def _ref_act_candidates(v: torch.Tensor, qmin: int, qmax: int):
    """The old loops' candidates: symmetric scales, then asymmetric ``(scales, zero points)``."""
    amax = float(v.clamp_min(0).max() if qmin == 0 else v.abs().max())
    top = qmax if qmin == 0 else max(qmax, -qmin)
    sym = [float(r) * amax / top for r in _RATIOS]
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    if hi - lo <= 0:
        return sym, [], []
    scales = [float(r) * (hi - lo) / (qmax - qmin) for r in _RATIOS]
    zps = [
        int(min(qmax, max(qmin, round(qmin - float(r) * lo / s))))
        for r, s in zip(_RATIOS, scales, strict=True)
    ]
    return sym, scales, zps


def _ref_act_error(v: torch.Tensor, s: float, z: int, qmin: int, qmax: int) -> float:
    return float((fake_quantize(v, torch.tensor(s), z, qmin=qmin, qmax=qmax) - v).pow(2).mean())


def _check_weight_errors(w: torch.Tensor, axis: int, qmin: int, qmax: int) -> None:
    """Every per-ratio error sum, not only the winner, is bit-identical."""
    wc, scales, want = _ref_weight_errors(w, axis, qmin, qmax)
    amax = wc.abs().amax(dim=1).clamp_min(1e-8)
    assert _same_bits(_RATIOS[:, None] * amax / qmax, scales)  # the scales mse_weight_scales uses
    got = calibrate._weight_errors(wc, scales, qmin, qmax)
    assert _same_bits(got, want), (tuple(w.shape), axis, (got != want).nonzero()[:5])


def _check_act_errors(v: torch.Tensor, qmin: int, qmax: int) -> None:
    """Every candidate's error, not only the winner's, is bit-identical."""
    v = v.float()
    sym, scales, zps = _ref_act_candidates(v, qmin, qmax)
    if all(s > 0 for s in sym):
        want = [_ref_act_error(v, s, 0, qmin, qmax) for s in sym]
        assert calibrate._act_errors(v, sym, None, qmin, qmax) == want, v.shape
    if qmin < 0 and scales:
        want = [_ref_act_error(v, s, z, qmin, qmax) for s, z in zip(scales, zps, strict=True)]
        assert calibrate._act_errors(v, scales, zps, qmin, qmax) == want, v.shape


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------


def _values(kind: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=g)
    if kind == "normal":
        return x * 0.05
    if kind == "heavy":  # Student-t-like: a few huge outliers per channel
        return x / torch.rand(shape, generator=g).clamp_min(1e-3).sqrt() * 0.01
    if kind == "cubed":
        return x**3
    if kind == "outlier":
        x = x * 0.1
        x.view(-1)[:: max(1, x.numel() // 7)] = 25.0
        return x
    if kind == "grid":  # values on a quantization grid: many ratios tie on small errors
        return torch.randint(-7, 8, shape, generator=g).float() * 0.125
    if kind == "tiny":  # below the 1e-8 floor of amax
        return x * 1e-10
    if kind == "positive":
        return x.abs() * 3 + 0.5
    if kind == "mostly_positive":
        return torch.rand(shape, generator=g) * 3 - 0.3
    if kind == "zeros":
        return torch.zeros(shape)
    raise AssertionError(kind)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(torch.int32), b.view(torch.int32))
    )


def _same_float(a: float, b: float) -> bool:
    return type(a) is type(b) and (a == b or (math.isnan(a) and math.isnan(b)))


@pytest.fixture(params=[None, 2000], ids=["default-chunk", "chunk-2000"])
def chunk(request, monkeypatch):
    """The default step of the vectorised search, and a small one: several steps, channel blocks."""
    if request.param is not None:
        monkeypatch.setattr(calibrate, "_CHUNK_ELEMENTS", request.param)
    return request.param


@pytest.fixture(autouse=True)
def _one_thread():
    """Run on one thread: fast on a shared machine; where threads matter, a test sets 1 and 2.

    The thread count changes the order of a sum over 32768 values or more (split among threads),
    the same way for the old loops and the new searches; test_bit_identical_with_1_and_2_threads
    covers it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# (shape, channel axis): Conv, depthwise Conv, 1x1 Conv, ConvTranspose (axis 1), Gemm [N, K]
# (axis 0), Gemm with transB=0 / MatMul (axis 1, the last: a column-major [C, K] view, with more
# than 64 channels so that the sum runs in full groups of vector lanes and a remainder), 1x1
# ConvTranspose and 3-D MatMul weights (column-major too), one channel with a row long enough that
# its sum is split among threads, three such rows, one value per channel.
_WEIGHT_SHAPES = [
    ((32, 16, 3, 3), 0),
    ((24, 1, 3, 3), 0),
    ((40, 24, 1, 1), 0),
    ((12, 20, 4, 4), 1),
    ((30, 48), 0),
    ((48, 30), 1),
    ((37, 150), 1),
    ((6, 90, 1, 1), 1),
    ((3, 5, 70), 2),
    ((1, 40000), 0),
    ((3, 33000), 0),
    ((17, 1), 0),
]
# (shape, axis, _CHUNK_ELEMENTS): sums over 32768 values, which threads split: one long row in
# parts, blocks of long rows (here two blocks of 2 and 3 channels), columns of a column-major one
_THREAD_SPLIT_CASES = [
    ((1, 40000), 0, calibrate._CHUNK_ELEMENTS),
    ((5, 33000), 0, 2000),
    ((300, 150), 1, calibrate._CHUNK_ELEMENTS),
]

# (distribution, integer range): int4 and int8 narrow weights, and a 2-bit one
_WEIGHT_CASES = [
    ("normal", (-7, 7)),
    ("normal", (-127, 127)),
    ("heavy", (-7, 7)),
    ("heavy", (-127, 127)),
    ("cubed", (-7, 7)),
    ("outlier", (-7, 7)),
    ("grid", (-7, 7)),
    ("grid", (-1, 1)),
    ("tiny", (-127, 127)),
]


@pytest.mark.parametrize(("kind", "qrange"), _WEIGHT_CASES, ids=str)
def test_weight_scales_bit_identical(kind, qrange, chunk):
    g = torch.Generator().manual_seed(zlib.crc32(repr((kind, qrange)).encode()))
    for shape, axis in _WEIGHT_SHAPES:
        w = _values(kind, shape, g)
        if shape[axis] > 2:  # all-zero channels: every ratio ties at error 0, the first one wins
            w.select(axis, 1).zero_()
            w.select(axis, shape[axis] - 1).zero_()
        want = _ref_weight_scales(w, axis, *qrange)
        got = mse_weight_scales(w, axis, *qrange)
        assert _same_bits(got, want), (shape, axis, (got != want).nonzero()[:5])
        _check_weight_errors(w, axis, *qrange)


def test_weight_scales_bit_identical_on_random_shapes(chunk):
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        c = int(torch.randint(1, 150, (1,), generator=g))
        k = int(torch.randint(1, 300, (1,), generator=g))
        w = _values("heavy" if seed % 2 else "normal", (c, k), g)
        qrange = (-7, 7) if seed % 3 else (-127, 127)
        for x, axis in ((w, 0), (w.t(), 1)):  # row-major and column-major [C, K]
            want = _ref_weight_scales(x, axis, *qrange)
            assert _same_bits(mse_weight_scales(x, axis, *qrange), want), (seed, c, k, axis)
            _check_weight_errors(x, axis, *qrange)


@pytest.mark.parametrize("threads", [1, 2])
def test_bit_identical_with_1_and_2_threads(threads, monkeypatch):
    """Sums of over 32768 values are split among threads: the same way as before."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(threads)
    for shape, axis, budget in _THREAD_SPLIT_CASES:
        monkeypatch.setattr(calibrate, "_CHUNK_ELEMENTS", budget)
        w = _values("heavy", shape, g)
        assert _same_bits(mse_weight_scales(w, axis, -7, 7), _ref_weight_scales(w, axis, -7, 7))
        _check_weight_errors(w, axis, -7, 7)
    v = _values("mostly_positive", (40000,), g)
    assert mse_activation_qparams(v, -8, 7) == _ref_activation_qparams(v, -8, 7)
    _check_act_errors(v, -8, 7)


def test_weight_scales_of_a_large_layer_in_channel_blocks():
    """2.4M values, over the default step: one ratio and a block of channels at a time."""
    g = torch.Generator().manual_seed(7)
    w = _values("heavy", (1200, 512, 2, 2), g)
    assert w[0].numel() * len(w) > calibrate._CHUNK_ELEMENTS
    assert _same_bits(mse_weight_scales(w, 0, -7, 7), _ref_weight_scales(w, 0, -7, 7))
    _check_weight_errors(w, 0, -7, 7)


@pytest.mark.parametrize(
    "budget", [None, 2000, 40], ids=["default-chunk", "chunk-2000", "chunk-40"]
)
def test_weight_scales_of_other_memory_layouts(budget, monkeypatch):
    """Transposed, channels-last and strided weights (the error tensors' layouts follow them)."""
    if budget is not None:  # 40: blocks of two channels
        monkeypatch.setattr(calibrate, "_CHUNK_ELEMENTS", budget)
    g = torch.Generator().manual_seed(13)
    base = _values("heavy", (130, 96), g)
    conv = _values("cubed", (70, 8, 3, 3), g)
    cases = [
        (base.t(), 0),  # column-major [C, K]
        (base.t(), 1),  # row-major after movedim
        (base[:, ::2], 0),  # strided: not dense
        (base[::2], 1),
        (conv.permute(0, 2, 3, 1), 0),  # channels-last
        (conv.permute(1, 0, 2, 3), 1),
        (conv[:, :1].permute(1, 0, 2, 3).reshape(1, 70, 3, 3)[:, :, :1, :1], 1),
    ]
    for w, axis in cases:
        for qrange in ((-7, 7), (-127, 127)):
            want = _ref_weight_scales(w, axis, *qrange)
            assert _same_bits(mse_weight_scales(w, axis, *qrange), want), (
                w.shape,
                w.stride(),
                axis,
            )
            _check_weight_errors(w, axis, *qrange)


def test_weight_scales_of_non_float32_and_grad_weights():
    g = torch.Generator().manual_seed(3)
    w = _values("heavy", (16, 8, 3, 3), g)
    for x in (w.double(), w.half(), w.bfloat16(), w.clone().requires_grad_()):
        got = mse_weight_scales(x, 0, -7, 7)
        assert not got.requires_grad
        assert _same_bits(got, _ref_weight_scales(x, 0, -7, 7)), x.dtype


def test_weight_scales_nan_channel_is_the_old_nan():
    w = torch.randn(4, 50)
    w[2, 3] = float("nan")
    assert _same_bits(mse_weight_scales(w, 0, -7, 7), _ref_weight_scales(w, 0, -7, 7))


_ACT_LENGTHS = [1, 2, 100, 4097, 40000]

# (distribution, integer range): unsigned and signed, 4 and 8 bits
_ACT_CASES = [
    ("normal", (0, 15)),
    ("heavy", (0, 255)),
    ("positive", (0, 15)),
    ("zeros", (0, 15)),
    ("normal", (-8, 7)),
    ("heavy", (-8, 7)),
    ("heavy", (-128, 127)),
    ("outlier", (-128, 127)),
    ("grid", (-8, 7)),
    ("mostly_positive", (-8, 7)),
    ("positive", (-128, 127)),
    ("zeros", (-8, 7)),
    ("normal", (-7, 7)),
]


@pytest.mark.parametrize(("kind", "qrange"), _ACT_CASES, ids=str)
def test_activation_scale_and_qparams_bit_identical(kind, qrange, chunk):
    g = torch.Generator().manual_seed(zlib.crc32(repr((kind, qrange)).encode()))
    for n in _ACT_LENGTHS:
        v = _values(kind, (n,), g)
        if qrange[0] == 0 and kind not in ("positive", "zeros"):
            v = v.relu() if n % 2 else v  # after a ReLU, or negatives an unsigned range clips
        s = mse_activation_scale(v, *qrange)
        assert _same_float(s, _ref_activation_scale(v, *qrange)), (n, s)
        got, want = mse_activation_qparams(v, *qrange), _ref_activation_qparams(v, *qrange)
        assert _same_float(got[0], want[0]) and type(got[1]) is int and got[1] == want[1], (n, got)
        _check_act_errors(v, *qrange)


def test_activation_bit_identical_on_random_lengths(chunk):
    for seed in range(4):
        g = torch.Generator().manual_seed(100 + seed)
        n = int(torch.randint(1, 100000, (1,), generator=g))
        v = _values("heavy", (n,), g) + 0.02 * seed
        qrange = (-8, 7) if seed % 2 else (-128, 127)
        assert mse_activation_qparams(v, *qrange) == _ref_activation_qparams(v, *qrange)
        _check_act_errors(v, *qrange)
        u, qrange = v.relu(), ((0, 15) if seed % 2 else (0, 255))
        assert mse_activation_scale(u, *qrange) == _ref_activation_scale(u, *qrange)
        _check_act_errors(u, *qrange)


def test_activation_values_of_other_layouts_and_dtypes():
    """2-D, transposed, strided and float64/float16 values reduce exactly as before."""
    g = torch.Generator().manual_seed(11)
    base = _values("heavy", (300, 257), g)
    for v in (base, base.t(), base[:, ::3], base.reshape(-1)[::2], base.double(), base.half()):
        for qrange in ((-8, 7), (0, 15)):
            assert _same_float(mse_activation_scale(v, *qrange), _ref_activation_scale(v, *qrange))
        assert mse_activation_qparams(v, -8, 7) == _ref_activation_qparams(v, -8, 7)
        _check_act_errors(v, -8, 7)
        _check_act_errors(v, 0, 15)


def test_activation_nan_values_give_the_old_nan():
    v = torch.randn(1000)
    v[10] = float("nan")
    s = mse_activation_scale(v, -8, 7)
    assert math.isnan(s) and math.isnan(_ref_activation_scale(v, -8, 7))
    with pytest.raises(ValueError):  # int(round(nan)), as before
        _ref_activation_qparams(v, -8, 7)
    with pytest.raises(ValueError):
        mse_activation_qparams(v, -8, 7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bit_identical_on_cuda():
    g = torch.Generator().manual_seed(5)
    for shape, axis in _WEIGHT_SHAPES:
        w = _values("heavy", shape, g).cuda()
        for qrange in ((-7, 7), (-127, 127)):
            want = _ref_weight_scales(w, axis, *qrange)
            assert _same_bits(mse_weight_scales(w, axis, *qrange), want), shape
    for n in _ACT_LENGTHS:
        v = _values("mostly_positive", (n,), g).cuda()
        assert mse_activation_qparams(v, -8, 7) == _ref_activation_qparams(v, -8, 7)
        u = v.relu()
        assert mse_activation_scale(u, 0, 15) == _ref_activation_scale(u, 0, 15)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_calibrated_student_is_bit_identical(cnn_bn, asymmetric, monkeypatch):
    """init_weight_scales + calibrate_activations on a CNN: every step size and zero point."""
    from zerop_deploy.config import QuantConfig
    from zerop_deploy.load.to_torch import convert_model
    from zerop_deploy.quant.student import build_student

    quant = QuantConfig(wbits=4, abits=4, asymmetric_activations=asymmetric)
    images = [
        torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]

    def calibrated() -> dict[str, torch.Tensor]:
        student, _ = build_student(convert_model(cnn_bn), cnn_bn, quant)
        calibrate.init_weight_scales(student)
        calibrate.calibrate_activations(student, images)
        return student.state_dict()

    got = calibrated()
    monkeypatch.setattr(calibrate, "mse_weight_scales", _ref_weight_scales)
    monkeypatch.setattr(calibrate, "mse_activation_scale", _ref_activation_scale)
    monkeypatch.setattr(calibrate, "mse_activation_qparams", _ref_activation_qparams)
    want = calibrated()
    assert got.keys() == want.keys()
    assert all(_same_bits(got[k].float(), want[k].float()) for k in got), [
        k for k in got if not torch.equal(got[k], want[k])
    ]
    if asymmetric:
        assert any(k.endswith("zero_point") and want[k].abs().sum() > 0 for k in want)
