"""The thread pool under oversubscription: more threads than cores, many back-to-back regions."""

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
