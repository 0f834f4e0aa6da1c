"""The ``zerop-deploy`` command line: thin click wrappers over the package's functions.

Exit codes (DESIGN.md): 0 success; 1 a quality gate failed; 2 bad input or usage, reported as one
line on stderr without a traceback; 70 an unexpected exception (a bug), also one line. ``--json``
prints one JSON document on stdout and nothing else there.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from zerop_deploy import __version__
from zerop_deploy._cli_util import (
    PROG,
    device_option,
    fail,
    floats,
    interrupted_code,
    json_option,
    make_preprocess,
    mean_option,
    preprocess_options,
    print_json,
    seed_option,
    sigterm_interrupts,
    std_option,
)
from zerop_deploy.cli_quantize import quantize_cmd
from zerop_deploy.config import SynthConfig
from zerop_deploy.deploy import TARGETS
from zerop_deploy.errors import QualityGateError, ZeropError

INTERNAL_ERROR = 70
"""Exit code of an unexpected exception (a bug; sysexits' EX_SOFTWARE), so that 1 stays the
quality gates' and 2 bad input's."""


class _Cli(click.Group):
    """A click group that turns every expected error into one line on stderr and an exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - see class docstring
        kwargs["standalone_mode"] = False
        try:
            with sigterm_interrupts():
                rv = super().main(*args, **kwargs)
        except ZeropError as e:
            fail(str(e), e.exit_code)
        except click.UsageError as e:
            where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
            fail(f"{where}{e.format_message()} (see --help)", 2)
        except click.ClickException as e:  # exit 1 is the quality gates' alone
            fail(e.format_message(), 2 if e.exit_code == 1 else e.exit_code)
        except click.exceptions.Abort:
            fail("interrupted", 130)
        except KeyboardInterrupt as e:
            fail("interrupted", interrupted_code(e))
        except Exception as e:  # noqa: BLE001 - a bug: one line and its own exit code, never 1
            if os.environ.get("ZEROP_DEPLOY_DEBUG"):
                traceback.print_exc()
            fail(
                f"internal error ({type(e).__name__}: {e}); this is a bug in {PROG}, please "
                "report it with the command line (ZEROP_DEPLOY_DEBUG=1 prints the traceback)",
                INTERNAL_ERROR,
            )
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def main() -> None:
    """Turn a trained ONNX CNN into a low-bit QDQ ONNX model without its training data."""


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@json_option
def inspect_cmd(model: Path, as_json: bool) -> None:
    """Describe MODEL and check that it converts to PyTorch (exit 2 if it does not)."""
    from zerop_deploy.summary import format_summary, inspect_model

    doc = inspect_model(model)
    if as_json:
        print_json(doc)
    else:
        click.echo(format_summary(doc))
    if not doc["conversion"]["ok"]:
        fail(f"{doc['conversion']['error']}", 2)


@main.command("demo")
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


main.add_command(quantize_cmd)


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
    from zerop_deploy.data import load_pool, normalize, open_source
    from zerop_deploy.load import image_input_chw, read_model
    from zerop_deploy.validate import format_validation, validate

    chw = image_input_chw(read_model(reference), str(reference))
    preprocess = make_preprocess(resize, crop, crop_ratio, interpolation)
    pool = load_pool(open_source(data_path, preprocess=preprocess), chw)
    x = normalize(pool.images, floats(mean, "--mean"), floats(std, "--std"))
    try:
        doc = validate(
            qmodel, reference, images=x.numpy(), labels=pool.labels, min_agreement=min_agreement
        )
    except QualityGateError as e:
        doc = getattr(e, "doc", None)
        if doc is not None:
            print_json(doc) if as_json else click.echo(format_validation(doc))
        raise
    print_json(doc) if as_json else click.echo(format_validation(doc))


@main.command("select-proxy")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("candidates", nargs=-1, required=True)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Images drawn from each candidate.",
)
@seed_option
@mean_option
@std_option
@preprocess_options
@device_option
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Bar chart PNG.")
@json_option
def select_proxy_cmd(
    model: Path,
    candidates: tuple[str, ...],
    samples: int,
    seed: int,
    mean: str | None,
    std: str | None,
    resize: int | None,
    crop: int | None,
    crop_ratio: float | None,
    interpolation: str | None,
    device: str,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Rank CANDIDATE image sets (folders, .npz, .npy, builtin) as proxy data for MODEL.

    The closer the BatchNorm statistics a candidate produces come to those MODEL stored in
    training, the better it stands in for the training data (best first).
    """
    from zerop_deploy.api import select_proxy

    doc = select_proxy(
        model,
        candidates,
        samples=samples,
        seed=seed,
        mean=floats(mean, "--mean"),
        std=floats(std, "--std"),
        device=device,
        plot=plot,
        preprocess=make_preprocess(resize, crop, crop_ratio, interpolation),
    )
    if as_json:
        print_json(doc)
        return
    unit = "BNS distance" if doc["method"] == "bns" else "output score"
    width = max(len(r["candidate"]) for r in doc["ranking"])
    lines = [f"{'rank':>4}  {'candidate':<{width}}  {unit:>12}  images"]
    for i, r in enumerate(doc["ranking"], 1):
        lines.append(f"{i:>4}  {r['candidate']:<{width}}  {r['distance']:>12.4f}  {r['images']}")
    if "note" in doc:
        lines.append(f"note: {doc['note']}")
    if plot is not None:
        lines.append(f"wrote {plot}")
    click.echo("\n".join(lines))


@main.command("synth")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-n", "images", type=click.IntRange(min=1), required=True, help="How many images.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The .npz.")
@click.option(
    "--iterations", type=click.IntRange(min=1), default=SynthConfig().iterations, show_default=True
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=SynthConfig().batch_size, show_default=True
)
@seed_option
@mean_option
@std_option
@device_option
@click.option("--preview", type=click.Path(path_type=Path), default=None, help="Contact sheet PNG.")
@click.option("--resume", is_flag=True, help="Keep the batches a killed run finished.")
@json_option
def synth_cmd(
    model: Path,
    images: int,
    output: Path,
    iterations: int,
    batch_size: int,
    seed: int,
    mean: str | None,
    std: str | None,
    device: str,
    preview: Path | None,
    resume: bool,
    as_json: bool,
) -> None:
    """Synthesise images whose BatchNorm statistics in MODEL match the stored ones (.npz)."""
    from zerop_deploy.api import synthesize

    cfg = SynthConfig(images=images, iterations=iterations, batch_size=batch_size, seed=seed)
    try:
        doc = synthesize(
            model,
            output,
            cfg,
            mean=floats(mean, "--mean"),
            std=floats(std, "--std"),
            device=device,
            preview=preview,
            resume=resume,
        )
    except KeyboardInterrupt as e:
        fail(
            "interrupted; finished batches are kept: rerun the same command with --resume",
            interrupted_code(e),
        )
    if not doc:  # torchrun: ranks other than 0
        return
    if as_json:
        print_json(doc)
        return
    dist = doc["bns_distance"]
    click.echo(
        f"wrote {doc['output']}: {doc['images']} images, {doc['iterations']} iterations, "
        f"{doc['seconds']:.0f} s ({doc['images_per_second']} img/s); "
        + (
            f"BNS distance {dist:.4f}"
            if dist is not None
            else "no BN statistics: made from the model's outputs and image priors only"
        )
        + (f"; preview {preview}" if preview else "")
    )


@main.command("retarget")
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
    from zerop_deploy.api import retarget

    doc = retarget(
        qmodel, target, output=output, data=data_path, mean=floats(mean, "--mean"),
        std=floats(std, "--std"),
        preprocess=make_preprocess(resize, crop, crop_ratio, interpolation),
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


@main.command("bench")
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
    from zerop_deploy.bench import bench, format_bench

    doc = bench(
        model, threads=threads, qdq_path=qdq, deploy_path=deploy, batch=batch[0], batches=batch
    )
    if as_json:
        print_json(doc)
    else:
        click.echo(format_bench(doc))


if __name__ == "__main__":  # pragma: no cover
    main()
