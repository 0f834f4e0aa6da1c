"""Per-channel int4 GEMV throughput by matrix size and thread count (ours alone).

Shows whether the kernel is bound by the caches or by its multiply instructions: with K = 4096 and
N = 256 / 1024 / 4096 the packed weights take 0.5 / 2 / 8 MiB (L2-resident, about L2 size, L3).

    python kernels/bench/scaling.py --threads 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from zerop_deploy import kernels


def best_us(fn, calls: int, repeats: int = 5) -> float:
    """Best over `repeats` of the mean time of `calls` back-to-back calls, in microseconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return min(times) * 1e6


def main() -> None:
    """Print us per call and GB/s of packed weights for each size and thread count."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    if not kernels.available():
        raise SystemExit("native kernels not built: pip install -e . with a C++17 compiler")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, args.k), dtype=np.float32)
    for n in args.n:
        packed = kernels.pack_int4(rng.integers(-8, 8, size=(n, args.k), dtype=np.int8))
        scales = (rng.random(n, dtype=np.float32) + 0.5) / 64
        for threads in args.threads:
            us = best_us(
                lambda: kernels.matmul_int4(x, packed, scales, threads=threads),  # noqa: B023
                calls=max(50, 200_000 // n),
            )
            gbs = packed.nbytes / us / 1e3
            print(f"N={n:5d} threads={threads}: {us:8.1f} us  {gbs:5.1f} GB/s of packed weights")


if __name__ == "__main__":
    main()
