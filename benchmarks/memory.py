"""Peak memory of ``quantize`` with a proxy folder of 10k and of 100k images.

Generates PNG images (random smooth colour fields, 48 x 48) into a temporary folder, runs
``zerop-deploy quantize MODEL --proxy FOLDER --steps 20`` on each size and records the child's
peak RSS (``wait4``). Goal: the two peaks less than 1.2x apart.

    python benchmarks/memory.py [--model ../shared/models/resnet20_cifar10.onnx] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, SHARED, run_command, write_section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "resnet20_cifar10.onnx")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        made = 0
        for n in sorted(args.sizes):
            _make_images_range(folder, made, n)
            made = n
            cmd = [
                sys.executable, "-m", "zerop_deploy", "quantize", str(args.model),
                "-o", str(Path(tmp) / "q.onnx"), "--proxy", str(folder), "--steps", "20",
                "--json", "--quiet",
            ]  # fmt: skip
            wall, peak, stdout = run_command(cmd)
            rep = json.loads(stdout)
            rows.append(
                {
                    "images": n,
                    "peak_rss_mib": round(peak),
                    "wall_s": round(wall, 1),
                    "streamed": rep["proxy"].get("streamed"),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    doc = {"rows": rows, "ratio": ratio, "model": args.model.name}
    out = ROOT / "benchmarks" / "results" / "memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    cells = "; ".join(
        f"{r['images']:,} images: peak RSS {r['peak_rss_mib']} MiB "
        f"({'streamed' if r['streamed'] else 'held in memory'}, {r['wall_s']:.0f} s)"
        for r in rows
    )
    text = (
        f"`python benchmarks/memory.py --write` ({args.model.name}, 48 x 48 PNG folders, "
        f"`quantize --steps 20`): {cells}. Ratio **{ratio:.2f}x** (goal < 1.2x)."
    )
    print(text)
    if args.write:
        write_section("memory", "Memory with big proxy folders", text)


def _make_images_range(folder: Path, start: int, stop: int) -> None:
    """Add images ``start..stop-1`` to ``folder`` (the 100k set extends the 10k one)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    base = np.linspace(0, 1, 48, dtype=np.float32)
    for i in range(start, stop):
        a, b, c = np.random.default_rng(i).random(3)
        ramp_x, ramp_y = np.meshgrid(base, base)
        img = np.stack([ramp_x * a + ramp_y * b, np.full((48, 48), c), ramp_x * b], -1) / 2
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


if __name__ == "__main__":
    main()
