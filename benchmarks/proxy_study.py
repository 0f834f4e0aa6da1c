"""Does the BNS distance predict which proxy set gives the best quantized model?

For each network: ``zerop-deploy select-proxy`` over every proxy candidate of ``../shared/data``
(all files but the two ``cifar10_*``), the built-in pool and a Gaussian-noise set; then, for each
candidate alone, ``zerop-deploy quantize --bits 4`` (W4A4, first/last 8 bit) with the same fixed
fine-tuning budget, accuracy on ``cifar10_test.npz`` by onnxruntime on the exported file.
Spearman's rho between distance and accuracy (normalised and plain ZeroQ distance), whether the
top-ranked candidate is within 1 point of the best, how much proxy data the top candidate needs,
and, on the ``_folded`` twins (no BN statistics), how well the output-based score agrees with the
BNS ranking of the unfolded model.

Results: ``benchmarks/results/proxy_study.json`` (rows merged by net/candidate/images/steps), plots
``benchmarks/results/select_proxy_<net>.png``; ``--write`` updates BENCHMARKS.md.

Usage::

    python benchmarks/proxy_study.py --parts rank accuracy amount --write
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, SHARED, run_command, zerop_command

NETS = {"resnet20": "resnet20_cifar10", "shufflenet": "shufflenetv2_x0_5_cifar10"}
RESULTS = ROOT / "benchmarks" / "results" / "proxy_study.json"
NOISE = "gaussian_noise"
UPPER = "cifar10_train_5k.npz"


def _candidates(data: Path, tmp: Path) -> dict[str, str]:
    """Display name -> path (or "builtin")."""
    out = {p.name: str(p) for p in sorted(data.glob("*.npz")) if not p.name.startswith("cifar10")}
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(127.5, 64, (2048, 32, 32, 3)), 0, 255).round().astype(np.uint8)
    np.savez(tmp / f"{NOISE}.npz", images=noise)
    out[NOISE] = str(tmp / f"{NOISE}.npz")
    out["builtin"] = "builtin"
    return out


def _name(path: str) -> str:
    return Path(path).name.removesuffix(".npz") if path != "builtin" else "builtin"


def rank(net: str, model: Path, cands: dict[str, str], samples: int, plot: Path | None) -> dict:
    cmd = zerop_command(
        "select-proxy", str(model), *cands.values(), "--samples", str(samples), "--json"
    )
    if plot is not None:
        cmd += ["--plot", str(plot)]
    wall, _, stdout = run_command(cmd)
    doc = json.loads(stdout)
    for r in doc["ranking"]:
        r["candidate"] = _name(r["candidate"])
    doc["model"] = model.name
    doc["wall_s"] = round(wall, 1)
    print(f"{net}: ranked {len(cands)} candidates in {wall:.0f} s", flush=True)
    return doc


def quantize_row(net: str, model: Path, name: str, path: str, args, tmp: Path, images=None):
    out = tmp / f"{net}-{name}.int4.onnx"
    cmd = zerop_command(
        "quantize", str(model), "-o", str(out), "--bits", "4", "--proxy", path,
        "--steps", str(args.steps), "--seed", str(args.seed),
        "--eval", str(args.data / "cifar10_test.npz"), "--json", "--quiet",
    )  # fmt: skip
    if images is not None:
        cmd += ["--proxy-images", str(images)]
    wall, peak, stdout = run_command(cmd)
    rep = json.loads(stdout)
    row = {
        "net": net,
        "candidate": name,
        "images": rep["proxy"]["images"],
        "proxy_images_arg": images,
        "steps": rep["training"]["steps"],
        "accuracy": rep["accuracy"]["quantized"],
        "fp32": rep["accuracy"]["fp32"],
        "wall_s": round(wall, 1),
        "command": " ".join(cmd).replace(str(tmp), "TMP").replace(sys.executable, "python"),
    }
    print(json.dumps(row), flush=True)
    return row


def _load() -> dict:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text())
    return {"rankings": {}, "runs": []}


def _save(doc: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    key = lambda r: (r["net"], r["candidate"], r["proxy_images_arg"] or 0, r["steps"])  # noqa: E731
    doc["runs"] = sorted({key(r): r for r in doc["runs"]}.values(), key=key)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument(
        "--parts", nargs="+", default=["rank", "accuracy", "amount"],
        choices=["rank", "accuracy", "amount"],
    )  # fmt: skip
    ap.add_argument("--models", type=Path, default=SHARED / "models")
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    doc = _load()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        cands = _candidates(args.data, tmp)
        for net in args.nets:
            model = args.models / f"{NETS[net]}.onnx"
            folded = args.models / f"{NETS[net]}_folded.onnx"
            if "rank" in args.parts:
                plot = ROOT / "benchmarks" / "results" / f"select_proxy_{net}.png"
                doc["rankings"][net] = rank(net, model, cands, args.samples, plot)
                doc["rankings"][f"{net}_folded"] = rank(net, folded, cands, args.samples, None)
                _save(doc)
            if "accuracy" in args.parts:
                todo = {**cands, _name(UPPER): str(args.data / UPPER)}
                for name, path in todo.items():
                    doc["runs"].append(quantize_row(net, model, _name(name), path, args, tmp))
                    _save(doc)
            if "amount" in args.parts:
                best = doc["rankings"][net]["ranking"][0]["candidate"]
                path = cands.get(best, cands.get(f"{best}.npz"))
                for n in (256, 1024):
                    doc["runs"].append(quantize_row(net, model, best, path, args, tmp, n))
                    _save(doc)
    from proxy_report import publish

    publish(doc, args.steps, write=args.write)


if __name__ == "__main__":
    main()
