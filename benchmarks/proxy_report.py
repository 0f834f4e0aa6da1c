"""The BENCHMARKS.md section of ``proxy_study.py``, built from ``results/proxy_study.json``.

``python benchmarks/proxy_report.py [--write]`` rebuilds it without rerunning anything.
"""

from __future__ import annotations

import argparse
import json

from _common import ROOT, write_section

from zerop_deploy.proxy.stats import spearman

UPPER = "cifar10_train_5k"


def _runs(doc: dict, net: str, steps: int) -> dict[str, dict]:
    """Candidate -> its run with all images (no --proxy-images)."""
    return {
        r["candidate"]: r
        for r in doc["runs"]
        if r["net"] == net and r["steps"] == steps and r["proxy_images_arg"] is None
    }


def _net_section(doc: dict, net: str, steps: int) -> list[str]:
    ranking = doc["rankings"][net]["ranking"]
    twin = doc["rankings"].get(f"{net}_folded", {})
    folded = {r["candidate"]: r for r in twin.get("ranking", [])}
    runs = _runs(doc, net, steps)
    lines = [
        f"**{net}** ({doc['rankings'][net]['samples']} images per candidate; W4A4 = `--bits 4`, "
        f"{steps} steps; fp32 {100 * next(iter(runs.values()))['fp32']:.2f} %)"
        if runs
        else f"**{net}**",
        "",
        "| rank | candidate | BNS distance | plain ZeroQ sum | output score (folded twin) "
        "| W4A4 top-1 (%) |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(ranking, 1):
        acc = runs.get(r["candidate"], {}).get("accuracy")
        f = folded.get(r["candidate"], {}).get("distance")
        lines.append(
            f"| {i} | {r['candidate']} | {r['distance']:.4f} | {r['plain_distance']:.1f} | "
            f"{'-' if f is None else f'{f:.4f}'} | {'-' if acc is None else f'{100 * acc:.2f}'} |"
        )
    if UPPER in runs:
        lines.append(
            f"| - | {UPPER} (real training data, upper bound) | - | - | - | "
            f"{100 * runs[UPPER]['accuracy']:.2f} |"
        )
    lines += ["", *_claims(ranking, folded, runs)]
    return lines


def _claims(ranking: list[dict], folded: dict, runs: dict) -> list[str]:
    scored = [r for r in ranking if r["candidate"] in runs]
    out = []
    if len(scored) >= 3:
        acc = [runs[r["candidate"]]["accuracy"] for r in scored]
        rho = spearman([r["distance"] for r in scored], acc)
        rho_plain = spearman([r["plain_distance"] for r in scored], acc)
        best = max(scored, key=lambda r: runs[r["candidate"]]["accuracy"])
        top = scored[0]
        gap = 100 * (runs[best["candidate"]]["accuracy"] - runs[top["candidate"]]["accuracy"])
        out.append(
            f"- Spearman rho(distance, accuracy) over {len(scored)} candidates: normalised "
            f"**{rho:+.3f}**, plain ZeroQ sum {rho_plain:+.3f} (goal <= -0.7)."
        )
        out.append(
            f"- Top-ranked `{top['candidate']}` is {gap:.2f} points below the best candidate "
            f"`{best['candidate']}` (goal: within 1 point)."
        )
        if len(folded) >= 3:
            both = [r for r in scored if r["candidate"] in folded]
            f_scores = [folded[r["candidate"]]["distance"] for r in both]
            rho_f = spearman(f_scores, [r["distance"] for r in both])
            rho_fa = spearman(f_scores, [runs[r["candidate"]]["accuracy"] for r in both])
            out.append(
                f"- Folded twin, output score (no BN statistics): rho with the unfolded BNS "
                f"ranking {rho_f:+.3f}; rho with accuracy {rho_fa:+.3f}."
            )
    return out


def _amount(doc: dict, net: str, steps: int) -> list[str]:
    best = doc["rankings"][net]["ranking"][0]["candidate"]
    rows = [
        r for r in doc["runs"] if r["net"] == net and r["candidate"] == best and r["steps"] == steps
    ]
    if len(rows) < 2:
        return []
    rows.sort(key=lambda r: r["images"])
    cells = ", ".join(f"{r['images']} images {100 * r['accuracy']:.2f} %" for r in rows)
    return [f"- How much proxy data: `{best}` with {cells}."]


def report(doc: dict, steps: int) -> str:
    parts = [
        "Reproduce: `python benchmarks/proxy_study.py --write` (about 40 min on the 2-core "
        "machine). Distances: `zerop-deploy select-proxy MODEL CANDIDATE... --samples 1024`; "
        "accuracy: `zerop-deploy quantize MODEL --bits 4 --proxy CANDIDATE --steps "
        f"{steps} --eval cifar10_test.npz`, onnxruntime on the exported file. Every command is "
        "in `benchmarks/results/proxy_study.json`.",
        "",
    ]
    for net in ("resnet20", "shufflenet"):
        if net in doc["rankings"]:
            parts += _net_section(doc, net, steps) + _amount(doc, net, steps) + [""]
            parts.append(f"![select-proxy {net}](benchmarks/results/select_proxy_{net}.png)")
            parts.append("")
    return "\n".join(parts).rstrip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    publish(json.loads((ROOT / "benchmarks" / "results" / "proxy_study.json").read_text()),
            args.steps, write=args.write)  # fmt: skip


def publish(doc: dict, steps: int, *, write: bool) -> None:
    """Print the section and, with ``write``, put it into BENCHMARKS.md."""
    text = report(doc, steps)
    print(text)
    if write:
        write_section("proxy", "Proxy-data selection", text)


if __name__ == "__main__":
    main()
