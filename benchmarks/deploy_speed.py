"""Does the deployment file run faster than fp32 in onnxruntime, and does it keep the accuracy?

For each model: ``zerop-deploy quantize`` writes the exact student (target qdq), ``zerop-deploy
retarget --target ort-cpu`` turns it into the deployment file (calibrated on the built-in pool).
Then, side by side in one process: onnxruntime fp32, the qdq file and the ort-cpu file, at batch
1 and 64 with 2 threads in interleaved rounds (``zerop_deploy.bench.tables.bench``), and the top-1
accuracy of all three on the labelled eval set (CIFAR-10 test, 10,000 images; ImageNet eval
folder, 1,000 images), plus the top-1 agreement of ort-cpu with the qdq file.

    python benchmarks/deploy_speed.py            # all models, prints the markdown table
    python benchmarks/deploy_speed.py --models resnet20 --steps 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SHARED  # noqa: E402
from zerop_deploy.bench.tables import bench  # noqa: E402
from zerop_deploy.data.preprocess import normalize  # noqa: E402
from zerop_deploy.data.sources import load_pool, open_source  # noqa: E402
from zerop_deploy.validate.compare import run_logits  # noqa: E402

MODELS = {
    "resnet20": ("resnet20_cifar10_folded.onnx", "cifar10_test.npz", ["--bits", "4"], (3, 32, 32)),
    "shufflenetv2": ("shufflenetv2_x0_5_cifar10_folded.onnx", "cifar10_test.npz", ["--bits", "4"],
                     (3, 32, 32)),
    "lite0-w4a8": ("efficientnet_lite0_imagenet_folded.onnx", "imagenet_eval",
                   ["--wbits", "4", "--abits", "8", "--batch-size", "16"], (3, 224, 224)),
    "lite0-w8a8": ("efficientnet_lite0_imagenet_folded.onnx", "imagenet_eval",
                   ["--bits", "8", "--batch-size", "16"], (3, 224, 224)),
}  # fmt: skip
OUT = ROOT / "benchmarks/results/deploy_speed.json"
BEGIN, END = "<!-- deploy_speed:begin -->", "<!-- deploy_speed:end -->"


def _run(args: list[str]) -> float:
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "zerop_deploy", *args], check=True)
    return time.monotonic() - t


def measure(name: str, steps: int, work: Path) -> dict:
    model_file, eval_name, bits, chw = MODELS[name]
    model = SHARED / "models" / model_file
    qdq, dep = work / f"{name}.qdq.onnx", work / f"{name}.ort-cpu.onnx"
    steps_here = steps if chw[1] <= 64 else 2
    quantize = ["quantize", str(model), *bits, "--steps", str(steps_here), "-o", str(qdq)]
    _run([*quantize, "--quiet", "--target", "qdq"])
    retarget_s = _run(["retarget", str(qdq), "--target", "ort-cpu", "-o", str(dep)])
    doc = json.loads((work / f"{name}.qdq.report.json").read_text())
    pool = load_pool(open_source(SHARED / "data" / eval_name), chw)
    x, y = normalize(pool.images).numpy(), pool.labels
    files = (("fp32", model), ("qdq", qdq), ("ort-cpu", dep))
    logits = {k: run_logits(str(p), x) for k, p in files}
    acc = {k: float((v.argmax(1) == y).mean()) for k, v in logits.items()}
    agree = float((logits["qdq"].argmax(1) == logits["ort-cpu"].argmax(1)).mean())
    speed = bench(model, threads=2, qdq_path=qdq, deploy_path=dep, batches=(1, 64), rounds=7,
                  layers=False)["end_to_end"]["by_batch"]  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    return {"model": name, "code": commit, "file": model_file, "bits": " ".join(bits),
            "steps": steps_here,
            "eval": eval_name, "eval_images": len(y), "accuracy": acc,
            "ort_cpu_vs_qdq_top1_agreement": agree, "retarget_seconds": round(retarget_s, 1),
            "quantize_layers": len(doc["layers"]), "speed": speed}  # fmt: skip


def table(rows: list[dict]) -> str:
    head = (
        "| model | quantize | batch | fp32 ms | qdq ms (x fp32 speed) | ort-cpu ms (x fp32 speed) "
        "| top-1 fp32 / qdq / ort-cpu | ort-cpu vs qdq agreement |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        a = r["accuracy"]
        for s in r["speed"]:
            lines.append(
                f"| {r['model']} | {r['bits']}, {r['steps']} steps | {s['batch']} | "
                f"{s['fp32_ms']:.2f} | {s['qdq_ms']:.2f} ({s['qdq_speedup']:.2f}x) | "
                f"{s['deploy_ms']:.2f} (**{s['deploy_speedup']:.2f}x**) | "
                f"{100 * a['fp32']:.2f} / {100 * a['qdq']:.2f} / {100 * a['ort-cpu']:.2f} % "
                f"({r['eval_images']} images) | {100 * r['ort_cpu_vs_qdq_top1_agreement']:.2f} % |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=300, help="Fine-tuning steps (32-px models).")
    ap.add_argument("--work", type=Path, default=Path("/tmp/zerop_deploy_speed"))
    ap.add_argument("--table", action="store_true", help="only print the table of the results")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    a = ap.parse_args()
    if a.table:
        rows = json.loads(OUT.read_text())
    else:
        a.work.mkdir(parents=True, exist_ok=True)
        old = {r["model"]: r for r in json.loads(OUT.read_text())} if OUT.exists() else {}
        old.update({m: measure(m, a.steps, a.work) for m in a.models})
        rows = [old[m] for m in MODELS if m in old]
        OUT.write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows)
    print(text)
    if a.write:
        bench = ROOT / "BENCHMARKS.md"
        head, rest = bench.read_text().split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        tmp = bench.with_suffix(".md.tmp")
        tmp.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
        tmp.replace(bench)


if __name__ == "__main__":
    main()
