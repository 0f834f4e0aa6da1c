"""Run many quantize configurations side by side and log each one's onnxruntime accuracy.

For the accuracy log of BENCHMARKS.md: settings that have no command-line flag (or not yet) are
tried through the library API with the same code path as ``zerop-deploy quantize``. A spec is a
JSON list of runs::

    [{"name": "sf_eq", "model": "shufflenetv2_x0_5_cifar10.onnx", "train": {"seed": 1},
      "quant": {"bits": 4, "equalize": true}, "data": {"synthetic": "SD.npz"}}]

``model`` and relative data paths are looked up under ``--models`` / ``--data``; ``quant.bits``
sets weights and activations (first/last layer stay at 8 bits unless ``first_last_bits`` says
otherwise); ``data.eval`` defaults to ``cifar10_test.npz``. Every run is its own process (a crash
costs one row), ``--workers`` of them at a time with ``--threads`` each; ``--gpu-workers`` more
run with ``device: cuda``. One JSON line per finished run is appended to ``--out`` at once, so a
run cut short keeps what finished.

Usage::

    python benchmarks/sweep.py spec.json --out results.jsonl --workers 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import SHARED


def run_one(spec: dict, models: Path, data_dir: Path, work: Path) -> dict:
    """Quantize one configuration in this process; the report's key numbers."""
    from zerop_deploy.api import quantize
    from zerop_deploy.config import DataConfig, QuantConfig, RunConfig, TrainConfig

    q = dict(spec.get("quant", {}))
    bits = q.pop("bits", None)
    if bits is not None:
        q.setdefault("wbits", bits)
        q.setdefault("abits", bits)
    d = dict(spec.get("data", {}))
    d.setdefault("eval", "cifar10_test.npz")

    def where(p: str) -> str:
        return p if p in ("builtin", "auto", "none") or Path(p).is_absolute() else str(data_dir / p)

    for key in ("eval", "synthetic"):
        if isinstance(d.get(key), str):
            d[key] = where(d[key])
    for key in ("proxy", "candidates"):
        if key in d:
            d[key] = tuple(where(p) for p in ([d[key]] if isinstance(d[key], str) else d[key]))
    t0 = time.monotonic()
    doc = quantize(
        models / spec["model"],
        quant=QuantConfig(**q),
        train=TrainConfig(**spec.get("train", {})),
        data=DataConfig(**d),
        run=RunConfig(output=work / f"{spec['name']}.onnx", progress=False),
    )
    return {
        "accuracy": doc["accuracy"]["quantized"],
        "fp32": doc["accuracy"]["fp32"],
        "wall_s": round(time.monotonic() - t0, 1),
        "training_s": doc["training"]["wall_seconds"],
        "steps": doc["training"]["steps"],
        "agreement": doc["validation"]["fp32_vs_quant_top1_agreement"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", help="JSON list of runs")
    ap.add_argument("--out", required=True, help="JSON lines, one per finished run (appended)")
    ap.add_argument("--models", default=str(SHARED / "models"))
    ap.add_argument("--data", default=str(SHARED / "data"))
    ap.add_argument("--workers", type=int, default=1, help="CPU runs at a time")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per CPU run")
    ap.add_argument("--gpu-workers", type=int, default=0, help="runs at a time on cuda")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this JSON spec, print result
    args = ap.parse_args()
    models, data_dir = Path(args.models), Path(args.data)
    if args.one:
        spec = json.loads(args.one)
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(run_one(spec, models, data_dir, Path(work))))
        return
    runs = json.loads(Path(args.spec).read_text())
    todo: queue.Queue = queue.Queue()
    for r in runs:
        todo.put(r)
    lock = threading.Lock()

    def worker(device: str, threads: int) -> None:
        while True:
            try:
                spec = todo.get_nowait()
            except queue.Empty:
                return
            spec = {**spec, "train": {**spec.get("train", {}), "device": device}}
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
            cmd = [sys.executable, __file__, args.spec, "--out", args.out, "--models",
                   args.models, "--data", args.data, "--one", json.dumps(spec)]  # fmt: skip
            t0 = time.monotonic()
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            row = {"name": spec["name"], "device": device, "spec": spec, "rc": p.returncode}
            if p.returncode == 0:
                row.update(json.loads(p.stdout.strip().splitlines()[-1]))
            else:
                row["stderr"] = p.stderr[-1500:]
            row["process_s"] = round(time.monotonic() - t0, 1)
            with lock, open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{row['name']}: {row.get('accuracy', 'FAILED')} ({row['process_s']} s)",
                  flush=True)  # fmt: skip

    threads = [threading.Thread(target=worker, args=("cpu", args.threads))
               for _ in range(args.workers)]  # fmt: skip
    threads += [threading.Thread(target=worker, args=("cuda", 1)) for _ in range(args.gpu_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
