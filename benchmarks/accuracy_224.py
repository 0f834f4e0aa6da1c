"""Accuracy of EfficientNet-Lite0 (224 px) quantized without its data, by onnxruntime on the file.

Each row runs one real command (``zerop-deploy quantize ... --eval imagenet_eval``, or
onnxruntime's own ``quantize_static`` through ``ort_static.py``) and takes top-1 on the 1,000
images of ``../shared/data/imagenet_eval`` (one per class; resize 256 + center crop 224, bicubic:
the project's default) as measured by onnxruntime on the exported file. The folder probably holds
ImageNet training images, so only the gap to fp32 on the same folder means anything.

Parts:

- ``table``: fp32, then per width (W8A8, W4A8, W4A4 with first/last 8 bit, all 4 bit) and method:
  ``ort_static`` (onnxruntime ``quantize_static`` calibrated on the candidate the BNS ranking puts
  first), ``builtin`` (the default pool), ``proxy`` (``--proxy auto`` over the candidates),
  ``synthetic`` (``--proxy none --synthetic N``) and ``zerop`` (``--proxy auto --synthetic N``).
- ``rho``: ``select-proxy`` over the candidates, then W4A4 with each candidate alone under the
  same schedule; Spearman's rho between BNS distance and accuracy.

Candidates: every ``.npz`` and JPEG folder of ``../shared/data`` except the target-domain sets
(``cifar10_*``, ``imagenet_samples_1k.npz``: ImageNet images are the original data here, and
``imagenet_eval``); the 64-px files are upsampled to 224 like any small image.

The schedule (``--steps``, ``--batch-size``) is recorded with each row and shown in the table;
rows are merged into ``benchmarks/results/accuracy_224.json`` by (part, method, bits, candidate,
steps, batch) as they finish, so a stopped run keeps what it measured.

Usage::

    python benchmarks/accuracy_224.py --parts table --methods ort_static builtin --write
    python benchmarks/accuracy_224.py --parts rho --steps 30 --batch-size 16 --write
    python benchmarks/accuracy_224.py --render --write     # redraw from the results file
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import ROOT, SHARED, run_command, synthetic_set, write_section, zerop_command
from ort_static import model_input, read_inputs

from zerop_deploy.proxy.stats import spearman

MODEL = "efficientnet_lite0_imagenet.onnx"
EVAL = "imagenet_eval"
BITS = {
    "w8a8": ("8", "8", "8"),
    "w4a8": ("4", "8", "8"),
    "w4a4": ("4", "4", "8"),
    "w4a4-all4": ("4", "4", "4"),
}
METHODS = ("ort_static", "builtin", "proxy", "synthetic", "zerop")
NOT_PROXY = ("cifar10_", "imagenet_")
RESULTS = ROOT / "benchmarks" / "results" / "accuracy_224.json"


def candidates(data: Path) -> list[str]:
    """Proxy candidates: every image file and folder of ``data`` but the target-domain sets."""
    found = [p for p in sorted(data.iterdir()) if p.suffix == ".npz" or p.is_dir()]
    return [str(p) for p in found if not p.name.startswith(NOT_PROXY)]


class Run:
    """What the rows share: paths, schedule, BNS ranking and synthetic set (made once)."""

    def __init__(self, args, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.model = args.models / MODEL
        self.eval = args.data / EVAL
        self.work = args.work or tmp
        self._ranking: list[dict] | None = None
        self._synth: tuple[Path, float] | None = None
        self._eval: tuple | None = None

    def ranking(self) -> list[dict]:
        """``select-proxy`` over the candidates, best first (its JSON ``ranking``)."""
        if self._ranking is None:
            cands = candidates(self.args.data)
            cmd = zerop_command("select-proxy", str(self.model), *cands, "--samples",
                                str(self.args.samples), "--json")  # fmt: skip
            _, _, stdout = run_command(cmd)
            self._ranking = json.loads(stdout)["ranking"]
        return self._ranking

    def synthetic(self) -> tuple[Path, float]:
        """``(synthetic .npz, seconds it took)``, kept in ``--work`` for later runs."""
        if self._synth is None:
            n, seed = self.args.synthetic_images, self.args.seed
            path = self.work / f"lite0-synth{n}-seed{seed}.npz"
            self._synth = (path, synthetic_set(self.model, n, seed, path))
        return self._synth

    def eval_set(self):
        """The eval images as the model's input (read once), and their labels."""
        if self._eval is None:
            _, chw = model_input(self.model)
            self._eval = read_inputs(self.eval, chw, None, shuffle=False)
        return self._eval

    def quantize(self, bits: str, out: Path, *data: str) -> list[str]:
        w, a, fl = BITS[bits]
        a_ = self.args
        return zerop_command(
            "quantize", str(self.model), "-o", str(out), "--wbits", w, "--abits", a,
            "--first-last-bits", fl, "--seed", str(a_.seed), "--steps", str(a_.steps),
            "--batch-size", str(a_.batch_size), "--eval", str(self.eval), "--json", "--quiet",
            *(["--target", a_.target] if a_.target else []), *data,
        )  # fmt: skip

    def shown(self, cmd: list[str]) -> str:
        """The command as a user would type it: paths relative to ../shared, candidates elided."""
        text = " ".join(cmd).replace(sys.executable, "python").replace(str(ROOT) + "/", "")
        for d in (self.tmp, self.work):
            text = text.replace(str(d) + "/", "")
        text = text.replace(" ".join(candidates(self.args.data)), "<candidates>")
        return text.replace(str(self.args.data) + "/", "").replace(str(self.args.models) + "/", "")


def table_row(method: str, bits: str, run: Run) -> dict:
    out = run.tmp / f"lite0-{method}-{bits}.onnx"
    auto = ["--proxy", "auto", "--candidates", *candidates(run.args.data)]
    synth_s = 0.0
    if method == "ort_static":
        w, a, _ = BITS[bits]
        chosen = run.ranking()[0]["candidate"]
        cmd = [sys.executable, str(ROOT / "benchmarks" / "ort_static.py"), str(run.model),
               str(out), "--wbits", w, "--abits", a, "--calib", chosen, "--select",
               str(run.eval), "--images", "128"]  # fmt: skip
        wall, peak, _ = run_command(cmd)
        from zerop_deploy.validate.compare import accuracy

        x, y = run.eval_set()
        row = {"accuracy": accuracy(str(out), x, y), "proxy": Path(chosen).name}
    else:
        plot = ROOT / "benchmarks" / "results" / "accuracy_224_w4a4_layers.png"
        extra = {"builtin": ["--plot-layers", str(plot)] if bits == "w4a4" else [],
                 "proxy": auto}.get(method)  # fmt: skip
        if extra is None:
            synth, synth_s = run.synthetic()
            extra = ["--proxy", "none"] if method == "synthetic" else auto
            extra = [*extra, "--synthetic", str(synth)]
        cmd = run.quantize(bits, out, *extra)
        wall, peak, stdout = run_command(cmd)
        row = _from_report(json.loads(stdout))
    return {"part": "table", "method": method, "bits": bits, **row,
            "wall_s": round(wall + synth_s, 1), "synthesis_s": synth_s,
            "peak_rss_mib": round(peak), "command": run.shown(cmd)}  # fmt: skip


def _from_report(rep: dict) -> dict:
    chosen = rep["proxy"]["chosen"]
    return {
        "accuracy": rep["accuracy"]["quantized"],
        "fp32": rep["accuracy"]["fp32"],
        "proxy": Path(chosen).name if chosen else "none (synthetic only)",
        "steps": rep["training"]["steps"],
        "batch_size": rep["config"]["train"]["batch_size"],
        "images_per_s": rep["training"]["images_per_second"],
        "ort_vs_student": rep["validation"]["ort_vs_student_top1_agreement"],
        "target": rep["target"]["name"],
    }


def rho_rows(run: Run) -> list[dict]:
    rows = []
    for r in run.ranking():
        name = Path(r["candidate"]).name
        out = run.tmp / f"lite0-rho-{name}.onnx"
        cmd = run.quantize("w4a4", out, "--proxy", r["candidate"])
        wall, peak, stdout = run_command(cmd)
        row = {"part": "rho", "method": "proxy", "bits": "w4a4", "candidate": name,
               "distance": r["distance"], **_from_report(json.loads(stdout)),
               "wall_s": round(wall, 1), "peak_rss_mib": round(peak),
               "command": run.shown(cmd)}  # fmt: skip
        print(json.dumps(row), flush=True)
        _merge([row])
        rows.append(row)
    return rows


def _key(r: dict) -> tuple:
    return (r["part"], r["method"], r["bits"], r.get("candidate", ""), r.get("steps", 0),
            r.get("batch_size", 0), r.get("target", ""))  # fmt: skip


def _merge(rows: list[dict], fp32: float | None = None) -> dict:
    """Add rows to the results file (same key replaced); return the whole file."""
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"fp32": None, "rows": []}
    merged = {_key(r): r for r in old["rows"]}
    merged.update({_key(r): r for r in rows})
    doc = {"fp32": fp32 if fp32 is not None else old["fp32"], "rows": list(merged.values())}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


GOALS = {"w8a8": 0.005, "w4a8": 0.02, "w4a4": 0.06}  # largest drop from fp32 allowed


def goals(rows: list[dict], fp32: float) -> list[str]:
    """Each width's goal, met or not, with the number (built-in pool rows only)."""
    out = []
    for r in rows:
        need = GOALS.get(r["bits"])
        if r["method"] != "builtin" or need is None:
            continue
        ok = r["accuracy"] >= fp32 - need - 1e-9
        out.append(
            f"- {r['bits']} ({r['steps']} x {r['batch_size']}, {r['target']}): "
            f"{100 * r['accuracy']:.2f} % (needs >= {100 * (fp32 - need):.2f} %) - "
            f"**{'met' if ok else 'NOT met'}**"
        )
    return out


def render(doc: dict) -> str:
    fp32 = doc["fp32"]
    order = {m: i for i, m in enumerate(METHODS)}
    table = sorted((r for r in doc["rows"] if r["part"] == "table"),
                   key=lambda r: (list(BITS).index(r["bits"]), order[r["method"]],
                                  r.get("target", "")))  # fmt: skip
    lines = [
        f"EfficientNet-Lite0 (`{MODEL}`), fp32 **{100 * fp32:.2f} %** on `{EVAL}` (1,000 images, "
        "resize 256 + center crop 224, bicubic), onnxruntime on each exported file. Each row's "
        "command is in `benchmarks/results/accuracy_224.json`.",
        "",
        "| bits | method | proxy data | steps x batch | file | top-1 (%) | vs fp32 "
        "| file vs student | img/s | wall (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        sched = f"{r['steps']} x {r['batch_size']}" if "steps" in r else "calibration only"
        agree = f"{100 * r['ort_vs_student']:.1f} %" if "ort_vs_student" in r else "-"
        wall = f"{r['wall_s']}" + (f" ({r['synthesis_s']} synth)" if r.get("synthesis_s") else "")
        lines.append(
            f"| {r['bits']} | {r['method']} | {r.get('proxy', '-')} | {sched} | "
            f"{r.get('target', 'ort QDQ')} | {100 * r['accuracy']:.2f} | "
            f"{100 * (r['accuracy'] - fp32):+.2f} | {agree} | "
            f"{r.get('images_per_s', '-')} | {wall} | {r['peak_rss_mib']} |"
        )
    lines += ["", "Goals (no data: the built-in pool; the schedule is the row's):", ""]
    lines += goals(table, fp32)
    rho = sorted((r for r in doc["rows"] if r["part"] == "rho"), key=lambda r: r["distance"])
    if len(rho) >= 2:
        s = spearman([r["distance"] for r in rho], [r["accuracy"] for r in rho])
        lines += [
            "",
            f"BNS distance against W4A4 accuracy, each candidate alone as `--proxy` "
            f"({rho[0]['steps']} steps x {rho[0]['batch_size']}; "
            "`python benchmarks/accuracy_224.py --parts rho --write`): "
            f"**Spearman rho {s:+.2f}** over {len(rho)} candidates (goal <= -0.7).",
            "",
            "| candidate | BNS distance | W4A4 top-1 (%) |",
            "|---|---|---|",
            *(
                f"| {r['candidate']} | {r['distance']:.4g} | {100 * r['accuracy']:.2f} |"
                for r in rho
            ),  # fmt: skip
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", nargs="+", default=["table", "rho"], choices=["table", "rho"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--bits", nargs="+", default=list(BITS), choices=list(BITS))
    ap.add_argument("--models", type=Path, default=SHARED / "models")
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=256, help="images per candidate to rank")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--target", choices=("qdq", "ort-cpu"), default=None, help="default: quantize's"
    )
    ap.add_argument("--synthetic-images", type=int, default=256)
    ap.add_argument("--work", type=Path, default=None, help="keep the synthetic set here")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    ap.add_argument("--render", action="store_true", help="run nothing: redraw from the results")
    args = ap.parse_args()
    if not args.render:
        with tempfile.TemporaryDirectory() as tmp:
            run = Run(args, Path(tmp))
            if "table" in args.parts:
                from zerop_deploy.validate.compare import accuracy

                x, y = run.eval_set()
                _merge([], accuracy(str(run.model), x, y))
                for bits in args.bits:
                    for method in args.methods:
                        if method == "ort_static" and bits == "w4a4-all4":
                            continue  # quantize_static has no first/last-layer width
                        row = table_row(method, bits, run)
                        print(json.dumps(row), flush=True)
                        _merge([row])
            if "rho" in args.parts:
                rho_rows(run)
    text = render(json.loads(RESULTS.read_text()))
    print(text)
    if args.write:
        write_section("accuracy-224", "Accuracy at 224 px: EfficientNet-Lite0 on ImageNet", text)


if __name__ == "__main__":
    main()
