"""The int4 GEMV against MatMulNBits on quiet cores and while another busy process shares them.

On a machine whose cores are shared, a thread pool that waits for a descheduled helper loses
whole scheduler time slices. This benchmark times our per-channel GEMV (``matmul_int4``, M = 1)
and onnxruntime's MatMulNBits (bits 4, accuracy_level 4) in interleaved rounds, alternately with
the cores otherwise idle and with a load process running, and prints the ratios side by side.

    python kernels/bench/contended.py --threads 2 --load numpy --cycles 3

``--load numpy``: a separate process with ``--load-threads`` Python threads, each multiplying
small float matrices in numpy in a loop (BLAS single-threaded; the GIL is released, so they run
in parallel), i.e. a busy compute job. ``--load spin``: the same number of processes, each a pure
Python busy loop. ``--load ort``: one process running an onnxruntime fp32 MatMul in a loop with
``--load-threads`` intra-op threads. Each cycle is one quiet and one loaded measurement; the table
reports the medians over the cycles.

``--base-so PATH`` also times another build of ``zerop_deploy._kernels`` (for example the thread
pool of an older commit) in the same rounds, as ``base_per_channel``:

    git archive HEAD~1 | tar -x -C /tmp/base && pip wheel /tmp/base --no-deps -w /tmp/base/wheel
    (cd /tmp/base/wheel && python -m zipfile -e *.whl x)
    python kernels/bench/contended.py --base-so /tmp/base/wheel/x/zerop_deploy/_kernels*.so
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import interleaved_median, matmul_nbits_model, session  # noqa: E402

from zerop_deploy import kernels  # noqa: E402

LOADS = {
    "numpy": (
        "import threading, numpy as np\n"
        "def spin():\n"
        "    a = np.ones((192, 192), np.float32)\n"
        "    while True:\n"
        "        a @ a\n"
        "ts = [threading.Thread(target=spin, daemon=True) for _ in range({n})]\n"
        "[t.start() for t in ts]\n"
        "[t.join() for t in ts]\n"
    ),
    "ort": (
        "import numpy as np, onnxruntime as ort\n"
        "from onnx import TensorProto, helper, numpy_helper\n"
        "w = numpy_helper.from_array(np.ones((512, 512), np.float32), 'B')\n"
        "g = helper.make_graph([helper.make_node('MatMul', ['A', 'B'], ['Y'])], 'g',\n"
        "    [helper.make_tensor_value_info('A', TensorProto.FLOAT, [256, 512])],\n"
        "    [helper.make_tensor_value_info('Y', TensorProto.FLOAT, [256, 512])], [w])\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n"
        "m.ir_version = 10\n"
        "so = ort.SessionOptions()\n"
        "so.intra_op_num_threads = {n}\n"
        "s = ort.InferenceSession(m.SerializeToString(), so, providers=['CPUExecutionProvider'])\n"
        "x = {{'A': np.ones((256, 512), np.float32)}}\n"
        "while True:\n"
        "    s.run(None, x)\n"
    ),
    "spin": "while True:\n    pass\n",
    "torch": (
        "import torch\n"
        "torch.set_num_threads({n})\n"
        "conv = torch.nn.Conv2d(32, 32, 3, padding=1)\n"
        "x = torch.randn(8, 32, 32, 32)\n"
        "with torch.no_grad():\n"
        "    while True:\n"
        "        conv(x)\n"
    ),
}


def start_load(kind: str, threads: int) -> list[subprocess.Popen]:
    """Start the load process(es); they run until stopped."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    code = LOADS[kind].format(n=threads)
    count = threads if kind == "spin" else 1
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(count)]
    time.sleep(1.0)  # imports done, threads running
    for p in procs:
        if p.poll() is not None:
            raise RuntimeError(f"the {kind} load process exited with {p.returncode}")
    return procs


def stop_load(procs: list[subprocess.Popen]) -> None:
    """Stop the load processes started by :func:`start_load`."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def load_build(path: Path) -> object:
    """Import another build of the native module (its own copy of the kernels and pool)."""
    spec = importlib.util.spec_from_file_location("zerop_deploy._kernels", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def on_build(mod: object, fn):  # type: ignore[no-untyped-def]
    """Wrap fn so that zerop_deploy.kernels calls the given native module while it runs."""

    def run() -> object:
        saved, kernels.native._native = kernels.native._native, mod
        try:
            return fn()
        finally:
            kernels.native._native = saved

    return run


def main() -> None:
    """Run the benchmark and print (and optionally write) the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--blocks", type=int, nargs="+", default=[128, 4096])
    ap.add_argument("--load", choices=sorted(LOADS), default="numpy")
    ap.add_argument("--load-threads", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=3, help="quiet + loaded measurement pairs")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per measurement")
    ap.add_argument("--base-so", type=Path, default=None, help="another build to time alongside")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    common.SPIN = False
    rng = np.random.default_rng(0)
    w = rng.integers(-7, 8, size=(args.n, args.k), dtype=np.int8)
    scales = (rng.random(args.n, dtype=np.float32) + 0.5) / 64
    packed = kernels.pack_int4(w)
    x = rng.standard_normal((1, args.k), dtype=np.float32)

    def ours() -> object:
        return kernels.matmul_int4(x, packed, scales, threads=args.threads)

    fns = {"ours_per_channel": ours}
    if args.base_so:
        base = load_build(args.base_so)
        fns["base_per_channel"] = on_build(base, ours)
        if not np.array_equal(fns["base_per_channel"](), ours()):
            raise RuntimeError("the base build gives different results")
    for block in args.blocks:
        groups = -(-args.k // block)
        s = np.repeat(scales[None, :], groups, axis=0)
        sess = session(matmul_nbits_model(w, s, block, 1), args.threads)
        fns[f"nbits_b{block}"] = lambda sess=sess: sess.run(None, {"A": x})
    samples: dict[str, dict[str, list[float]]] = {"quiet": {}, "loaded": {}}
    for cycle in range(args.cycles):
        for state in ("quiet", "loaded"):
            procs = start_load(args.load, args.load_threads) if state == "loaded" else []
            try:
                t = interleaved_median(fns, rounds=args.rounds)
            finally:
                stop_load(procs)
            for key, v in t.items():
                samples[state].setdefault(key, []).append(v)
            print(
                f"cycle {cycle} {state:6s}: "
                + "  ".join(f"{key} {v * 1e6:8.1f} us" for key, v in t.items()),
                flush=True,
            )
    med = {st: {k: statistics.median(v) for k, v in d.items()} for st, d in samples.items()}
    print(
        f"\nM=1 K={args.k} N={args.n}, {args.threads} threads, load: {args.load} x "
        f"{args.load_threads} threads, median over {args.cycles} cycles (us; ratio = ORT / ours)"
    )
    head = f"{'variant':26s} {'quiet':>9s} {'loaded':>9s}"
    print(head)
    for key in fns:
        print(f"{key:26s} {med['quiet'][key] * 1e6:9.1f} {med['loaded'][key] * 1e6:9.1f}")
    ratios = {}
    others = [f"nbits_b{block}" for block in args.blocks]
    others += ["base_per_channel"] if args.base_so else []
    for key in others:
        ratios[key] = {
            st: [
                nb / ours
                for nb, ours in zip(samples[st][key], samples[st]["ours_per_channel"], strict=True)
            ]
            for st in samples
        }
        q, lo = (statistics.median(ratios[key][st]) for st in ("quiet", "loaded"))
        rng_l = ratios[key]["loaded"]
        print(
            f"speedup vs {key:14s} quiet {q:5.2f}x  loaded {lo:5.2f}x "
            f"(loaded per cycle {min(rng_l):.2f}-{max(rng_l):.2f}x)"
        )
    if args.json:
        doc = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "samples": samples,
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
