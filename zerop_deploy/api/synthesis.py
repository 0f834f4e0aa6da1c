"""``synthesize``: images optimised to reproduce the model's BN statistics, as a ``.npz``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zerop_deploy.api.common import resolve_device
from zerop_deploy.config import SynthConfig
from zerop_deploy.data.preprocess import Preprocess
from zerop_deploy.io import atomic_write_bytes, check_output_path, output_lock
from zerop_deploy.load.to_torch import image_input_chw, load_model
from zerop_deploy.plots import contact_sheet
from zerop_deploy.quant.distributed import leave_process_group
from zerop_deploy.quant.memory import keep_freed_memory
from zerop_deploy.synth.for_quantize import make, npz_bytes, summary
from zerop_deploy.synth.synthesize import cache_files


def synthesize(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    cfg: SynthConfig | None = None,
    *,
    preprocess: Preprocess | None = None,
    device: str = "auto",
    preview: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Make synthetic images that reproduce the model's BN statistics and save them as ``.npz``.

    The file holds ``images`` (uint8 N x H x W x C) and ``labels`` (the class each image was
    optimised towards), so it can be inspected, cached and used as ``--proxy OUT.npz``.

    Args:
        model: The fp32 ``.onnx`` file.
        output: The ``.npz`` to write (atomically).
        cfg: Synthesis settings.
        preprocess: Turns images into model inputs (``--mean``/``--std``).
        device: "auto", "cpu" or "cuda".
        preview: Write a contact sheet PNG of the first 128 images here.
        resume: Keep the batches a killed run finished (``OUT.npz.partial``).
        progress: A progress line per batch on stderr (only on a terminal).

    Returns:
        ``{"model", "output", "method", "images", "iterations", "seconds", "images_per_second",
        "bns_distance"}``; ``method`` is "output" when the model has no BN statistics.
    """
    cfg = cfg or SynthConfig()
    src = Path(model)
    out = check_output_path(output, [src])
    with output_lock(out):  # a second run on this output is refused, never interleaved with it
        return _synthesize_locked(
            src, out, cfg, preprocess or Preprocess(), device, preview, resume, progress
        )


def _synthesize_locked(
    src: Path,
    out: Path,
    cfg: SynthConfig,
    preprocess: Preprocess,
    device: str,
    preview: str | os.PathLike[str] | None,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """The rest of :func:`synthesize`, run while it holds the lock on its output."""
    if preview is not None:
        preview = check_output_path(preview, [src, out])
    dev = resolve_device(device)
    keep_freed_memory()
    loaded = load_model(src)
    chw = image_input_chw(loaded.proto, str(src))
    teacher = loaded.module.to(dev).eval()
    cache_path = out.with_name(out.name + ".partial")
    images, seconds, resumed = make(
        teacher, loaded.proto, chw, cfg, dev, preprocess=preprocess, cache_path=cache_path,
        resume=resume, progress=progress,
    )  # fmt: skip
    if leave_process_group(dev)[0] != 0:  # torchrun: rank 0 writes the file
        return {}
    doc = summary(teacher, loaded.proto, images, cfg, seconds, preprocess, resumed)
    atomic_write_bytes(out, npz_bytes(images, teacher, cfg, preprocess))
    if preview is not None:
        atomic_write_bytes(preview, contact_sheet(images[:128].numpy()))
    for f in cache_files(cache_path):
        f.unlink(missing_ok=True)
    return {"model": str(src), "output": str(out), **doc}
