"""Synthetic data: speed, closeness to the stored BN statistics, and the ZeroP mix.

1. Speed: ``zerop-deploy synth MODEL -n 1024`` at default settings (wall time, images/s,
   iterations), for each network.
2. Quality: the BNS distance of that synthetic set next to every real candidate's
   (``select-proxy`` over the synthetic file, the shared proxy candidates and a Gaussian-noise set).
3. The ZeroP claim at W4A4 (``--bits 4``) with the same fine-tuning budget: synthetic only
   (``--proxy none --synthetic SYNTH.npz``), best proxy only (``--proxy BEST``), proxy +
   synthetic (``--proxy BEST --synthetic SYNTH.npz --sd-ratio 0.5``), SYNTH.npz being the set
   of part 1; accuracy on ``cifar10_test.npz`` by
   onnxruntime. BEST is the top candidate of the BNS ranking (``proxy_study.json``, else
   ``tinyimagenet_val_2k.npz``).

Results: ``benchmarks/results/synth_study.json``; ``--write`` updates BENCHMARKS.md.

Usage::

    python benchmarks/synth_study.py --write
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import ROOT, SHARED, run_command, write_section, zerop_command
from proxy_study import NETS, _candidates, _name

RESULTS = ROOT / "benchmarks" / "results" / "synth_study.json"


def _best(net: str) -> str:
    path = ROOT / "benchmarks" / "results" / "proxy_study.json"
    if path.exists():
        ranking = json.loads(path.read_text())["rankings"].get(net)
        if ranking:
            return ranking["ranking"][0]["candidate"]
    return "tinyimagenet_val_2k"


def speed_and_quality(net: str, model: Path, args, tmp: Path) -> dict:
    out = tmp / f"{net}-synth.npz"
    cmd = zerop_command("synth", str(model), "-n", str(args.images), "-o", str(out), "--json")
    if net == "resnet20":
        cmd += ["--preview", str(ROOT / "benchmarks" / "results" / "synth_resnet20.png")]
    wall, peak, stdout = run_command(cmd)
    doc = json.loads(stdout)
    cands = {**_candidates(args.data, tmp), "synthetic": str(out)}
    _, _, rank_out = run_command(
        zerop_command("select-proxy", str(model), *cands.values(), "--samples", "1024", "--json")
    )
    ranking = json.loads(rank_out)["ranking"]
    for r in ranking:
        r["candidate"] = "synthetic" if r["candidate"] == str(out) else _name(r["candidate"])
    row = {
        "net": net,
        "wall_s": round(wall, 1),
        "synth_seconds": doc["seconds"],
        "images": doc["images"],
        "iterations": doc["iterations"],
        "images_per_second": doc["images_per_second"],
        "peak_rss_mib": round(peak),
        "ranking": [{k: r[k] for k in ("candidate", "distance")} for r in ranking],
        "command": " ".join(cmd).replace(str(tmp), "TMP").replace(sys.executable, "python"),
    }
    print(json.dumps(row), flush=True)
    return row


def mix_row(
    net: str, model: Path, variant: str, best: str, synthetic: Path, args, tmp: Path
) -> dict:
    proxy = {
        "synthetic only": ["--proxy", "none", "--synthetic", str(synthetic)],
        "proxy only": ["--proxy", best],
        "proxy + synthetic": ["--proxy", best, "--synthetic", str(synthetic)],
    }[variant]
    cmd = zerop_command(
        "quantize", str(model), "-o", str(tmp / f"{net}.int4.onnx"), "--bits", "4", *proxy,
        "--sd-ratio", "0.5", "--steps", str(args.steps), "--seed", "0",
        "--eval", str(args.data / "cifar10_test.npz"), "--json", "--quiet",
    )  # fmt: skip
    wall, _, stdout = run_command(cmd)
    rep = json.loads(stdout)
    row = {
        "net": net,
        "variant": variant,
        "proxy": Path(best).name if "proxy" in variant.split() else None,
        "accuracy": rep["accuracy"]["quantized"],
        "fp32": rep["accuracy"]["fp32"],
        "steps": rep["training"]["steps"],
        "synthetic": rep["synthetic"].get("images"),
        "wall_s": round(wall, 1),
        "command": " ".join(cmd).replace(str(tmp), "TMP").replace(sys.executable, "python"),
    }
    print(json.dumps(row), flush=True)
    return row


def report(doc: dict) -> str:
    lines = [
        "Reproduce: `python benchmarks/synth_study.py --write` (2-core CPU machine, idle). "
        "Every command is in `benchmarks/results/synth_study.json`.",
        "",
        "| network | images | iterations | synth wall (s) | img/s | synthetic BNS distance "
        "| best real candidate | Gaussian noise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in doc.get("speed", []):
        dist = {r["candidate"]: r["distance"] for r in s["ranking"]}
        real = [r for r in s["ranking"] if r["candidate"] not in ("synthetic", "gaussian_noise")]
        lines.append(
            f"| {s['net']} | {s['images']} | {s['iterations']} | {s['synth_seconds']:.0f} | "
            f"{s['images_per_second']} | {dist['synthetic']:.4f} | "
            f"{real[0]['distance']:.4f} ({real[0]['candidate']}) | "
            f"{dist['gaussian_noise']:.4f} |"
        )
    lines += [
        "",
        "| network | fine-tuning data | W4A4 top-1 (%) | vs fp32 | steps | synthetic images |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc.get("mix", []):
        name = r["variant"] + (f" ({r['proxy']})" if r["proxy"] else "")
        lines.append(
            f"| {r['net']} | {name} | {100 * r['accuracy']:.2f} | "
            f"{100 * (r['accuracy'] - r['fp32']):+.2f} | {r['steps']} | "
            f"{r['synthetic'] or '-'} |"
        )
    for net in NETS:
        acc = {r["variant"]: r["accuracy"] for r in doc.get("mix", []) if r["net"] == net}
        if {"synthetic only", "proxy + synthetic"} <= set(acc):
            gain = 100 * (acc["proxy + synthetic"] - acc["synthetic only"])
            lines.append(
                f"\n- {net}: proxy + synthetic vs synthetic only: **{gain:+.2f} points** "
                "(goal >= +3)."
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--parts", nargs="+", default=["speed", "mix"], choices=["speed", "mix"])
    ap.add_argument("--models", type=Path, default=SHARED / "models")
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"speed": [], "mix": []}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for net in args.nets:
            model = args.models / f"{NETS[net]}.onnx"
            if "speed" in args.parts:
                doc["speed"] = [s for s in doc["speed"] if s["net"] != net]
                doc["speed"].append(speed_and_quality(net, model, args, tmp))
            if "mix" in args.parts:
                name = _best(net)
                best = "builtin" if name == "builtin" else str(args.data / f"{name}.npz")
                doc["mix"] = [r for r in doc["mix"] if r["net"] != net]
                synthetic = tmp / f"{net}-synth.npz"  # made by the speed part, reused as it is
                if not synthetic.exists():
                    run_command(zerop_command("synth", str(model), "-n", str(args.images), "-o",
                                       str(synthetic)))  # fmt: skip
                for variant in ("synthetic only", "proxy only", "proxy + synthetic"):
                    doc["mix"].append(mix_row(net, model, variant, best, synthetic, args, tmp))
            RESULTS.parent.mkdir(exist_ok=True)
            RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    text = report(doc)
    print(text)
    if args.write:
        write_section("synth", "Synthetic data", text)


if __name__ == "__main__":
    main()
