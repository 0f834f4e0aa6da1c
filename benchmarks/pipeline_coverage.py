"""Whole-pipeline coverage: torchvision architectures through quantize and stock onnxruntime.

For every architecture (random weights, ``weights=None``: coverage, not accuracy; the smallest
input side each accepts, tried from 32 up to 224) and every export of it:

* ``ts17-bn`` / ``ts17``: TorchScript exporter, opset 17, BatchNormalization kept / folded;
* ``ts20-bn`` / ``ts20``: the same at opset 20, the newest opset the TorchScript exporter writes,

the script runs the real command line at each width (W8A8 ``--bits 8``, W4A8 ``--wbits 4 --abits
8``, W4A4 ``--bits 4``, all-4-bit ``--bits 4 --first-last-bits 4``) with ``--steps 2``, then loads
the exported file in stock onnxruntime with its default session options (ORT_ENABLE_ALL) and runs
it on random inputs. The report of each run carries the agreement of onnxruntime with the student
(top-1 and max |logit difference| on the held-back proxy images).

Each row is ``ok`` (exit 0, the file loads and runs), ``refused`` (exit 2 with the one-line reason)
or ``failed`` (anything else: another exit code, a traceback, a time-out, a file onnxruntime will
not load). Results are appended to a JSON-lines file as they come (``--results``), so a stopped run
loses nothing and ``--resume`` skips what is done.

Usage::

    .venv/bin/python benchmarks/pipeline_coverage.py                 # the default corpus
    .venv/bin/python benchmarks/pipeline_coverage.py --all           # all 80 architectures
    .venv/bin/python benchmarks/pipeline_coverage.py --models resnet18,mobilenet_v2 --resume
    .venv/bin/python benchmarks/pipeline_coverage.py --table --write # table from results only

Nothing is downloaded; exported models live in a temporary folder deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the smallest member of every torchvision classification family, plus the common mobile nets
DEFAULT_MODELS = [
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
    "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_large",
    "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11",
    "vgg11_bn", "vit_b_32", "wide_resnet50_2",
]  # fmt: skip
EXPORTS = {
    "ts17-bn": (17, True),
    "ts17": (17, False),
    "ts20-bn": (20, True),
    "ts20": (20, False),
}
WIDTHS = {
    "W8A8": ["--bits", "8"],
    "W4A8": ["--wbits", "4", "--abits", "8"],
    "W4A4": ["--bits", "4"],
    "all-4-bit": ["--bits", "4", "--first-last-bits", "4"],
}
QUANTIZE_ARGS = ["--steps", "2", "--batch-size", "4", "--proxy-images", "80", "--seed", "0"]
SIDES = (32, 64, 96, 128, 160, 192, 224)
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_coverage.jsonl"
BEGIN, END = "<!-- pipeline_coverage:begin -->", "<!-- pipeline_coverage:end -->"
SECTION = "## Whole-pipeline coverage (torchvision architectures through quantize)"
TARGET = "qdq"  # --target of every quantize run (main sets it)


def _names(target: str) -> tuple[Path, str, str, str]:
    """Results file, BENCHMARKS.md markers and section of a target's table."""
    if target == "qdq":
        return RESULTS, BEGIN, END, SECTION
    tag = target.replace("-", "_")
    return (RESULTS.with_name(f"pipeline_coverage_{tag}.jsonl"),
            f"<!-- pipeline_coverage_{tag}:begin -->", f"<!-- pipeline_coverage_{tag}:end -->",
            f"## Whole-pipeline coverage, deployment target {target}")  # fmt: skip


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


def build(name: str):  # noqa: ANN201 - torch module
    """The torchvision architecture with random weights, in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs: dict = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    return torchvision.models.get_model(name, **kwargs).eval()


def export_smallest(net, how: str, path: Path) -> int:  # noqa: ANN001
    """Export ``net`` at the smallest square side of :data:`SIDES` it runs and exports at.

    Returns:
        The side. The last side's error is raised when none works.
    """
    import torch

    for side in SIDES:
        try:
            with torch.no_grad():
                net(torch.rand(1, 3, side, side))
            export(net, side, how, path)
            return side
        except Exception:  # too small to run or to export (e.g. adaptive pooling): next size
            if side == SIDES[-1]:
                raise
    raise AssertionError("unreachable")


def export(net, side: int, how: str, path: Path) -> None:  # noqa: ANN001
    """Export ``net`` the way ``how`` (a key of :data:`EXPORTS`) says, batch dimension dynamic."""
    import torch

    opset, keep_bn = EXPORTS[how]
    extra = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    # not under no_grad: torch's attention would take its fused fast path, which does not export
    with contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(
            net, (torch.rand(1, 3, side, side),), str(path), opset_version=opset, dynamo=False,
            input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "n"}},
            **(extra if keep_bn else {}),
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# one row
# --------------------------------------------------------------------------------------------------


def _stock_onnxruntime(path: Path, side: int) -> str | None:
    """Load ``path`` with default session options and run it on random inputs; None when fine."""
    import numpy as np
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((2, 3, side, side), dtype=np.float32)
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        return _one_line(f"stock onnxruntime: {e}")
    return None if np.isfinite(out).all() else "stock onnxruntime: non-finite outputs"


def quantize_row(model: Path, side: int, width: str, folder: Path, timeout: float) -> dict:
    """Run ``zerop-deploy quantize`` at ``width``; classify the outcome."""
    out = folder / f"{width}.onnx"
    cmd = [sys.executable, "-m", "zerop_deploy", "quantize", str(model), "-o", str(out),
           *WIDTHS[width], *QUANTIZE_ARGS, "--target", TARGET, "--json"]  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s",
                "seconds": timeout}  # fmt: skip
    row: dict = {"seconds": round(time.perf_counter() - t0, 1), "exit_code": proc.returncode}
    stderr = [line for line in proc.stderr.splitlines() if line.strip()]
    last = stderr[-1] if stderr else ""
    if proc.returncode == 2 and "Traceback" not in proc.stderr:
        return {**row, "status": "refused", "reason": _one_line(last)}
    if proc.returncode != 0:
        return {**row, "status": "failed", "reason": _one_line(last or f"exit {proc.returncode}")}
    doc = json.loads(proc.stdout)
    v = doc["validation"]
    row.update(
        ort_vs_student=v["ort_vs_student_top1_agreement"],
        max_abs_logit_diff=v["max_abs_logit_diff"],
        fp32_vs_quant=v["fp32_vs_quant_top1_agreement"],
        quantized_layers=sum(1 for layer in doc["layers"] if not layer.get("skipped")),
        float_nodes=len(doc.get("float_nodes", [])),
    )
    if TARGET != "qdq":
        kernels = doc["target"]["onnxruntime_kernels"]
        row.update(
            integer_nodes=kernels["integer_nodes"],
            float_compute_nodes=len(kernels["float_compute_nodes"]),
            vs_qdq=doc["target"]["vs_qdq"]["top1_agreement"],
        )
    problem = _stock_onnxruntime(out, side)
    for f in folder.glob(f"{width}*"):
        f.unlink()
    if problem:
        return {**row, "status": "failed", "reason": problem}
    return {**row, "status": "ok"}


def code_version() -> str:
    """The commit the rows were measured with (``+`` when the working tree had changes)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    dirty = git("status", "--porcelain", "--untracked-files=no", "zerop_deploy").strip()
    return git("rev-parse", "--short", "HEAD").strip() + ("+" if dirty else "")


def run_entry(name: str, how: str, widths: list[str], timeout: float) -> Iterator[dict]:
    """Export one architecture one way and quantize it at every width (a row per width, yielded
    as soon as it is measured)."""
    base = {"model": name, "export": how, "code": code_version(), "target": TARGET}
    with tempfile.TemporaryDirectory(prefix=f"cov-{name}-{how}-") as tmp:
        folder = Path(tmp)
        try:
            path = folder / f"{name}.onnx"
            side = export_smallest(build(name), how, path)
        except Exception as e:  # noqa: BLE001 - the exporter's failure is a row of its own
            for w in widths:
                yield {**base, "width": w, "status": "export failed",
                       "reason": _one_line(f"{type(e).__name__}: {e}")}  # fmt: skip
            return
        base["side"] = side
        for w in widths:
            yield {**base, "width": w, **quantize_row(path, side, w, folder, timeout)}


# --------------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------------


def load_results(path: Path) -> list[dict]:
    """Rows of the JSON-lines results file (the last row of each model x export x width wins)."""
    if not path.exists():
        return []
    rows: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[(r["model"], r["export"], r["width"])] = r
    return list(rows.values())


def _cell(r: dict) -> str:
    if r["status"] == "ok" and "integer_nodes" in r:
        return f"ok ({r['ort_vs_student']:.2f}; {r['float_compute_nodes']} float)"
    if r["status"] == "ok":
        return f"ok ({r['ort_vs_student']:.2f})"
    return r["status"]


def table(rows: list[dict]) -> str:
    """Markdown: a summary line, one row per architecture x export, the reasons listed below."""
    widths = list(WIDTHS)
    counts = Counter(r["status"] for r in rows)
    n = max(len(rows), 1)
    lines = [
        f"{len(rows)} runs: "
        + ", ".join(
            f"**{counts[s]} {s}** ({100 * counts[s] / n:.0f} %)"
            for s in ("ok", "refused", "failed", "export failed")
            if counts[s]
        ),  # fmt: skip
        "",
        "| architecture | export | input | " + " | ".join(widths) + " | seconds (4 runs) |",
        "|---|---|---|" + "---|" * len(widths) + "---:|",
    ]
    by_entry: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_entry.setdefault((r["model"], r["export"]), {})[r["width"]] = r
    reasons: Counter = Counter()
    order = list(EXPORTS)
    for (model, how), cells in sorted(
        by_entry.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))
    ):
        side = next((c.get("side") for c in cells.values() if c.get("side")), None)
        shown = [_cell(cells[w]) if w in cells else "-" for w in widths]
        secs = sum(c.get("seconds", 0) for c in cells.values())
        row = f"| {model} | {how} | {side or '-'} | " + " | ".join(shown)
        lines.append(row + f" | {secs:.0f} |")
        for c in cells.values():
            if c["status"] != "ok":
                reasons[(c["status"], c.get("reason", ""))] += 1
    if reasons:
        lines += ["", "Reasons (how many runs):", ""]
        lines += [f"- {status}, {k}x: {reason}" for (status, reason), k in reasons.most_common()]
    return "\n".join(lines)


def write_benchmarks(text: str, command: str) -> None:
    """Replace the generated block of BENCHMARKS.md (or append the section)."""
    _, begin, end, section = _names(TARGET)
    bench = ROOT / "BENCHMARKS.md"
    doc = bench.read_text()
    cells = "onnxruntime-vs-student top-1 agreement on the held-back proxy images"
    if TARGET != "qdq":
        cells += "; compute nodes onnxruntime still runs in float"
    block = (
        f"{begin}\nCommand: `{command}` on {platform.machine()}, {os.cpu_count()} cores; "
        f"cells: status ({cells}).\n\n{text}\n{end}"
    )
    if begin in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    tmp = bench.with_suffix(".md.tmp")
    tmp.write_text(doc)
    tmp.replace(bench)


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main() -> None:
    """Run the corpus (or only print the table) and optionally write BENCHMARKS.md."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated torchvision names (default: the corpus)")
    p.add_argument("--all", action="store_true", help="every torchvision classification model")
    p.add_argument("--exports", default=",".join(EXPORTS), help="comma-separated export kinds")
    p.add_argument("--widths", default=",".join(WIDTHS), help="comma-separated widths")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per quantize run")
    p.add_argument("--results", type=Path, default=None, help="JSON-lines results file")
    p.add_argument(
        "--target",
        default="qdq",
        choices=("qdq", "ort-cpu"),
        help="quantize --target of every run (its own results file and table)",
    )
    p.add_argument("--resume", action="store_true", help="skip rows already in --results")
    p.add_argument("--table", action="store_true", help="only print the table from --results")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args()
    global TARGET
    TARGET = args.target
    args.results = args.results or _names(TARGET)[0]
    if args.all:
        import torchvision

        models = torchvision.models.list_models(module=torchvision.models)
    else:
        models = args.models.split(",") if args.models else DEFAULT_MODELS
    exports, widths = args.exports.split(","), args.widths.split(",")
    if not args.table:
        done = {(r["model"], r["export"], r["width"]) for r in load_results(args.results)}
        if not args.resume:
            args.results.unlink(missing_ok=True)
            done = set()
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for name in models:
            for how in exports:
                todo = [w for w in widths if (name, how, w) not in done]
                if not todo:
                    continue
                for row in run_entry(name, how, todo, args.timeout):
                    with args.results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{name} {how} {row['width']}: {row['status']} "
                          f"{row.get('reason', '')}", file=sys.stderr, flush=True)  # fmt: skip
    text = table([r for r in load_results(args.results) if r["model"] in models])
    print(text)
    if args.write:
        command = "python benchmarks/pipeline_coverage.py" + (" --all" if args.all else "")
        command += "" if TARGET == "qdq" else f" --target {TARGET}"
        if args.exports != ",".join(EXPORTS):
            command += f" --exports {args.exports}"
        if args.widths != ",".join(WIDTHS):
            command += f" --widths {args.widths}"
        write_benchmarks(text, command)


if __name__ == "__main__":
    main()
