"""The thread pool under oversubscription, and the cache of repacked convolution weights."""

from __future__ import annotations

import numpy as np
import pytest

from zerop_deploy import kernels

needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason="native kernels not built (no C++17 compiler at install time)"
)


@needs_kernels
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_many_regions_with_more_threads_than_cores_match_one_thread(threads):
    # Helpers that start late (or not at all) in a region must neither run another region's
    # tasks nor hold the caller: every call still equals the single-threaded product.
    rng = np.random.default_rng(threads)
    w = rng.integers(-8, 8, size=(512, 2048), dtype=np.int8)
    packed = kernels.pack_int4(w)
    scales = (rng.random(512, dtype=np.float32) + 0.5) / 64
    xs = [rng.standard_normal((m, 2048), dtype=np.float32) for m in (1, 3, 40)]
    want = [kernels.matmul_int4(x, packed, scales, threads=1) for x in xs]
    for i in range(300):
        x = xs[i % len(xs)]
        got = kernels.matmul_int4(x, packed, scales, threads=threads)
        np.testing.assert_array_equal(got, want[i % len(xs)])


@needs_kernels
def test_conv_regions_with_more_threads_than_cores_match_one_thread():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 20, 20), dtype=np.float32)
    w = rng.integers(-7, 8, size=(32, 16 * 9), dtype=np.int8)
    packed = kernels.pack_int4(w)
    scales = np.full(32, 0.01, np.float32)
    want = kernels.conv2d_int4(x, packed, scales, kernel_size=3, padding=1, threads=1)
    for _ in range(50):
        got = kernels.conv2d_int4(x, packed, scales, kernel_size=3, padding=1, threads=6)
        np.testing.assert_array_equal(got, want)


@needs_kernels
def test_conv_weights_changed_in_place_are_used():
    # The repacked conv weights are cached per buffer: changing the buffer must not serve the old.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 16, 10, 10), dtype=np.float32)
    w1, w2 = (rng.integers(-7, 8, size=(24, 16 * 9), dtype=np.int8) for _ in range(2))
    scales = np.full(24, 0.01, np.float32)
    kw = {"kernel_size": 3, "padding": 1}
    want1 = kernels.conv2d_int4(x, kernels.pack_int4(w1), scales, **kw)
    want2 = kernels.conv2d_int4(x, kernels.pack_int4(w2), scales, **kw)
    packed = kernels.pack_int4(w1)
    np.testing.assert_array_equal(kernels.conv2d_int4(x, packed, scales, **kw), want1)
    packed[...] = kernels.pack_int4(w2)
    np.testing.assert_array_equal(kernels.conv2d_int4(x, packed, scales, **kw), want2)
    # the same bytes read as another shape (1x1 over 144 channels) are repacked for that shape
    x144 = rng.standard_normal((1, 144, 4, 4), dtype=np.float32)
    got = kernels.conv2d_int4(x144, packed, scales, kernel_size=1)
    want = kernels.conv2d_int4(x144, kernels.pack_int4(w2.copy()), scales, kernel_size=1)
    np.testing.assert_array_equal(got, want)
