"""Accuracy of quantized CIFAR-10 networks, measured by onnxruntime on the exported files.

Each row runs one real command (``zerop-deploy quantize ...`` in a subprocess, or onnxruntime's own
``quantize_static`` for the baseline), then measures top-1 accuracy on ``cifar10_test.npz`` with
onnxruntime on the file that command wrote. Wall time, peak memory (RSS of the child), images/s,
seed and the exact command are recorded per row. Results go to
``benchmarks/results/accuracy.json`` and, with ``--write``, to the "Accuracy" section of
BENCHMARKS.md.

Usage::

    python benchmarks/accuracy.py --write                      # the default table
    python benchmarks/accuracy.py --nets resnet20 --methods proxy --bits w4a4 --steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, SHARED, run_command, write_section

NETS = {"resnet20": "resnet20_cifar10", "shufflenet": "shufflenetv2_x0_5_cifar10"}
BITS = {
    "w8a8": ("8", "8", "8"),
    "w4a8": ("4", "8", "8"),
    "w4a4": ("4", "4", "8"),
    "w4a4-all4": ("4", "4", "4"),
}
METHODS = ("ort_static", "proxy", "upper_bound")


def _test_set(data: Path):
    from zerop_deploy.data import load_images, to_model_input

    s = load_images(data / "cifar10_test.npz")
    return to_model_input(s.images, (3, 32, 32)).numpy(), s.labels


def _accuracy(model: Path, x: np.ndarray, y: np.ndarray) -> float:
    from zerop_deploy.validate import accuracy

    return accuracy(str(model), x, y)


def _ort_static(model: Path, out: Path, bits: tuple[str, str, str], proxy: Path) -> list[str]:
    """The command line of the onnxruntime baseline (see ort_static.py)."""
    w, a, _ = bits
    return [
        sys.executable,
        str(ROOT / "benchmarks" / "ort_static.py"),
        str(model),
        str(out),
        "--wbits",
        w,
        "--abits",
        a,
        "--calib",
        str(proxy),
    ]


def _zerop(model: Path, out: Path, bits: tuple[str, str, str], proxy: Path, args) -> list[str]:
    w, a, fl = bits
    cmd = [
        sys.executable,
        "-m",
        "zerop_deploy",
        "quantize",
        str(model),
        "-o",
        str(out),
        "--wbits",
        w,
        "--abits",
        a,
        "--first-last-bits",
        fl,
        "--proxy",
        str(proxy),
        "--seed",
        str(args.seed),
        "--json",
        "--quiet",
    ]
    cmd += (
        ["--time-budget", str(args.time_budget)]
        if args.time_budget
        else ["--steps", str(args.steps)]
    )
    return cmd


def run_row(net: str, method: str, bits: str, args, x, y, tmp: Path) -> dict:
    model = args.models / f"{NETS[net]}.onnx"
    out = tmp / f"{net}-{method}-{bits}.onnx"
    proxy = args.data / ("cifar10_train_5k.npz" if method == "upper_bound" else args.proxy)
    if method == "ort_static":
        cmd = _ort_static(model, out, BITS[bits], proxy)
    else:
        cmd = _zerop(model, out, BITS[bits], proxy, args)
    wall, peak, stdout = run_command(cmd)
    row = {
        "net": net,
        "method": method,
        "bits": bits,
        "accuracy": _accuracy(out, x, y),
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak),
        "seed": args.seed,
        "proxy": proxy.name,
        "command": " ".join(cmd).replace(str(tmp), "OUT").replace(sys.executable, "python"),
    }
    if method != "ort_static":
        rep = json.loads(stdout)
        row["images_per_s"] = rep["training"]["images_per_second"]
        row["steps"] = rep["training"]["steps"]
        row["ort_vs_student"] = rep["validation"]["ort_vs_student_top1_agreement"]
    return row


def _table(rows: list[dict], fp32: dict[str, float]) -> str:
    lines = [
        "| network | method | bits | top-1 (%) | vs fp32 | steps | img/s | wall (s) "
        "| peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = 100 * (r["accuracy"] - fp32[r["net"]])
        lines.append(
            f"| {r['net']} | {r['method']} | {r['bits']} | {100 * r['accuracy']:.2f} | {d:+.2f} | "
            f"{r.get('steps', '-')} | {r.get('images_per_s', '-')} | {r['wall_s']} | "
            f"{r['peak_rss_mib']} |"
        )
    return "\n".join(lines)


def _merge(rows: list[dict], fp32: dict[str, float], argv: str) -> tuple[list[dict], dict]:
    """Add this run's rows to benchmarks/results/accuracy.json (same net/method/bits replaced)."""
    path = ROOT / "benchmarks" / "results" / "accuracy.json"
    path.parent.mkdir(exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {"fp32": {}, "rows": []}
    for r in rows:
        r["benchmark_args"] = argv
    key = lambda r: (r["net"], r["method"], r["bits"])  # noqa: E731
    merged = {key(r): r for r in old["rows"]}
    merged.update({key(r): r for r in rows})
    order = {m: i for i, m in enumerate(METHODS)}
    out = sorted(
        merged.values(), key=lambda r: (r["net"], order[r["method"]], list(BITS).index(r["bits"]))
    )
    fp32 = {**old["fp32"], **fp32}
    path.write_text(json.dumps({"fp32": fp32, "rows": out}, indent=2) + "\n")
    return out, fp32


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--bits", nargs="+", default=list(BITS), choices=list(BITS))
    ap.add_argument("--models", type=Path, default=SHARED / "models")
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--proxy", default="natural_patches_5k.npz", help="proxy file under --data")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--time-budget", type=float, default=None, help="minutes per fine-tuning run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()

    x, y = _test_set(args.data)
    fp32 = {n: _accuracy(args.models / f"{NETS[n]}.onnx", x, y) for n in args.nets}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in args.nets:
            for method in args.methods:
                for bits in args.bits:
                    row = run_row(net, method, bits, args, x, y, Path(tmp))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    rows, fp32 = _merge(rows, fp32, " ".join(sys.argv[1:]))
    header = (
        "fp32 (onnxruntime, JPEG CIFAR-10 test, 10,000 images): "
        + ", ".join(f"{n} {100 * a:.2f} %" for n, a in fp32.items())
        + ". Each row's exact command (and the `benchmarks/accuracy.py` arguments that ran it) "
        "is in `benchmarks/results/accuracy.json`; rerun everything with "
        "`python benchmarks/accuracy.py --write`."
    )
    text = header + "\n\n" + _table(rows, fp32)
    print(text)
    if args.write:
        write_section("accuracy", "Accuracy (CIFAR-10, onnxruntime on the exported file)", text)


if __name__ == "__main__":
    main()
