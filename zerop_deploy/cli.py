"""The ``zerop-deploy`` command line: thin click wrappers over the package's functions.

Exit codes (DESIGN.md): 0 success; 1 a quality gate failed; 2 bad input or usage, reported as one
line
on stderr without a traceback. ``--json`` prints one JSON document on stdout and nothing else there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from zerop_deploy import __version__
from zerop_deploy.errors import QualityGateError, ZeropError

PROG = "zerop-deploy"


def _fail(message: str, code: int) -> None:
    click.echo(f"{PROG}: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


class _Cli(click.Group):
    """A click group that turns every expected error into one line on stderr and an exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - see class docstring
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except ZeropError as e:
            _fail(str(e), e.exit_code)
        except click.UsageError as e:
            where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
            _fail(f"{where}{e.format_message()} (see --help)", 2)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.exceptions.Abort:
            _fail("interrupted", 130)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def main() -> None:
    """Turn a trained ONNX CNN into a low-bit QDQ ONNX model without its training data."""


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def inspect_cmd(model: Path, as_json: bool) -> None:
    """Describe MODEL and check that it converts to PyTorch (exit 2 if it does not)."""
    from zerop_deploy.summary import format_summary, inspect_model

    doc = inspect_model(model)
    if as_json:
        _print_json(doc)
    else:
        click.echo(format_summary(doc))
    if not doc["conversion"]["ok"]:
        _fail(f"{doc['conversion']['error']}", 2)


@main.command("demo")
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("zerop-demo"),
    show_default=True,
    help="Folder for the files the demo writes.",
)
def demo_cmd(out_dir: Path) -> None:
    """Build the embedded demo CNN, export it with and without BatchNorm, and inspect both."""
    from zerop_deploy.demo import write_demo_models
    from zerop_deploy.summary import format_summary, inspect_model

    paths = write_demo_models(out_dir)
    for p in paths:
        doc = inspect_model(p)
        click.echo(format_summary(doc))
        click.echo("")
        if not doc["conversion"]["ok"]:
            _fail(f"{p}: {doc['conversion']['error']}", 2)
    click.echo("wrote: " + ", ".join(str(p) for p in paths))


def _floats(value: str | None, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers, got '{value}'", param_hint=option
        ) from None


@main.command("quantize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Output .onnx (default: MODEL with .int4.onnx / .int8.onnx / .w4a8.onnx).",
)
@click.option(
    "--bits",
    type=click.Choice(["4", "8"]),
    default="4",
    show_default=True,
    help="Weight and activation bits (first/last layer: --first-last-bits).",
)
@click.option(
    "--wbits", type=click.Choice(["4", "8"]), default=None, help="Weight bits (overrides --bits)."
)
@click.option(
    "--abits",
    type=click.Choice(["4", "8"]),
    default=None,
    help="Activation bits (overrides --bits).",
)
@click.option(
    "--first-last-bits",
    type=click.Choice(["4", "8"]),
    default="8",
    show_default=True,
    help="Bits of the first and last quantized layer.",
)
@click.option(
    "--layer-config",
    type=click.Path(path_type=Path),
    default=None,
    help='JSON per-layer overrides: {"layers": {NODE: {"wbits": 8, "abits": 8, "skip": false}}}.',
)
@click.option("--proxy", type=str, default=None, help="Proxy images: a folder, a .npz or a .npy.")
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Fine-tuning steps (default 500; with --time-budget: until the budget ends).",
)
@click.option("--time-budget", type=float, default=None, help="Fine-tuning budget in minutes.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per step.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Learning rate.")
@click.option(
    "--feature-weight",
    type=float,
    default=None,
    help="Weight of layer-output matching added to the logit distillation (default: 1; 0 = off).",
)
@click.option(
    "--eval",
    "eval_path",
    type=str,
    default=None,
    help="Labelled images: report fp32 and quantized accuracy (onnxruntime).",
)
@click.option(
    "--mean", type=str, default=None, help="Per-channel mean to subtract, e.g. 0.485,0.456,0.406."
)
@click.option("--std", type=str, default=None, help="Per-channel std to divide by.")
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Report JSON (default: next to the output, .report.json).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of a killed run.")
@click.option(
    "--checkpoint-every",
    type=float,
    default=2.0,
    show_default=True,
    help="Minutes between checkpoints (0: after every step).",
)
@click.option(
    "--min-agreement",
    type=float,
    default=None,
    help="Exit 1 when top-1 agreement with the fp32 model is below this fraction.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the report on stdout.")
def quantize_cmd(
    model: Path,
    output: Path | None,
    bits: str,
    wbits: str | None,
    abits: str | None,
    first_last_bits: str,
    layer_config: Path | None,
    proxy: str | None,
    steps: int | None,
    time_budget: float | None,
    batch_size: int,
    lr: float,
    feature_weight: float | None,
    eval_path: str | None,
    mean: str | None,
    std: str | None,
    report: Path | None,
    device: str,
    seed: int,
    resume: bool,
    checkpoint_every: float,
    min_agreement: float | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Quantize MODEL, fine-tune it by distillation on proxy images, export a QDQ ONNX model."""
    from zerop_deploy.api import quantize
    from zerop_deploy.config import DataConfig, QuantConfig, TrainConfig, load_overrides

    quant = QuantConfig(
        wbits=int(wbits or bits),
        abits=int(abits or bits),
        first_last_bits=int(first_last_bits),
        overrides=load_overrides(layer_config) if layer_config else {},
    )
    default_steps = TrainConfig().steps if time_budget is None else 10_000_000
    train = TrainConfig(
        steps=default_steps if steps is None else steps,
        time_budget_s=None if time_budget is None else time_budget * 60,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        checkpoint_every_s=checkpoint_every * 60,
        feature_weight=TrainConfig().feature_weight if feature_weight is None else feature_weight,
    )
    data = DataConfig(
        proxy=proxy, eval=eval_path, mean=_floats(mean, "--mean"), std=_floats(std, "--std")
    )
    try:
        doc = quantize(
            model,
            output=output,
            quant=quant,
            train=train,
            data=data,
            report=report,
            resume=resume,
            min_agreement=min_agreement,
            progress=not quiet,
        )
    except KeyboardInterrupt:
        _fail("interrupted; the last checkpoint is kept: rerun the same command with --resume", 130)
    except QualityGateError as e:
        _summary(getattr(e, "doc", None), as_json)
        raise
    _summary(doc, as_json)


def _summary(doc: dict[str, Any] | None, as_json: bool) -> None:
    if not doc:  # None, or {} on torchrun ranks other than 0
        return
    if as_json:
        _print_json(doc)
        return
    v, t = doc["validation"], doc["training"]
    lines = [
        f"wrote {doc['output']}",
        f"bits W{doc['bits']['weights']}A{doc['bits']['activations']} "
        f"(first/last {doc['bits']['first_last']}), {len(doc['layers'])} layers, "
        f"{t['steps']} steps in {t['wall_seconds']:.0f} s ({t['images_per_second']:.0f} img/s)",
        f"onnxruntime vs fp32 top-1 agreement {100 * v['fp32_vs_quant_top1_agreement']:.2f} % "
        f"on {v['images']} {v['source']} images; "
        f"vs student {100 * v['ort_vs_student_top1_agreement']:.2f} %",
    ]
    if "accuracy" in doc:
        a = doc["accuracy"]
        lines.append(
            f"accuracy fp32 {100 * a['fp32']:.2f} % -> quantized {100 * a['quantized']:.2f} %"
        )
    click.echo("\n".join(lines))


@main.command("validate")
@click.argument("qmodel", type=click.Path(path_type=Path))
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    required=True,
    help="The fp32 model QMODEL was made from.",
)
@click.option(
    "--data",
    "data_path",
    type=str,
    required=True,
    help="Images to compare on (folder, .npz, .npy); labels give accuracy.",
)
@click.option("--mean", type=str, default=None, help="Per-channel mean to subtract.")
@click.option("--std", type=str, default=None, help="Per-channel std to divide by.")
@click.option(
    "--min-agreement",
    type=float,
    default=None,
    help="Exit 1 when top-1 agreement is below this fraction.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def validate_cmd(
    qmodel: Path,
    reference: Path,
    data_path: str,
    mean: str | None,
    std: str | None,
    min_agreement: float | None,
    as_json: bool,
) -> None:
    """Check QMODEL against its fp32 REFERENCE in onnxruntime (agreement, logits, accuracy)."""
    from zerop_deploy.api import _input_chw
    from zerop_deploy.data import load_images, to_model_input
    from zerop_deploy.load import read_model
    from zerop_deploy.validate import format_validation, validate

    chw = _input_chw(read_model(reference), str(reference))
    images = load_images(data_path)
    x = to_model_input(images.images, chw, mean=_floats(mean, "--mean"), std=_floats(std, "--std"))
    try:
        doc = validate(
            qmodel, reference, images=x.numpy(), labels=images.labels, min_agreement=min_agreement
        )
    except QualityGateError as e:
        doc = getattr(e, "doc", None)
        if doc is not None:
            _print_json(doc) if as_json else click.echo(format_validation(doc))
        raise
    _print_json(doc) if as_json else click.echo(format_validation(doc))


@main.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--qdq",
    type=click.Path(path_type=Path),
    default=None,
    help="The exported QDQ model of MODEL, timed end to end beside it.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads for onnxruntime and the int4 kernels (default: all cores).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batch size for a dynamic batch dimension.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def bench_cmd(
    model: Path, qdq: Path | None, threads: int | None, batch: int, as_json: bool
) -> None:
    """Time MODEL in onnxruntime (fp32, QDQ, MatMulNBits) and on the native int4 kernels."""
    from zerop_deploy.bench import bench, format_bench

    doc = bench(model, threads=threads, qdq_path=qdq, batch=batch)
    if as_json:
        _print_json(doc)
    else:
        click.echo(format_bench(doc))


if __name__ == "__main__":  # pragma: no cover
    main()
