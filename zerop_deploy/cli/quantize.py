"""The ``quantize`` command (a thin wrapper over :func:`zerop_deploy.api.quantize`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from zerop_deploy.cli.options import (
    Variadic,
    device_option,
    fail,
    interrupted_code,
    make_preprocess,
    mean_option,
    preprocess_options,
    print_json,
    seed_option,
    std_option,
    target_option,
)
from zerop_deploy.errors import QualityGateError


@click.command("quantize")
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
@click.option(
    "--proxy",
    cls=Variadic,
    help="Proxy images: builtin (default: public photos shipped with scikit-image/-learn), "
    "auto (the best of --candidates), none, or folders / .npz / .npy files (pooled).",
)
@click.option(
    "--candidates",
    cls=Variadic,
    help="Candidate proxy sets for --proxy auto, ranked by BN-statistics distance.",
)
@click.option(
    "--synthetic",
    type=str,
    default="0",
    show_default=True,
    help="Synthetic images (BN-statistics matching) to make and mix into fine-tuning, or the "
    ".npz of a set made by `zerop-deploy synth`.",
)
@click.option(
    "--sd-ratio",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Fraction of each batch drawn from the synthetic images (1 with --proxy none).",
)
@click.option(
    "--proxy-images",
    type=click.IntRange(min=1),
    default=None,
    help="Use at most this many proxy images (default: all; big sets are streamed).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Images per candidate for --proxy auto.",
)
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
@mean_option
@std_option
@preprocess_options
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Report JSON (default: next to the output, .report.json).",
)
@device_option
@seed_option
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
@click.option(
    "--plot-layers",
    type=click.Path(path_type=Path),
    default=None,
    help="Bar chart PNG of every layer's output SQNR vs fp32 (which layers hurt most).",
)
@click.option(
    "--asymmetric-activations/--symmetric-activations",
    default=None,
    help="Signed activations get a calibrated zero point (asymmetric) or a range symmetric "
    "around 0.",
)
@click.option(
    "--equalize/--no-equalize",
    default=None,
    help="Cross-layer equalization of the activation between a Conv and the Conv it alone feeds.",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=None,
    help="After calibration, match every quantized layer's per-channel mean output to the fp32 "
    "model's by its bias (default off).",
)
@target_option
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
    proxy: tuple[str, ...],
    candidates: tuple[str, ...],
    synthetic: str,
    sd_ratio: float,
    proxy_images: int | None,
    samples: int,
    steps: int | None,
    time_budget: float | None,
    batch_size: int,
    lr: float,
    feature_weight: float | None,
    eval_path: str | None,
    mean: str | None,
    std: str | None,
    resize: int | None,
    crop: int | None,
    crop_ratio: float | None,
    interpolation: str | None,
    report: Path | None,
    device: str,
    seed: int,
    resume: bool,
    checkpoint_every: float,
    min_agreement: float | None,
    plot_layers: Path | None,
    asymmetric_activations: bool | None,
    equalize: bool | None,
    bias_correction: bool | None,
    target: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Quantize MODEL, fine-tune it by distillation on proxy images, export a QDQ ONNX model."""
    from zerop_deploy import api
    from zerop_deploy.config import DataConfig, QuantConfig, RunConfig, TrainConfig, load_overrides

    quant = QuantConfig(
        wbits=int(wbits or bits),
        abits=int(abits or bits),
        first_last_bits=int(first_last_bits),
        overrides=load_overrides(layer_config) if layer_config else {},
        asymmetric_activations=QuantConfig().asymmetric_activations
        if asymmetric_activations is None
        else asymmetric_activations,
        equalize=QuantConfig().equalize if equalize is None else equalize,
        bias_correction=QuantConfig().bias_correction
        if bias_correction is None
        else bias_correction,
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
        proxy=proxy or ("builtin",),
        candidates=candidates,
        samples=samples,
        proxy_images=proxy_images,
        synthetic=synthetic,
        sd_ratio=sd_ratio,
        eval=eval_path,
        preprocess=make_preprocess(resize, crop, crop_ratio, interpolation, mean, std),
    )
    run = RunConfig(
        output=output, report=report, plot_layers=plot_layers, resume=resume,
        min_agreement=min_agreement, progress=not quiet, target=target,
    )  # fmt: skip
    try:
        doc = api.quantize(model, quant, train, data, run)
    except KeyboardInterrupt as e:
        fail(
            "interrupted; the last checkpoint is kept: rerun the same command with --resume",
            interrupted_code(e),
        )
    except QualityGateError as e:
        _summary(getattr(e, "doc", None), as_json)
        raise
    _summary(doc, as_json)


def _summary(doc: dict[str, Any] | None, as_json: bool) -> None:
    if not doc:  # None, or {} on torchrun ranks other than 0
        return
    if as_json:
        print_json(doc)
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
    vs = doc.get("target", {}).get("vs_qdq")
    if vs:
        lines.append(
            f"target {doc['target']['name']}: top-1 agreement with the exact student file "
            f"{100 * vs['top1_agreement']:.2f} % on {vs['images']} images"
        )
    if "accuracy" in doc:
        a = doc["accuracy"]
        lines.append(
            f"accuracy fp32 {100 * a['fp32']:.2f} % -> quantized {100 * a['quantized']:.2f} %"
        )
    click.echo("\n".join(lines))
