"""GEMV/GEMM microbenchmark: our int4 kernel vs onnxruntime fp32 MatMul and MatMulNBits.

All variants run in one process, timed in interleaved rounds. Also measures the machine's read
bandwidth (a multithreaded C++ read loop over 1 GiB, and a numpy sum) so that the kernel's effective
weight bandwidth can be compared with it.

    python kernels/bench/gemv.py --threads 2 --m 1 --k 4096 --n 4096 --cache both --json out.json

``--cache hot`` reuses one weight matrix (8 MiB packed: it can sit in the 32 MiB L3); ``cold``
rotates over enough copies (>= 4x the L3 size) that every call reads its weights from DRAM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import interleaved_median, matmul_fp32_model, matmul_nbits_model, session  # noqa: E402

from zerop_deploy import kernels  # noqa: E402

L3_BYTES = 32 << 20


def read_bandwidth(threads: int, nbytes: int = 1 << 30) -> dict[str, float]:
    """GB/s of a C++ read loop on `threads` threads and of a single-threaded numpy sum."""
    buf = np.ones(nbytes, dtype=np.uint8)
    probe = interleaved_median({"probe": lambda: kernels.read_probe(buf, threads)}, rounds=5)
    t0 = time.perf_counter()
    buf.view(np.uint64).sum()
    numpy_s = time.perf_counter() - t0
    return {"cpp_read_gbs": nbytes / probe["probe"] / 1e9, "numpy_sum_gbs": nbytes / numpy_s / 1e9}


def _rotating(items: list) -> object:
    state = {"i": 0}

    def nxt() -> object:
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return nxt


def bench_case(
    m: int,
    k: int,
    n: int,
    block: int,
    threads: int,
    copies: int,
    rng: np.random.Generator,
    rounds: int = 7,
    settle: float = 0.0,
) -> dict[str, float]:
    """Seconds per call of each variant for one shape and block size."""
    ws = [rng.integers(-8, 8, size=(n, k), dtype=np.int8) for _ in range(copies)]
    groups = -(-k // block)
    scales = [(rng.random((groups, n), dtype=np.float32) + 0.5) / 64 for _ in range(copies)]
    pc_scales = [s[0].copy() for s in scales]
    packed = [kernels.pack_int4(w) for w in ws]
    x = rng.standard_normal((m, k), dtype=np.float32)
    feed = {"A": x}
    nbits = [
        session(matmul_nbits_model(w, s, block, m), threads)
        for w, s in zip(ws, scales, strict=True)
    ]
    fp32 = [  # 64 MiB each: two copies already exceed the L3
        session(matmul_fp32_model((w.astype(np.float32) * s[0]).T.copy(), m), threads)
        for w, s in zip(ws[:2], scales[:2], strict=True)
    ]
    del ws
    idx = _rotating(list(range(copies)))
    idx_fp32 = _rotating(list(range(len(fp32))))
    fns = {
        f"ours_g{block}": lambda: kernels.matmul_int4(
            x, packed[(i := idx())], scales[i], group_size=block, threads=threads
        ),
        "ours_per_channel": lambda: kernels.matmul_int4(
            x, packed[(i := idx())], pc_scales[i], threads=threads
        ),
        f"ort_matmulnbits_b{block}_acc4": lambda: nbits[idx()].run(None, feed),
        "ort_fp32_matmul": lambda: fp32[idx_fp32()].run(None, feed),
    }
    return interleaved_median(fns, rounds=rounds, settle=settle)


def main() -> None:
    """Run the benchmark and print (and optionally write) the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--m", type=int, nargs="+", default=[1])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--cache", choices=["hot", "cold", "both"], default="both")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--ort-spin",
        action="store_true",
        help="let onnxruntime's idle threads spin (its default); each timed batch then starts after"
        " a 50 ms pause, so that the spinning of the previous variant's threads has ended",
    )
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median)")
    args = ap.parse_args()
    common.SPIN = args.ort_spin
    rng = np.random.default_rng(0)
    bw = read_bandwidth(args.threads)
    print(
        f"read bandwidth, {args.threads} threads: C++ loop {bw['cpp_read_gbs']:.1f} GB/s, "
        f"numpy sum (1 thread) {bw['numpy_sum_gbs']:.1f} GB/s"
    )
    weight_bytes = args.n * ((args.k + 1) // 2)
    modes = ["hot", "cold"] if args.cache == "both" else [args.cache]
    rows = []
    for mode in modes:
        copies = 1 if mode == "hot" else -(-4 * L3_BYTES // weight_bytes)
        for m in args.m:
            for block in args.blocks:
                t = bench_case(
                    m,
                    args.k,
                    args.n,
                    block,
                    args.threads,
                    copies,
                    rng,
                    args.rounds,
                    settle=0.05 if args.ort_spin else 0.0,
                )
                ours, nb = t[f"ours_g{block}"], t[f"ort_matmulnbits_b{block}_acc4"]
                row = {
                    "cache": mode,
                    "m": m,
                    "k": args.k,
                    "n": args.n,
                    "block": block,
                    "threads": args.threads,
                    "us": {key: v * 1e6 for key, v in t.items()},
                    "speedup_vs_nbits": nb / ours,
                    "speedup_per_channel_vs_nbits": nb / t["ours_per_channel"],
                    "ours_weight_gbs": weight_bytes / ours / 1e9,
                    "ours_per_channel_weight_gbs": weight_bytes / t["ours_per_channel"] / 1e9,
                }
                rows.append(row)
                us = "  ".join(f"{key} {v:8.1f}" for key, v in row["us"].items())
                print(
                    f"[{mode}] M={m} K={args.k} N={args.n} block={block}: {us} us | "
                    f"ours/nbits speedup {row['speedup_vs_nbits']:.2f}x "
                    f"(per-channel {row['speedup_per_channel_vs_nbits']:.2f}x) | "
                    f"ours {row['ours_weight_gbs']:.1f} GB/s of weights",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps({"bandwidth": bw, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
