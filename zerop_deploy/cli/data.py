"""The data commands: select-proxy and synth, thin wrappers over :mod:`zerop_deploy.api`."""

from __future__ import annotations

from pathlib import Path

import click

from zerop_deploy.cli.options import (
    device_option,
    fail,
    interrupted_code,
    json_option,
    make_preprocess,
    mean_option,
    preprocess_options,
    print_json,
    seed_option,
    std_option,
)
from zerop_deploy.config import SynthConfig


@click.command("select-proxy")
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
    from zerop_deploy import api

    doc = api.select_proxy(
        model,
        candidates,
        samples=samples,
        seed=seed,
        device=device,
        plot=plot,
        preprocess=make_preprocess(resize, crop, crop_ratio, interpolation, mean, std),
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


@click.command("synth")
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
    from zerop_deploy import api

    cfg = SynthConfig(images=images, iterations=iterations, batch_size=batch_size, seed=seed)
    try:
        doc = api.synthesize(
            model,
            output,
            cfg,
            preprocess=make_preprocess(None, None, None, None, mean, std),
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
