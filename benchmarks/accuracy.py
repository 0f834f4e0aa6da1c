"""Accuracy of quantized CIFAR-10 networks, measured by onnxruntime on the exported files.

Each row runs one real command (``zerop-deploy quantize ...`` in a subprocess, or onnxruntime's own
``quantize_static`` for the baseline), then measures top-1 accuracy on ``cifar10_test.npz`` with
onnxruntime on the file that command wrote. Wall time, peak memory (RSS of the child), images/s,
seed and the exact command are recorded per row. Results go to
``benchmarks/results/accuracy.json``, the plot to ``benchmarks/results/accuracy.png`` and, with
``--write``, the table to the "Accuracy" section of BENCHMARKS.md.

Methods (the same ``--steps`` budget wherever they fine-tune):

- ``ort_static``: onnxruntime ``quantize_static`` calibrated on the proxy set our BNS ranking
  chooses (what a user would run instead);
- ``synthetic``: ``--proxy none --synthetic SD`` (synthetic-only, the ZeroQ-style baseline);
- ``proxy``: ``--proxy auto --candidates ...`` (the best candidate by BNS, alone);
- ``zerop``: ``--proxy auto --candidates ... --synthetic SD`` (proxy + synthetic, ZeroP);
- ``upper_bound``: the same fine-tuning on real CIFAR-10 training images (``cifar10_train_5k``);
- ``default``: plain ``zerop-deploy quantize MODEL --bits 4`` (built-in pool), W4A4 only.

The synthetic set SD (1,024 images) is made once per network by ``zerop-deploy synth`` and its
time is added to the wall time of the rows that use it (``synthesis_s``). The candidates are the
proxy sets of ``../shared/data`` (not the ``cifar10_*`` files).

Usage::

    python benchmarks/accuracy.py --write                      # the whole table
    python benchmarks/accuracy.py --nets resnet20 --methods zerop --bits w4a4 --steps 300
    python benchmarks/accuracy.py --render --write             # redraw from the results file
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, SHARED, run_command, synthetic_set, write_section, zerop_command

NETS = {
    "resnet20": "resnet20_cifar10",
    "shufflenet": "shufflenetv2_x0_5_cifar10",
    "resnet20_folded": "resnet20_cifar10_folded",
    "shufflenet_folded": "shufflenetv2_x0_5_cifar10_folded",
}
BITS = {
    "w8a8": ("8", "8", "8"),
    "w4a8": ("4", "8", "8"),
    "w4a4": ("4", "4", "8"),
    "w4a4-all4": ("4", "4", "4"),
}
METHODS = ("ort_static", "synthetic", "proxy", "zerop", "upper_bound", "default")


def _test_set(data: Path):
    from zerop_deploy.data.sources import load_images, to_model_input

    s = load_images(data / "cifar10_test.npz")
    return to_model_input(s.images, (3, 32, 32)).numpy(), s.labels


def _accuracy(model: Path, x: np.ndarray, y: np.ndarray) -> float:
    from zerop_deploy.validate.compare import accuracy

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


def _candidates(data: Path) -> list[str]:
    return [str(p) for p in sorted(data.glob("*.npz")) if not p.name.startswith("cifar10_")]


class Prep:
    """What the rows of one network share: the BNS choice and the synthetic set, made once."""

    def __init__(self, net: str, model: Path, args, tmp: Path) -> None:
        self.net, self.model, self.args, self.tmp = net, model, args, tmp
        self.work = args.work or tmp
        self._chosen: str | None = None
        self._synth: tuple[Path, float] | None = None

    def chosen(self) -> str:
        """The candidate ``select-proxy`` ranks first (calibration set of ``ort_static``)."""
        if self._chosen is None:
            cmd = zerop_command(
                "select-proxy", str(self.model), *_candidates(self.args.data), "--json"
            )
            _, _, stdout = run_command(cmd)
            self._chosen = json.loads(stdout)["ranking"][0]["candidate"]
        return self._chosen

    def synthetic(self) -> tuple[Path, float]:
        """``(synthetic .npz, seconds it took)``."""
        if self._synth is None:  # --work keeps it for the next run
            n, seed = self.args.synthetic_images, self.args.seed
            path = self.work / f"{self.net}-synth{n}-seed{seed}.npz"
            self._synth = (path, synthetic_set(self.model, n, seed, path))
        return self._synth


def _quantize(model: Path, out: Path, bits: tuple[str, str, str], args) -> list[str]:
    w, a, fl = bits
    cmd = zerop_command(
        "quantize", str(model), "-o", str(out), "--wbits", w, "--abits", a,
        "--first-last-bits", fl, "--seed", str(args.seed), "--json", "--quiet",
    )  # fmt: skip
    return cmd + (
        ["--time-budget", str(args.time_budget)]
        if args.time_budget
        else ["--steps", str(args.steps)]
    )


def command(method: str, bits: str, prep: Prep, out: Path) -> tuple[list[str], float]:
    """The row's command line, and the synthesis seconds it relies on (0 when none)."""
    args, model = prep.args, prep.model
    auto = ["--proxy", "auto", "--candidates", *_candidates(args.data)]
    if method == "ort_static":
        w, a, _ = BITS[bits]
        script = str(ROOT / "benchmarks" / "ort_static.py")
        cmd = [sys.executable, script, str(model), str(out), "--wbits", w, "--abits", a]
        return cmd + ["--calib", prep.chosen()], 0.0
    if method == "default":
        cmd = zerop_command("quantize", str(model), "--bits", "4", "-o", str(out), "--seed",
                     str(args.seed), "--json", "--quiet")  # fmt: skip
        return cmd, 0.0
    cmd = _quantize(model, out, BITS[bits], args)
    if method == "upper_bound":
        return cmd + ["--proxy", str(args.data / "cifar10_train_5k.npz")], 0.0
    if method == "proxy":
        return cmd + auto, 0.0
    synth, seconds = prep.synthetic()
    if method == "synthetic":
        return cmd + ["--proxy", "none", "--synthetic", str(synth)], seconds
    return cmd + [*auto, "--synthetic", str(synth)], seconds  # zerop


def run_row(method: str, bits: str, prep: Prep, x, y) -> dict:
    out = prep.tmp / f"{prep.net}-{method}-{bits}.onnx"
    cmd, synth_s = command(method, bits, prep, out)
    wall, peak, stdout = run_command(cmd)
    row = {
        "net": prep.net,
        "method": method,
        "bits": bits,
        "accuracy": _accuracy(out, x, y),
        "wall_s": round(wall + synth_s, 1),
        "synthesis_s": synth_s,
        "peak_rss_mib": round(peak),
        "seed": prep.args.seed,
        "command": _shown(cmd, prep),
    }
    if method == "ort_static":
        row["proxy"] = Path(prep.chosen()).name
    else:
        rep = json.loads(stdout)
        chosen = rep["proxy"]["chosen"]
        row["proxy"] = Path(chosen).name if chosen else "none (synthetic only)"
        row["images_per_s"] = rep["training"]["images_per_second"]
        row["steps"] = rep["training"]["steps"]
        row["ort_vs_student"] = rep["validation"]["ort_vs_student_top1_agreement"]
    return row


def _shown(cmd: list[str], prep: Prep) -> str:
    """The command as a user would type it: paths relative to ../shared, candidates elided."""
    text = " ".join(cmd).replace(str(prep.tmp) + "/", "").replace(sys.executable, "python")
    text = text.replace(str(prep.work) + "/", "").replace(str(ROOT) + "/", "")
    cands = " ".join(_candidates(prep.args.data))
    return (
        text.replace(cands, "<every proxy set of ../shared/data>")
        .replace(str(prep.args.data) + "/", "")
        .replace(str(prep.args.models) + "/", "")
    )


def _table(rows: list[dict], fp32: dict[str, float]) -> str:
    lines = [
        "| network | method | bits | proxy data | top-1 (%) | vs fp32 | steps | img/s | wall (s) "
        "| peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = 100 * (r["accuracy"] - fp32[r["net"]])
        wall = f"{r['wall_s']}" + (f" ({r['synthesis_s']} synth)" if r.get("synthesis_s") else "")
        lines.append(
            f"| {r['net']} | {r['method']} | {r['bits']} | {r.get('proxy', '-')} | "
            f"{100 * r['accuracy']:.2f} | {d:+.2f} | {r.get('steps', '-')} | "
            f"{r.get('images_per_s', '-')} | {wall} | {r['peak_rss_mib']} |"
        )
    return "\n".join(lines)


def goals(rows: list[dict], fp32: dict[str, float]) -> list[str]:
    """The accuracy goals, each stated as met or not with the number (only those the rows cover)."""
    acc = {(r["net"], r["method"], r["bits"]): r for r in rows}
    out = []

    def check(text: str, key: tuple[str, str, str], need: float, wall: float | None = None):
        r = acc.get(key)
        if r is None:
            return
        ok = r["accuracy"] >= need - 1e-9 and (wall is None or r["wall_s"] <= wall)
        extra = f" in {r['wall_s']:.0f} s" if wall else ""
        out.append(
            f"- {text}: {100 * r['accuracy']:.2f} %{extra} (needs >= {100 * need:.2f} %"
            + (f", <= {wall:.0f} s" if wall else "")
            + f") - **{'met' if ok else 'NOT met'}**"
        )

    r20, sf = fp32.get("resnet20"), fp32.get("shufflenet")
    if r20 is not None:
        check("ResNet-20 `--bits 4`, built-in pool, 15 min", ("resnet20", "default", "w4a4"),
              r20 - 0.01, 900)  # fmt: skip
        check("ResNet-20 `--proxy auto`, W4A4", ("resnet20", "proxy", "w4a4"), r20, 900)
        check("ResNet-20 W4A8 (ZeroP)", ("resnet20", "zerop", "w4a8"), r20 - 0.005)
        check("ResNet-20 W8A8 (ZeroP)", ("resnet20", "zerop", "w8a8"), r20 - 0.002)
    if sf is not None:
        check("ShuffleNetV2 W4A4 (ZeroP)", ("shufflenet", "zerop", "w4a4"), sf - 0.03, 900)
        check("ShuffleNetV2 W4A4 `--bits 4` default", ("shufflenet", "default", "w4a4"),
              sf - 0.03, 900)  # fmt: skip
    for net in ("resnet20", "shufflenet"):
        z, s = acc.get((net, "zerop", "w4a4")), acc.get((net, "synthetic", "w4a4"))
        if z and s:
            gain = 100 * (z["accuracy"] - s["accuracy"])
            out.append(
                f"- {net}: ZeroP beats synthetic-only at W4A4 by {gain:+.2f} points (needs >= +3) "
                f"- **{'met' if gain >= 3 else 'NOT met'}**"
            )
        f, u = acc.get((f"{net}_folded", "default", "w4a4")), acc.get((net, "default", "w4a4"))
        if f and u:
            gap = 100 * (u["accuracy"] - f["accuracy"])
            out.append(
                f"- {net}_folded `--bits 4`: {100 * f['accuracy']:.2f} %, {-gap:+.2f} points "
                f"against its unfolded twin (needs >= -2) - **{'met' if gap <= 2 else 'NOT met'}**"
            )
    return out


def plot(rows: list[dict], fp32: dict[str, float], path: Path) -> None:
    """Accuracy against bit width, one line per method, one panel per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = [n for n in ("resnet20", "shufflenet") if any(r["net"] == n for r in rows)]
    fig, axes = plt.subplots(1, len(nets), figsize=(6 * len(nets), 4.2), squeeze=False)
    for ax, net in zip(axes[0], nets, strict=True):
        low = 100 * fp32[net] - 12  # zoomed in; points below are drawn on the floor, labelled
        for method in METHODS:
            pts = [(list(BITS).index(r["bits"]), 100 * r["accuracy"]) for r in rows
                   if r["net"] == net and r["method"] == method]  # fmt: skip
            if not pts:
                continue
            xs, ys = zip(*sorted(pts), strict=True)
            (line,) = ax.plot(xs, [max(y, low + 0.3) for y in ys], marker="o", label=method)
            for x, y in zip(xs, ys, strict=True):
                if y < low:
                    ax.annotate(f"{y:.1f} %", (x, low + 0.3), textcoords="offset points",
                                xytext=(6, 4), fontsize=8, color=line.get_color())  # fmt: skip
        ax.axhline(100 * fp32[net], color="k", ls="--", lw=1, label="fp32")
        ax.set_xticks(range(len(BITS)), list(BITS))
        ax.set_title(f"{net} (CIFAR-10, onnxruntime; off-scale points on the floor)")
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(low, 100 * fp32[net] + 1.5)
        ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--time-budget", type=float, default=None, help="minutes per fine-tuning run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic-images", type=int, default=1024)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    ap.add_argument(
        "--render",
        action="store_true",
        help="run nothing: redraw the table, goals and plot from benchmarks/results/accuracy.json",
    )
    ap.add_argument(
        "--work", type=Path, default=None, help="keep the synthetic sets here for later runs"
    )
    args = ap.parse_args()

    if args.render:
        rows, fp32 = _merge([], {}, "")
        _publish(rows, fp32, args.write)
        return
    x, y = _test_set(args.data)
    fp32 = {n: _accuracy(args.models / f"{NETS[n]}.onnx", x, y) for n in args.nets}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in args.nets:
            prep = Prep(net, args.models / f"{NETS[net]}.onnx", args, Path(tmp))
            for method in args.methods:
                # the default command is W4A4; the folded twins are checked with it alone
                if net.endswith("_folded") and method != "default":
                    continue
                for bits in args.bits if method != "default" else ["w4a4"]:
                    if method == "default" and "w4a4" not in args.bits:
                        continue
                    row = run_row(method, bits, prep, x, y)
                    print(json.dumps(row), flush=True)
                    rows, merged_fp32 = _merge([row], fp32, " ".join(sys.argv[1:]))  # kept as we go
    if rows:
        _publish(rows, merged_fp32, args.write)


def _publish(rows: list[dict], fp32: dict[str, float], write: bool) -> None:
    """Plot, print and (``write``) put the table and the goals into BENCHMARKS.md."""
    plot(rows, fp32, ROOT / "benchmarks" / "results" / "accuracy.png")
    header = (
        "fp32 (onnxruntime, JPEG CIFAR-10 test, 10,000 images): "
        + ", ".join(f"{n} {100 * a:.2f} %" for n, a in fp32.items())
        + ". Each row's exact command (and the `benchmarks/accuracy.py` arguments that ran it) "
        "is in `benchmarks/results/accuracy.json`; rerun everything with "
        "`python benchmarks/accuracy.py --write`. Plot: `benchmarks/results/accuracy.png`."
    )
    text = header + "\n\n" + _table(rows, fp32) + "\n\nGoals:\n\n"
    text += "\n".join(goals(rows, fp32))
    print(text)
    if write:
        write_section("accuracy", "Accuracy by model, width and data", text)


if __name__ == "__main__":
    main()
