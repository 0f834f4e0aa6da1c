"""The commands that read and write files: inspect, demo, validate, retarget, bench.

Each is a thin wrapper over :mod:`zerop_deploy.api` (imported when the command runs, so that
``--help`` loads neither onnxruntime nor the pipeline).
"""

from __future__ import annotations

from pathlib import Path

import click

from zerop_deploy.cli.format import format_bench, format_summary, format_validation
from zerop_deploy.cli.options import (
    fail,
    json_option,
    make_preprocess,
    mean_option,
    preprocess_options,
    print_json,
    std_option,
)
from zerop_deploy.config import TARGETS
from zerop_deploy.errors import QualityGateError


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@json_option
def inspect_cmd(model: Path, as_json: bool) -> None:
    """Describe MODEL and check that it converts to PyTorch (exit 2 if it does not)."""
    from zerop_deploy import api

    doc = api.inspect(model)
    if as_json:
        print_json(doc)
    else:
        click.echo(format_summary(doc))
    if not doc["conversion"]["ok"]:
        fail(f"{doc['conversion']['error']}", 2)


@click.command("demo")
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("zerop-demo"),
    show_default=True,
    help="Folder for the files the demo writes.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option(
    "--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Fine-tuning steps."
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option
def demo_cmd(out_dir: Path, epochs: int, steps: int, quiet: bool, as_json: bool) -> None:
    """Train a small CNN on scikit-learn's digits, then quantize it to int4 without its data.

    Exports the CNN with BatchNorm kept and folded, quantizes the first with --bits 4 and the
    built-in proxy pool (public photos), and compares fp32 and int4 accuracy on held-out digits.
    """
    from zerop_deploy.demo import run_demo

    if not quiet:
        click.echo(f"training the demo CNN on scikit-learn's digits ({epochs} epochs)", err=True)
    doc = run_demo(out_dir, epochs=epochs, steps=steps, progress=not quiet)
    if as_json:
        print_json({k: v for k, v in doc.items() if k != "report"})
        return
    lines = [
        f"fp32 accuracy {100 * doc['fp32_accuracy']:.2f} %  ->  int4 (W4A4, first/last 8 bit) "
        f"{100 * doc['int4_accuracy']:.2f} %  on {doc['test_images']} held-out digits "
        f"(onnxruntime; top-1 agreement {100 * doc['agreement']:.2f} %)",
        "proxy data: the built-in pool of public photos (no digit was used to quantize)",
        *(f"  {name:<18} {path}" for name, path in doc["files"].items()),
    ]
    click.echo("\n".join(lines))


@click.command("validate")
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
@mean_option
@std_option
@preprocess_options
@click.option(
    "--min-agreement",
    type=float,
    default=None,
    help="Exit 1 when top-1 agreement is below this fraction.",
)
@json_option
def validate_cmd(
    qmodel: Path,
    reference: Path,
    data_path: str,
    mean: str | None,
    std: str | None,
    resize: int | None,
    crop: int | None,
    crop_ratio: float | None,
    interpolation: str | None,
    min_agreement: float | None,
    as_json: bool,
) -> None:
    """Check QMODEL against its fp32 REFERENCE in onnxruntime (agreement, logits, accuracy)."""
    from zerop_deploy import api

    preprocess = make_preprocess(resize, crop, crop_ratio, interpolation, mean, std)
    try:
        doc = api.validate(
            qmodel, reference, data=data_path, preprocess=preprocess, min_agreement=min_agreement
        )
    except QualityGateError as e:
        doc = getattr(e, "doc", None)
        if doc is not None:
            print_json(doc) if as_json else click.echo(format_validation(doc))
        raise
    print_json(doc) if as_json else click.echo(format_validation(doc))


@click.command("retarget")
@click.argument("qmodel", type=click.Path(path_type=Path))
@click.option(
    "--target",
    type=click.Choice(list(TARGETS)),
    required=True,
    help="ort-cpu: onnxruntime's integer CPU kernels; qdq: the exact student.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output .onnx (default: QMODEL's name with .<target>.onnx).")  # fmt: skip
@click.option(
    "--data",
    "data_path",
    default="builtin",
    show_default=True,
    help="Images that calibrate what the student kept in float and check the result.",
)
@mean_option
@std_option
@preprocess_options
@json_option
def retarget_cmd(
    qmodel: Path,
    target: str,
    output: Path | None,
    data_path: str,
    mean: str | None,
    std: str | None,
    resize: int | None,
    crop: int | None,
    crop_ratio: float | None,
    interpolation: str | None,
    as_json: bool,
) -> None:
    """Write QMODEL (a quantize output) for another deployment target, without fine-tuning."""
    from zerop_deploy import api

    doc = api.retarget(
        qmodel, target, output=output, data=data_path,
        preprocess=make_preprocess(resize, crop, crop_ratio, interpolation, mean, std),
    )  # fmt: skip
    if as_json:
        print_json(doc)
        return
    t, vs = doc["target"], doc["target"]["vs_qdq"]
    kernels = t["onnxruntime_kernels"]
    click.echo(
        f"wrote {doc['output']} (target {t['name']}): onnxruntime runs {kernels['integer_nodes']} "
        f"integer nodes, {len(kernels['float_compute_nodes'])} float compute nodes; top-1 "
        f"agreement with {doc['input']} {100 * vs['top1_agreement']:.2f} % on {vs['images']} "
        "images"
    )
    for change in t["changes"]:
        click.echo(f"  changed: {change}")


@click.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--qdq",
    type=click.Path(path_type=Path),
    default=None,
    help="The exported QDQ model of MODEL, timed end to end beside it.",
)
@click.option(
    "--deploy",
    type=click.Path(path_type=Path),
    default=None,
    help="The deployment file of MODEL (quantize/retarget --target ort-cpu), timed beside it.",
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
    multiple=True,
    default=(1, 64),
    show_default=True,
    help="Batch size for a dynamic batch dimension; repeat for more (layers use the first).",
)
@json_option
def bench_cmd(
    model: Path,
    qdq: Path | None,
    deploy: Path | None,
    threads: int | None,
    batch: tuple[int, ...],
    as_json: bool,
) -> None:
    """Time MODEL in onnxruntime (fp32, QDQ, deployment file, MatMulNBits) and the int4 kernels."""
    from zerop_deploy import api

    doc = api.bench(
        model, threads=threads, qdq_path=qdq, deploy_path=deploy, batch=batch[0], batches=batch
    )
    if as_json:
        print_json(doc)
    else:
        click.echo(format_bench(doc))
