"""Conversion coverage of the ONNX -> PyTorch front end over a corpus nobody tuned for.

The corpus: torchvision classification architectures with random weights (``weights=None``), each
exported three ways (TorchScript exporter opset 13; TorchScript exporter opset 17 with
BatchNormalization kept; torch's default exporter, ``dynamo=True``), plus the model-zoo graphs
shipped inside the ``onnx`` package (``onnx/backend/test/data/light/*.onnx``). Every entry is
read with :func:`zerop_deploy.load.read.read_model`, converted with
:func:`zerop_deploy.load.to_torch.convert_model` and compared with onnxruntime by
:func:`zerop_deploy.load.parity.check_parity`. One entry's failure never stops the run.

Usage::

    .venv/bin/python benchmarks/convert_coverage.py            # markdown table on stdout
    .venv/bin/python benchmarks/convert_coverage.py --write    # also update BENCHMARKS.md
    .venv/bin/python benchmarks/convert_coverage.py --json     # one JSON document on stdout

Exported models live in a temporary folder that is deleted at the end; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = [
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
    "regnet_x_400mf", "shufflenet_v2_x0_5", "squeezenet1_1", "densenet121", "mnasnet0_5",
    "googlenet", "convnext_tiny",
]  # fmt: skip
EXPORTS = ["ts13", "ts17-bn", "dynamo"]
EXTRA_EXPORTS = ["dynamo18", "dynamo21"]  # not in the default corpus: --exporters dynamo18 ...
EXPORT_LABELS = {
    "ts13": "TorchScript opset 13",
    "ts17-bn": "TorchScript opset 17, BN kept",
    "dynamo": "default (dynamo)",
    "dynamo18": "default (dynamo) with opset_version=18",
    "dynamo21": "default (dynamo), opset 21",
}
TOLERANCE = 1e-3
SECTION = "## Conversion coverage (ONNX -> PyTorch)"
PLACEHOLDER = "(pending: `benchmarks/convert_coverage.py`)"
ZOO_NOTE = (
    '; `onnx zoo` = `onnx/backend/test/data/light/*.onnx` from the onnx package (these "light"'
    " graphs build every weight with ConstantOfShape, so their outputs are nearly constant and"
    " their parity check is weak)"
)
BEGIN, END = "<!-- convert_coverage:begin -->", "<!-- convert_coverage:end -->"


@dataclass
class Result:
    """One corpus entry: how it was made and what conversion gave."""

    model: str
    source: str
    opset: int | None = None
    ok: bool = False
    max_abs_diff: float | None = None
    output_scale: float | None = None
    relative_diff: float | None = None
    error: str | None = None
    ok_prepared: bool = False
    prepared_relative_diff: float | None = None
    prepared_error: str | None = None
    export_seconds: float | None = None
    convert_seconds: float | None = None
    parity_seconds: float | None = None


def _one_line(e: BaseException, limit: int = 400) -> str:
    text = f"{type(e).__name__}: " + " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------------


def _build_torchvision(name: str):  # noqa: ANN202 - torch module
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs: dict = {"weights": None}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    return torchvision.models.get_model(name, **kwargs).eval()


def _export(name: str, how: str, size: int, folder: Path) -> Path:
    """Export ``name`` with exporter ``how`` into its own sub-folder; return the .onnx path."""
    import torch

    net = _build_torchvision(name)
    x = torch.rand(1, 3, size, size)
    out_dir = folder / f"{name}-{how}"
    out_dir.mkdir()
    path = out_dir / "model.onnx"
    # The exporters print progress on stdout; keep stdout for the table / JSON.
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        if how == "ts13":
            torch.onnx.export(net, (x,), str(path), opset_version=13, dynamo=False)
        elif how == "ts17-bn":
            torch.onnx.export(
                net, (x,), str(path), opset_version=17, dynamo=False,
                training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
            )  # fmt: skip
        elif how == "dynamo":
            torch.onnx.export(net, (x,), str(path), dynamo=True)
        elif how in ("dynamo18", "dynamo21"):
            torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=int(how[-2:]))
        else:
            raise ValueError(f"unknown exporter {how!r}")
    return path


def zoo_models() -> list[Path]:
    """The model-zoo graphs that ship inside the installed ``onnx`` package."""
    import onnx

    return sorted((Path(onnx.__file__).parent / "backend/test/data/light").glob("*.onnx"))


# --------------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------------


def _convert_and_compare(proto, path: Path, name: str) -> tuple[dict, str | None]:  # noqa: ANN001
    """Convert ``proto`` and compare it with onnxruntime; return numbers and the error (or None)."""
    from zerop_deploy.load.parity import check_parity
    from zerop_deploy.load.to_torch import convert_model

    t0 = time.perf_counter()
    module = convert_model(proto, source=name)
    t1 = time.perf_counter()
    parity = check_parity(proto, module, model_path=path)
    numbers = {
        "max_abs_diff": parity.max_abs_diff,
        "output_scale": parity.output_scale,
        "relative_diff": parity.relative_diff,
        "convert_seconds": t1 - t0,
        "parity_seconds": time.perf_counter() - t1,
    }
    if parity.relative_diff < TOLERANCE:
        return numbers, None
    return numbers, (
        f"parity: max |torch - onnxruntime| = {parity.max_abs_diff:.3g} "
        f"(output scale {parity.output_scale:.3g})"
    )


def _explain(e: BaseException, proto) -> str:  # noqa: ANN001
    """One line for ``e``; a missing-initializer KeyError also names the node computing it."""
    text = _one_line(e)
    cause = e.__cause__
    if isinstance(cause, KeyError) and cause.args:
        name = str(cause.args[0])
        producer = next((n for n in proto.graph.node if name in n.output), None)
        if producer is not None:
            text += (
                f" [tensor '{name}' is computed by {producer.op_type} node '{producer.name}',"
                " not an initializer; onnx2torch reads weights from initializers only]"
            )
    return text


def measure(path: Path, result: Result) -> Result:
    """Read, convert and compare one ONNX file, filling ``result``; never raises.

    The model is converted as :func:`zerop_deploy.load.to_torch.convert_model` gets it and, when
    :func:`zerop_deploy.load.convert.prepare.prepare_for_onnx2torch` changes the graph, once more
    after it.
    """
    from zerop_deploy.load.convert.prepare import prepare_for_onnx2torch
    from zerop_deploy.load.read import read_model
    from zerop_deploy.onnx_facts import opset_of

    try:
        proto = read_model(path)
        result.opset = opset_of(proto)
        prepared = prepare_for_onnx2torch(proto)
    except Exception as e:  # noqa: BLE001 - one entry's failure never stops the run
        result.error = _one_line(e)
        return result
    try:
        numbers, result.error = _convert_and_compare(proto, path, result.model)
        for key, value in numbers.items():
            setattr(result, key, value)
        result.ok = result.error is None
    except Exception as e:  # noqa: BLE001
        result.error = _explain(e, proto)
    if prepared is proto:
        result.ok_prepared = result.ok
        return result
    try:
        numbers, result.prepared_error = _convert_and_compare(prepared, path, result.model)
        result.ok_prepared = result.prepared_error is None
        result.prepared_relative_diff = numbers["relative_diff"]
    except Exception as e:  # noqa: BLE001
        result.ok_prepared, result.prepared_error = False, _explain(e, prepared)
    return result


def run(
    models: list[str], exports: list[str], size: int, zoo: bool, log: Callable[[str], None]
) -> list[Result]:
    """Build, export and measure every selected entry."""
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="convert_coverage_") as tmp:
        for name in models:
            for how in exports:
                r = Result(model=name, source=how)
                t0 = time.perf_counter()
                try:
                    path = _export(name, how, size, Path(tmp))
                except Exception as e:  # noqa: BLE001
                    r.error = "export failed: " + _one_line(e)
                    log(traceback.format_exc(limit=3))
                else:
                    r.export_seconds = time.perf_counter() - t0
                    measure(path, r)
                results.append(r)
                log(_summary(r))
    if zoo:
        for path in zoo_models():
            r = measure(path, Result(model=path.stem.removeprefix("light_"), source="onnx zoo"))
            results.append(r)
            log(_summary(r))
    return results


def _summary(r: Result) -> str:
    state = "ok" if r.ok else f"FAIL {r.error}"
    prep = "ok" if r.ok_prepared else f"FAIL {r.prepared_error or r.error}"
    return f"{r.model:20s} {r.source:8s} opset {r.opset} {state}; prepared: {prep}"


# --------------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Versions of the libraries the numbers depend on."""
    import onnx
    import onnx2torch
    import onnxruntime
    import torch
    import torchvision

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx2torch": getattr(onnx2torch, "__version__", "?"),
    }
    try:
        import onnxscript

        out["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    if out["onnx2torch"] == "?":
        from importlib.metadata import version

        out["onnx2torch"] = version("onnx2torch")
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def _secs(r: Result) -> str:
    parts = [r.convert_seconds, r.parity_seconds]
    return "-" if parts[0] is None else f"{sum(p or 0.0 for p in parts):.1f}"


def _strict(r: Result) -> str:
    """max abs diff over the output scale itself (random-weight nets can have tiny outputs)."""
    if r.max_abs_diff is None or not r.output_scale:
        return "-"
    return _fmt(r.max_abs_diff / r.output_scale)


def _prepared_cell(r: Result) -> str:
    if r.prepared_relative_diff is None and r.prepared_error is None:
        return "same" if r.ok or r.error else "-"
    if r.ok_prepared:
        return f"yes ({_fmt(r.prepared_relative_diff)})"
    return "**no**: " + (r.prepared_error or "")


def _row(r: Result) -> str:
    err = (r.error or "").replace("|", "\\|")
    cells = [
        r.model, r.source, str(r.opset or "-"), "yes" if r.ok else "**no**", _fmt(r.max_abs_diff),
        _fmt(r.output_scale), _fmt(r.relative_diff), _strict(r), _secs(r),
        _prepared_cell(r).replace("|", "\\|"), err,
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _coverage(results: list[Result], key: str) -> str:
    n_ok = sum(getattr(r, key) for r in results)
    return f"{n_ok}/{len(results)} = {100.0 * n_ok / max(1, len(results)):.1f}%"


def _still_failing(results: list[Result]) -> list[str]:
    bad = [r for r in results if not r.ok_prepared]
    if not bad:
        return ["Every entry converts within tolerance after the prepare pass."]
    lines = ["Not converted even after the prepare pass:", ""]
    for r in bad:
        lines.append(f"- {r.model} ({r.source}, opset {r.opset}): {r.prepared_error or r.error}")
    return lines


def markdown(results: list[Result], meta: dict) -> str:
    """The BENCHMARKS.md section body: how to reproduce, versions, the table and the percentage."""
    vers = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines = [
        BEGIN,
        f"Reproduce: `{meta['command']}` ({meta['wall_seconds'] / 60:.1f} min on"
        f" {meta['machine']}).",
        "",
        f"Versions: {vers}. torchvision models with random weights (`weights=None`, seed 0, eval"
        f" mode), input 1x3x{meta['size']}x{meta['size']}; parity on a uniform [0, 1) random input"
        " (batch 2"
        " where the batch dimension is dynamic). An entry is ok when `relative diff` ="
        f" max |torch - onnxruntime| / max(1, max |output|) < {TOLERANCE:g} (the check of"
        " `zerop_deploy.load`); `diff / scale` divides by the output scale itself, since"
        " random-weight nets can have tiny outputs. Exporters: "
        + "; ".join(f"`{k}` = {v}" for k, v in EXPORT_LABELS.items() if k in meta["exporters"])
        + " (the opset column says what each emitted)"
        + (ZOO_NOTE if "onnx zoo" in meta["exporters"] else "")
        + ". `prepared`: the same entry converted after"
        " `zerop_deploy.load.convert.prepare.prepare_for_onnx2torch` (weights computed by"
        " Identity/ConstantOfShape turned into initializers, inert `allowzero=1` dropped); both"
        " columns agree once `convert_model` applies that pass itself; `same` = the pass changes"
        " nothing.",
        "",
        f"**Coverage: {_coverage(results, 'ok')}** of entries convert within tolerance through"
        f" `convert_model`; **{_coverage(results, 'ok_prepared')} after the prepare pass**.",
        "",
        "| model | exporter | opset | ok | max abs diff | output scale | relative diff"
        " | diff / scale | convert+parity s | prepared | error |",
        "|---|---|---:|:-:|---:|---:|---:|---:|---:|---|---|",
        *[_row(r) for r in results],
        "",
        *_still_failing(results),
        END,
    ]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    """Put ``text`` into the coverage section of BENCHMARKS.md, touching nothing else."""
    doc = path.read_text()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc = head + text + tail
    elif PLACEHOLDER in doc:
        doc = doc.replace(PLACEHOLDER, text, 1)
    elif SECTION in doc:
        doc = doc.replace(SECTION, SECTION + "\n\n" + text, 1)
    else:
        doc = doc.rstrip("\n") + f"\n\n{SECTION}\n\n{text}\n"
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 whatever the coverage (it is a measurement, not a gate)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    ap.add_argument("--models", nargs="*", default=MODELS, help="torchvision models to export")
    ap.add_argument("--exporters", nargs="*", default=EXPORTS, choices=EXPORTS + EXTRA_EXPORTS)
    ap.add_argument("--no-zoo", action="store_true", help="skip the onnx package's model zoo")
    ap.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(2)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    results = run(args.models, args.exporters, args.size, not args.no_zoo, log)
    flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--json"]
    flags += [] if "--write" in flags else ["--write"]
    meta = {
        "command": " ".join([".venv/bin/python benchmarks/convert_coverage.py", *flags]),
        "size": args.size,
        "exporters": args.exporters + (["onnx zoo"] if not args.no_zoo else []),
        "wall_seconds": time.perf_counter() - t0,
        "machine": f"{torch.get_num_threads()} threads, {platform.machine()}",
        "versions": versions(),
    }
    text = markdown(results, meta)
    if args.write:
        write_section(text, ROOT / "BENCHMARKS.md")
    if args.json:
        doc = {
            **meta,
            "ok": sum(r.ok for r in results),
            "ok_prepared": sum(r.ok_prepared for r in results),
            "total": len(results),
            "results": [asdict(r) for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
