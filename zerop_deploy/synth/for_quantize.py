"""Synthetic images inside the pipeline: their report section, their .npz, and quantize's mix."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from zerop_deploy.config import DataConfig, SynthConfig
from zerop_deploy.data.batches import images_per_pass
from zerop_deploy.data.preprocess import Preprocess
from zerop_deploy.data.sources import load_pool
from zerop_deploy.progress import bar, to
from zerop_deploy.proxy.stats import first_output, module_device, score_images, scoring_method
from zerop_deploy.synth.synthesize import SynthCache, synthesize_sharded, target_labels


def summary(teacher, proto, images, cfg, seconds, preprocess: Preprocess, resumed) -> dict:
    """Method, speed and the BNS distance of finished synthetic images (for reports)."""
    method = scoring_method(proto)
    new = len(images) - resumed * cfg.batch_size
    step = images_per_pass(images.shape, 256)
    batches = (preprocess.to_input(images[i : i + step]) for i in range(0, len(images), step))
    return {
        "method": method,
        "images": len(images),
        "iterations": cfg.iterations,
        "seconds": round(seconds, 1),
        "images_per_second": round(new / seconds, 2) if seconds > 0 and new > 0 else None,
        "resumed_batches": resumed,
        "bns_distance": score_images(teacher, proto, batches, "bns")["distance"]
        if method == "bns"
        else None,
        "config": cfg.to_dict(),
    }


def npz_bytes(images: torch.Tensor, teacher, cfg: SynthConfig, preprocess: Preprocess) -> bytes:
    """The ``.npz`` that ``synth`` writes: ``images`` (uint8 NHWC) and their target ``labels``."""
    with torch.no_grad():
        x = preprocess.to_input(images[:1]).to(module_device(teacher))
        k = first_output(teacher(x)).reshape(1, -1).shape[1]
    buf = io.BytesIO()
    np.savez(buf, images=images.permute(0, 2, 3, 1).numpy(), labels=target_labels(cfg, k))
    return buf.getvalue()


def for_quantize(
    teacher: nn.Module,
    proto: onnx.ModelProto,
    chw: tuple[int, int, int],
    data: DataConfig,
    seed: int,
    sources,
    *,
    device: torch.device,
    cache_path: Path,
    resume: bool,
    say: Callable[[str], None],
    progress: bool = True,
) -> tuple[torch.Tensor, dict]:
    """The ``data.synthetic`` images quantize mixes in, and the report's "synthetic" section.

    ``sources`` (:class:`zerop_deploy.proxy.select.Sources`) opens a ``--synthetic SYNTH.npz``.
    Finished batches are kept in ``cache_path`` so that ``--resume`` after a kill does not redo
    them; the caller removes it when the run succeeds.
    """
    ratio = 1.0 if data.proxy == ("none",) else data.sd_ratio
    if data.synthetic == 0:
        return torch.empty(0, *chw, dtype=torch.uint8), {"images": 0, "sd_ratio": 0.0}
    if isinstance(data.synthetic, str):  # a set made before by `zerop-deploy synth`
        pool = load_pool(sources(data.synthetic)[0], chw)
        return pool.images, {
            "images": len(pool.images),
            "sd_ratio": ratio,
            "method": "file",
            "source": data.synthetic,
        }
    cfg = SynthConfig(images=data.synthetic, seed=seed)
    say(f"synthesising {cfg.images} images ({cfg.iterations} iterations per batch)")
    images, seconds, resumed = make(
        teacher, proto, chw, cfg, device, preprocess=data.preprocess, cache_path=cache_path,
        resume=resume, progress=progress,
    )  # fmt: skip
    section = summary(teacher, proto, images, cfg, seconds, data.preprocess, resumed)
    return images, {"sd_ratio": ratio, **section}


def make(
    teacher: nn.Module,
    proto: onnx.ModelProto,
    chw: tuple[int, int, int],
    cfg: SynthConfig,
    device: torch.device,
    *,
    preprocess: Preprocess,
    cache_path: Path,
    resume: bool,
    progress: bool,
) -> tuple[torch.Tensor, float, int]:
    """Synthesise ``cfg.images`` images (shared out under torchrun), with a progress bar.

    Finished batches are kept in ``cache_path`` (per rank under torchrun) for ``resume``; the
    caller removes those files once its outputs are written.

    Returns:
        ``(uint8 images N x C x H x W, seconds, batches taken from the cache)``.
    """
    h = hashlib.sha256(proto.SerializeToString())
    h.update(json.dumps([cfg.to_dict(), preprocess.mean, preprocess.std]).encode())
    cache = SynthCache(cache_path, h.hexdigest())
    with bar(cfg.images, "synthesising", enabled=progress, unit="img") as shown:
        batches, seconds, resumed = synthesize_sharded(
            teacher.to(device), proto, chw, cfg, device, preprocess=preprocess, cache=cache,
            resume=resume, on_progress=lambda n: to(shown, n),
        )  # fmt: skip
    return torch.cat([batches[b] for b in sorted(batches)]), seconds, resumed
