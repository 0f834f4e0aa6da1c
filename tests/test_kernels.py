"""The native int4 kernels against the single definition of int4 in quant/primitives.py."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from zerop_deploy import kernels
from zerop_deploy.errors import UnsupportedModelError
from zerop_deploy.quant.primitives import matmul_int4_reference, pack_int4, unpack_int4

needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason="native kernels not built (no C++17 compiler at install time)"
)
IMPLS = ["scalar"] + [name for name, ok in kernels.cpu_features().items() if ok]


def _case(rng, m, k, n, group_size, *, bias=True):
    x = rng.standard_normal((m, k), dtype=np.float32) * rng.uniform(0.01, 100)
    w = rng.integers(-8, 8, size=(n, k), dtype=np.int8)
    shape = (n,) if group_size == 0 else (-(-k // group_size), n)
    scales = (rng.random(shape, dtype=np.float32) + 0.05) / 7
    b = rng.standard_normal(n, dtype=np.float32) if bias else None
    return x, w, scales, b


def test_build_is_present_when_a_compiler_is():
    """CI guard: a machine with g++ must have built the kernels (a silent fallback is a bug)."""
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler on this machine")
    assert kernels.available(), "a C++ compiler is present but zerop_deploy._kernels was not built"


def test_unavailable_kernels_raise_one_clear_error(monkeypatch):
    monkeypatch.setattr(kernels.native, "_native", None)
    assert not kernels.available()
    with pytest.raises(UnsupportedModelError, match="C\\+\\+17 compiler"):
        kernels.matmul_int4(
            np.zeros((1, 2), np.float32), np.zeros((1, 1), np.uint8), np.ones(1, np.float32)
        )


def test_pack_int4_is_the_onnx_packing():
    w = np.array([[1, -2, 7], [-8, 0, 3]], dtype=np.int8)
    p = kernels.pack_int4(w)
    assert p.dtype == np.uint8 and p.shape == (2, 2)
    assert p[0, 0] == (1 | (0xE << 4)) and p[0, 1] == 7 and p[1, 0] == 0x08
    np.testing.assert_array_equal(unpack_int4(p, 3), w)


SHAPES = [
    (1, 1, 1, 0),
    (3, 7, 5, 0),
    (1, 33, 3, 32),
    (5, 130, 9, 32),
    (4, 300, 11, 64),
    (2, 257, 13, 128),
    (17, 1000, 37, 0),
    (6, 64, 4, 32),
    (1, 4095, 130, 128),
    (33, 513, 65, 0),
    (1, 4096, 77, 0),  # the per-channel GEMV path: 8 columns a step, then a 5-column tail
    (1, 640, 16, 0),
    (1, 2048, 1030, 0),
    (1, 4096, 40, 128),  # the grouped GEMV path
    (1, 2048, 24, 32),
    (1, 960, 9, 64),
    (1, 1088, 16, 256),  # the last group is one chunk
]


@needs_kernels
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("m", "k", "n", "group_size"), SHAPES)
def test_matmul_matches_reference(m, k, n, group_size, impl):
    rng = np.random.default_rng(m * 1000 + k + n)
    x, w, scales, b = _case(rng, m, k, n, group_size, bias=(k % 2 == 1))
    ref = matmul_int4_reference(x, w, scales, bias=b, group_size=group_size)
    y = kernels.matmul_int4(
        x, pack_int4(w), scales, bias=b, group_size=group_size, threads=2, impl=impl
    )
    assert y.dtype == np.float32 and y.shape == (m, n)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=0)
    # Stronger than the contract: exact integer sums and the reference's float order.
    np.testing.assert_array_equal(y, ref)


@needs_kernels
@pytest.mark.parametrize(("m", "k", "n", "group_size"), SHAPES)
def test_default_call_takes_the_native_fast_path_and_matches_reference(m, k, n, group_size):
    """Without impl, matmul_int4 checks its arguments in one native call: same result."""
    rng = np.random.default_rng(m * 1000 + k + n + 1)
    x, w, scales, b = _case(rng, m, k, n, group_size, bias=(n % 2 == 1))
    packed = pack_int4(w)
    assert kernels.native._native.matmul_f32_fast(x, packed, scales, b, group_size, 0) is not None
    y = kernels.matmul_int4(x, packed, scales, bias=b, group_size=group_size)
    assert y.dtype == np.float32 and y.shape == (m, n) and y.flags.c_contiguous
    np.testing.assert_array_equal(
        y, matmul_int4_reference(x, w, scales, bias=b, group_size=group_size)
    )


@needs_kernels
def test_fast_path_declines_what_the_python_checks_must_handle(monkeypatch):
    """The fast path returns None (and the Python checks take over) for anything uncommon."""
    rng = np.random.default_rng(5)
    x, w, scales, b = _case(rng, 2, 130, 9, 64)
    packed = pack_int4(w)
    fast = kernels.native._native.matmul_f32_fast
    want = kernels.matmul_int4(x, packed, scales, bias=b, group_size=64)
    declined = [
        (x.astype(np.float64), packed, scales, b, 64, 0),
        (np.asfortranarray(x), packed, scales, b, 64, 0),
        (x, packed[:, :-1], scales, b, 64, 0),
        (x, packed, scales[:1], b, 64, 0),
        (x, packed, scales, b[:1], 64, 0),
        (x, packed, scales, b, 48, 0),
        (x, packed, scales, b, np.int64(64), 0),  # numpy integers: the Python path accepts them
        (x, packed, scales, b, True, 0),
        (x, packed, scales, b, 64, -1),
        (x, packed, scales, b, 64, 2.0),
        (x.tolist(), packed, scales, b, 64, 0),
    ]
    for args in declined:
        assert fast(*args) is None
    np.testing.assert_array_equal(
        kernels.matmul_int4(x, packed, scales, bias=b, group_size=np.int64(64)), want
    )
    # an implementation named in the environment is honoured (and checked) by the Python path
    monkeypatch.setenv("ZEROP_KERNELS_IMPL", "neon")
    assert fast(x, packed, scales, b, 64, 0) is None
    with pytest.raises(ValueError, match="impl"):
        kernels.matmul_int4(x, packed, scales, bias=b, group_size=64)
    monkeypatch.setenv("ZEROP_KERNELS_IMPL", "scalar")
    np.testing.assert_array_equal(
        kernels.matmul_int4(x, packed, scales, bias=b, group_size=64), want
    )


@needs_kernels
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("group_size", [0, 32, 64])
def test_integer_accumulation_is_exact(group_size, impl):
    """Rows with max|x| = 127 give s = 1 and q = x; unit scales leave the exact integer sums."""
    rng = np.random.default_rng(7)
    m, k, n = 3, 2049, 21
    x = rng.integers(-127, 128, size=(m, k)).astype(np.float32)
    x[:, 0] = 127.0
    w = rng.integers(-8, 8, size=(n, k), dtype=np.int8)
    w[0] = -8  # the extreme weight everywhere
    x[1] = np.where(np.arange(k) % 2, 127.0, -127.0)
    gs = group_size or k
    scales = np.ones((n,) if group_size == 0 else (-(-k // gs), n), dtype=np.float32)
    y = kernels.matmul_int4(x, pack_int4(w), scales, group_size=group_size, impl=impl)
    exact = x.astype(np.int64) @ w.astype(np.int64).T
    np.testing.assert_array_equal(y.astype(np.int64), exact)


@pytest.mark.parametrize("impl", IMPLS)
def test_long_reductions_do_not_overflow(impl):
    """K = 1.2M with the largest terms: a 32-bit partial sum of 16 * (w + 8) * x over the whole row
    would pass 2^31 (the VNNI path keeps high nibbles scaled by 16 and must flush them in time)."""
    k = 1_200_000
    x = np.where(np.arange(k) % 2, 127.0, -127.0).astype(np.float32)[None, :]
    w = np.full((8, k), 7, dtype=np.int8)  # 8 columns: the GEMV path takes them
    w[1::2] = -8
    y = kernels.matmul_int4(x, pack_int4(w), np.ones(8, np.float32), impl=impl)
    # every sum is 0 (exact in float); a wrapped partial sum would leave a large remainder
    np.testing.assert_array_equal(y, np.zeros((1, 8), np.float32))


@needs_kernels
def test_back_to_back_calls_with_changing_thread_counts():
    """The pool's helpers spin between calls: regions that follow each other at once, with helper
    counts going up and down, must each run every task exactly once."""
    rng = np.random.default_rng(11)
    x, w, scales, b = _case(rng, 3, 640, 96, 0)
    p = pack_int4(w)
    want = kernels.matmul_int4(x, p, scales, bias=b, threads=1)
    for threads in [2, 4, 2, 1, 3, 8, 2, 2, 1, 4] * 20:
        y = kernels.matmul_int4(x, p, scales, bias=b, threads=threads)
        np.testing.assert_array_equal(y, want)


@needs_kernels
def test_all_zero_row_and_empty_batch():
    w = np.ones((3, 5), dtype=np.int8)
    y = kernels.matmul_int4(
        np.zeros((2, 5), np.float32),
        pack_int4(w),
        np.ones(3, np.float32),
        bias=np.arange(3, dtype=np.float32),
    )
    np.testing.assert_array_equal(y, [[0, 1, 2], [0, 1, 2]])
    assert kernels.matmul_int4(
        np.zeros((0, 5), np.float32), pack_int4(w), np.ones(3, np.float32)
    ).shape == (0, 3)


@needs_kernels
@pytest.mark.parametrize(("m", "k", "n", "group_size"), [(1, 4096, 512, 32), (9, 777, 123, 0)])
def test_threads_and_paths_agree(m, k, n, group_size):
    rng = np.random.default_rng(3)
    x, w, scales, b = _case(rng, m, k, n, group_size)
    p = pack_int4(w)
    outs = [
        kernels.matmul_int4(x, p, scales, bias=b, group_size=group_size, threads=t, impl=i)
        for t in (1, 2, 0)
        for i in IMPLS
    ]
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


def _quantized_reference(xq, x_scale, zp, w, scales, bias, group_size):
    k = xq.shape[1]
    a = xq.astype(np.int64) - zp
    bounds = (
        [(0, k)]
        if group_size == 0
        else [(g, min(g + group_size, k)) for g in range(0, k, group_size)]
    )
    sc = scales.reshape(1, -1) if group_size == 0 else scales
    y = np.zeros((xq.shape[0], w.shape[0]), np.float32)
    for gi, (lo, hi) in enumerate(bounds):
        y += (a[:, lo:hi] @ w[:, lo:hi].astype(np.int64).T).astype(np.float32) * sc[gi][None, :]
    y *= np.float32(x_scale)
    return y if bias is None else y + bias


@needs_kernels
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("dtype", "zp"),
    [(np.uint8, 0), (np.uint8, 131), (np.uint8, 255), (np.int8, 0), (np.int8, -128), (np.int8, 17)],
)
@pytest.mark.parametrize(
    ("m", "k", "n", "group_size"), [(1, 4096, 9, 0), (5, 301, 7, 64), (2, 96, 6, 32)]
)
def test_prequantized_matmul(dtype, zp, m, k, n, group_size, impl):
    rng = np.random.default_rng(k + zp + 128)
    info = np.iinfo(dtype)
    xq = rng.choice(np.array([info.min, info.max, 0, 1], dtype=dtype), size=(m, k))
    _, w, scales, b = _case(rng, m, k, n, group_size)
    w[0] = rng.choice(np.array([-8, 7], np.int8), size=k)
    y = kernels.matmul_int4_quantized(
        xq, 0.0123, zp, pack_int4(w), scales, bias=b, group_size=group_size, impl=impl
    )
    np.testing.assert_array_equal(y, _quantized_reference(xq, 0.0123, zp, w, scales, b, group_size))


CONVS = [  # (B, C_in, H, W, C_out, kH, kW, stride, padding, dilation, groups)
    (2, 3, 9, 11, 5, 3, 3, 1, 1, 1, 1),
    (2, 16, 8, 8, 32, 3, 3, 2, 1, 1, 1),
    (1, 8, 10, 10, 8, 3, 3, 1, 2, 2, 8),  # depthwise, dilated
    (2, 12, 9, 9, 12, 3, 3, 2, 1, 1, 12),  # depthwise, stride 2
    (2, 8, 20, 20, 8, 3, 3, 1, 1, 1, 8),  # depthwise, rows of 16 or more: the row form
    (3, 24, 4, 4, 24, 3, 3, 1, 1, 1, 24),  # depthwise, small planes: channels innermost
    (2, 20, 15, 15, 20, 5, 5, 2, 2, 1, 20),  # the same with 25 taps (int32 sums)
    (2, 40, 8, 8, 40, 3, 3, 1, 2, 2, 40),  # the same, dilated
    (1, 6, 7, 9, 4, 3, 2, (2, 1), (1, 0), (1, 2), 2),
    (3, 5, 5, 5, 7, 1, 1, 1, 0, 1, 1),  # pointwise
    (1, 70, 6, 6, 3, 1, 1, 1, 0, 1, 1),  # K > 64
    (1, 5, 6, 6, 4, 3, 3, 1, 1, 1, 1),  # K % 64 > 32
]


def _conv_weights(rng, c_out, c_in_g, kh, kw):
    w = rng.integers(-8, 8, size=(c_out, c_in_g, kh, kw), dtype=np.int8)
    scales = (rng.random(c_out, dtype=np.float32) + 0.1) / 50
    return w, scales, rng.standard_normal(c_out, dtype=np.float32)


def _torch_conv(x, w, scales, b, stride, padding, dilation, groups):
    torch = pytest.importorskip("torch")
    wd = torch.from_numpy(w.astype(np.float64) * scales.astype(np.float64)[:, None, None, None])
    return torch.nn.functional.conv2d(
        torch.from_numpy(x.astype(np.float64)),
        wd,
        torch.from_numpy(b.astype(np.float64)),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    ).numpy()


@needs_kernels
@pytest.mark.parametrize("spec", CONVS)
def test_conv2d_matches_torch_on_dequantized_values(spec):
    b_, c_in, h, w_, c_out, kh, kw, stride, padding, dilation, groups = spec
    rng = np.random.default_rng(c_in * c_out + h)
    x = rng.standard_normal((b_, c_in, h, w_), dtype=np.float32)
    w, scales, bias = _conv_weights(rng, c_out, c_in // groups, kh, kw)
    args = dict(
        kernel_size=(kh, kw),
        bias=bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    outs = [
        kernels.conv2d_int4(x, pack_int4(w.reshape(c_out, -1)), scales, impl=i, **args)
        for i in IMPLS
    ]
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])
    s = np.abs(x.reshape(b_, -1)).max(axis=1) / np.float32(127)  # per-image activation scale
    xd = np.clip(np.rint(x / s[:, None, None, None]), -127, 127) * s[:, None, None, None]
    ref = _torch_conv(xd, w, scales, bias, stride, padding, dilation, groups)
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@needs_kernels
@pytest.mark.parametrize("spec", CONVS[:8])
@pytest.mark.parametrize(("dtype", "zp"), [(np.uint8, 128), (np.uint8, 0), (np.int8, -3)])
def test_prequantized_conv2d(spec, dtype, zp):
    b_, c_in, h, w_, c_out, kh, kw, stride, padding, dilation, groups = spec
    rng = np.random.default_rng(h * w_ + zp + 128)
    info = np.iinfo(dtype)
    xq = rng.integers(info.min, info.max + 1, size=(b_, c_in, h, w_)).astype(dtype)
    w, scales, bias = _conv_weights(rng, c_out, c_in // groups, kh, kw)
    args = dict(
        kernel_size=(kh, kw),
        bias=bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    outs = [
        kernels.conv2d_int4_quantized(
            xq, 0.05, zp, pack_int4(w.reshape(c_out, -1)), scales, impl=i, threads=t, **args
        )
        for i in IMPLS
        for t in (1, 2)
    ]
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])
    ref = _torch_conv(
        (xq.astype(np.float64) - zp) * 0.05, w, scales, bias, stride, padding, dilation, groups
    )
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@needs_kernels
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, s: kernels.matmul_int4(np.zeros((2, 4), np.float64), p, s), "float32"),
        (lambda p, s: kernels.matmul_int4(np.zeros((4, 2), np.float32).T, p, s), "C-contiguous"),
        (lambda p, s: kernels.matmul_int4(np.zeros((2, 6), np.float32), p, s), "ceil"),
        (
            lambda p, s: kernels.matmul_int4(np.zeros((2, 4), np.float32), p, s, group_size=48),
            "group",
        ),
        (lambda p, s: kernels.matmul_int4(np.zeros((2, 4), np.float32), p, s[:1]), "scales"),
        (
            lambda p, s: kernels.matmul_int4(np.zeros((2, 4), np.float32), p, s, threads=-1),
            "threads",
        ),
        (lambda p, s: kernels.matmul_int4(np.zeros((2, 4), np.float32), p, s, impl="neon"), "impl"),
        (
            lambda p, s: kernels.matmul_int4_quantized(np.zeros((2, 4), np.uint8), 1.0, 300, p, s),
            "zero",
        ),
        (
            lambda p, s: kernels.conv2d_int4(
                np.zeros((1, 4, 3, 3), np.float32), p, s, kernel_size=1, groups=3
            ),
            "groups",
        ),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    packed, scales = pack_int4(np.ones((3, 4), np.int8)), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=message):
        call(packed, scales)


@needs_kernels
@pytest.mark.parametrize("hw", [5, 12, 20])  # output rows under 16 and over
@pytest.mark.parametrize("kernel", [3, 5])  # 9 taps (int16 sums) and 25 (int32)
@pytest.mark.parametrize(
    "batch, c, stride, threads",
    [
        (2, 19, 1, 0),  # channels innermost, a task per image
        (1, 19, 1, 2),  # channels innermost, one image split by rows between two threads
        (1, 24, 2, 3),  # the same with stride 2 and more threads than cores
        (2, 8, 1, 0),  # the row form for rows of 16 or more and up to 16 taps
        (2, 8, 2, 0),
    ],
)
def test_depthwise_is_exact(hw, kernel, batch, c, stride, threads):
    """Every depthwise form gives the exact integer sums and the float steps of the other paths:
    float32(S) * scale, times the activation scale, plus the bias."""
    rng = np.random.default_rng(hw * 10 + kernel)
    zp, x_scale = 131, np.float32(0.05)
    xq = rng.integers(0, 256, size=(batch, c, hw, hw)).astype(np.uint8)
    w, scales, bias = _conv_weights(rng, c, 1, kernel, kernel)
    pad = kernel // 2
    y = kernels.conv2d_int4_quantized(
        xq,
        float(x_scale),
        zp,
        pack_int4(w.reshape(c, -1)),
        scales,
        kernel_size=kernel,
        bias=bias,
        padding=pad,
        stride=stride,
        groups=c,
        threads=threads,
    )
    xp = np.pad(xq.astype(np.int64) - zp, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (hw - 1) // stride + 1
    s = np.zeros((batch, c, oh, oh), np.int64)
    for ky in range(kernel):
        for kx in range(kernel):
            win = xp[
                :,
                :,
                ky : ky + stride * (oh - 1) + 1 : stride,
                kx : kx + stride * (oh - 1) + 1 : stride,
            ]
            s += w[None, :, 0, ky, kx, None, None].astype(np.int64) * win
    want = s.astype(np.float32) * scales[None, :, None, None]
    want = want * x_scale + bias[None, :, None, None]
    np.testing.assert_array_equal(y, want)


@needs_kernels
def test_threaded_conv_matches_single_thread():
    """Big enough (> 1M MACs) to run on several threads."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 16, 16, 16), dtype=np.float32)
    w, scales, bias = _conv_weights(rng, 32, 16, 3, 3)
    packed = pack_int4(w.reshape(32, -1))
    outs = [
        kernels.conv2d_int4(
            x, packed, scales, kernel_size=3, bias=bias, padding=1, threads=t, impl=i
        )
        for t in (1, 2)
        for i in IMPLS
    ]
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])
