"""Synthetic images that make the network reproduce its own stored BatchNorm statistics.

In the spirit of ZeroQ / DeepInversion: images are free parameters (pixels in [0, 1] at the model's
input size), optimised with Adam so that

* at every BatchNormalization input the batch's per-channel mean and std match the stored running
  statistics: the same per-channel normalised distance as
  :func:`zerop_deploy.proxy.stats.bns_distance` (RMS over channels of ``(mu - m) / s`` and ``(sigma
  - s) / s``, averaged over layers);
* the teacher assigns each image its target class (cross-entropy; image ``i`` of batch ``b``
  targets class ``(b * batch + i) mod classes``, so every class is represented);
* image priors keep them natural: total variation and a small L2 pull towards mid-gray.

Every step applies a random jitter (roll of up to 1/16 of the size) and horizontal flip before the
forward pass, which keeps the images from over-fitting pixel-exact patterns. Models without BN
statistics (BN folded into Conv) are synthesised from the cross-entropy and the priors alone
(``method: "output"``), a clearly weaker signal.

Batch ``b`` depends only on ``(seed, b)``: batches can be made by several processes (``torchrun``
shards them, rank 0 gathers) and the result is the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from zerop_deploy.config import SynthConfig
from zerop_deploy.data.preprocess import NO_PREPROCESS, Preprocess
from zerop_deploy.io import atomic_write_bytes
from zerop_deploy.proxy.stats import (
    bn_input_hooks,
    bn_modules,
    first_output,
    floored_std,
    module_device,
    stored_bns,
)
from zerop_deploy.quant.distributed import distributed_context


def _bns_loss(stats: dict[str, tuple[torch.Tensor, torch.Tensor]], inputs: dict) -> torch.Tensor:
    terms = []
    for node, x in inputs.items():
        m, s = stats[node]
        dims = [d for d in range(x.dim()) if d != 1]
        mu = x.mean(dims)
        sigma = (x.var(dims, unbiased=False) + 1e-8).sqrt()
        terms.append(
            (((mu - m) / s) ** 2).mean().add(1e-12).sqrt()
            + (((sigma - s) / s) ** 2).mean().add(1e-12).sqrt()
        )
    return torch.stack(terms).mean()


def _tv(x: torch.Tensor) -> torch.Tensor:
    return (x[:, :, 1:] - x[:, :, :-1]).pow(2).mean() + (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(
        2
    ).mean()


def _stored_tensors(proto: onnx.ModelProto, device: torch.device) -> dict:
    return {
        bn.node: (
            torch.tensor(bn.mean, dtype=torch.float32, device=device),
            torch.tensor(floored_std(bn), dtype=torch.float32, device=device),  # as bns_distance
        )
        for bn in stored_bns(proto)
    }


def synthesize_batch(
    teacher: nn.Module,
    proto: onnx.ModelProto,
    chw: tuple[int, int, int],
    n: int,
    index: int,
    cfg: SynthConfig,
    *,
    preprocess: Preprocess = NO_PREPROCESS,
) -> torch.Tensor:
    """Optimise batch ``index`` of ``n`` images: uint8 ``n x C x H x W``, fixed by (seed, index).

    The teacher must be in eval mode; its parameters are not changed.
    """
    device = module_device(teacher)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
    x = (0.5 + 0.2 * torch.randn(n, *chw, generator=gen)).clamp(0, 1).to(device)
    x.requires_grad_(True)
    stats = _stored_tensors(proto, device)
    modules = bn_modules(teacher, proto)
    first = index * cfg.batch_size
    opt = torch.optim.Adam([x], lr=cfg.lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations, eta_min=cfg.lr / 20)
    inputs: dict[str, torch.Tensor] = {}
    targets = None
    shift = max(1, chw[1] // 16), max(1, chw[2] // 16)
    with bn_input_hooks(modules, inputs.__setitem__):
        for _ in range(cfg.iterations):
            dy, dx = (int(torch.randint(-s, s + 1, (1,), generator=gen)) for s in shift)
            flip = bool(torch.rand(1, generator=gen) < 0.5)
            y = torch.roll(x, (dy, dx), (2, 3))
            y = y.flip(3) if flip else y
            logits = first_output(teacher(preprocess.to_input(y)))
            if targets is None:
                k = logits.reshape(n, -1).shape[1]
                targets = (torch.arange(first, first + n, device=device) % k).long()
            loss = cfg.ce_weight * F.cross_entropy(logits.reshape(n, -1), targets)
            if stats:
                loss = loss + _bns_loss(stats, inputs)
            loss = loss + cfg.tv_weight * _tv(x) + cfg.l2_weight * (x - 0.5).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            inputs.clear()
    return (x.detach() * 255).round().to(torch.uint8).cpu()


def synthesize(
    teacher: nn.Module,
    proto: onnx.ModelProto,
    chw: tuple[int, int, int],
    cfg: SynthConfig,
    *,
    preprocess: Preprocess = NO_PREPROCESS,
    batches: list[int] | None = None,
    done: dict[int, torch.Tensor] | None = None,
    on_batch: Callable[[dict[int, torch.Tensor]], None] | None = None,
) -> tuple[dict[int, torch.Tensor], float]:
    """Make the batches of ``cfg.images`` synthetic images (all, or only ``batches``).

    Args:
        teacher: The fp32 model; switched to eval mode, its parameters frozen.
        proto: Its ONNX graph (stored BN statistics, node names).
        chw: The model's input (C, H, W).
        cfg: Synthesis settings.
        preprocess: Turns images into model inputs (``--mean``/``--std`` for graphs that do not
            normalise their own input).
        batches: Batch indices to make (default: all ``ceil(images / batch_size)``).
        done: Batches already made (by a killed run): kept, not redone.
        on_batch: Called with all finished batches after each new one (checkpointing, progress).

    Returns:
        ``({batch index: uint8 images N x C x H x W}, seconds spent on new batches)``.
    """
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    count = math.ceil(cfg.images / cfg.batch_size)
    out = dict(done or {})
    t0 = time.monotonic()
    for b in range(count) if batches is None else batches:
        if b in out:
            continue
        n = min(cfg.batch_size, cfg.images - b * cfg.batch_size)
        out[b] = synthesize_batch(teacher, proto, chw, n, b, cfg, preprocess=preprocess)
        if on_batch is not None:
            on_batch(out)
    return out, time.monotonic() - t0


class SynthCache:
    """Finished batches kept on disk (atomically rewritten after each), so a killed run resumes.

    The file is an ``.npz`` with ``fingerprint`` and one ``batch_<b>`` array per finished batch;
    a file with another fingerprint (other model or settings) is ignored.
    """

    def __init__(self, path, fingerprint: str) -> None:
        from pathlib import Path

        self.path = Path(path)
        self.fingerprint = fingerprint

    def load(self) -> dict[int, torch.Tensor]:
        """The batches finished by an earlier run with the same fingerprint."""
        if not self.path.exists():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["fingerprint"]) != self.fingerprint:
                    return {}
                return {
                    int(k.split("_")[1]): torch.from_numpy(z[k])
                    for k in z.files
                    if k.startswith("batch_")
                }
        except (OSError, ValueError, KeyError):
            return {}

    def save(self, done: dict[int, torch.Tensor]) -> None:
        """Write every finished batch."""
        import io

        buf = io.BytesIO()
        arrays = {f"batch_{b}": x.numpy() for b, x in done.items()}
        np.savez(buf, fingerprint=np.array(self.fingerprint), **arrays)
        atomic_write_bytes(self.path, buf.getvalue())

    def remove(self) -> None:
        """Delete the file (the run finished)."""
        self.path.unlink(missing_ok=True)


def target_labels(cfg: SynthConfig, classes: int) -> np.ndarray:
    """The class each synthetic image was optimised towards (image i -> i mod classes)."""
    return (np.arange(cfg.images) % classes).astype(np.int64)


def synthesize_sharded(
    teacher: nn.Module,
    proto: onnx.ModelProto,
    chw: tuple[int, int, int],
    cfg: SynthConfig,
    device: torch.device,
    *,
    preprocess: Preprocess = NO_PREPROCESS,
    cache: SynthCache | None = None,
    resume: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[int, torch.Tensor], float, int]:
    """:func:`synthesize` shared by the processes of ``torchrun`` (batch b goes to rank b mod N).

    Every rank ends with all batches (gathered); each keeps its own finished batches in
    ``cache`` (``.rank<r>`` appended to the name under torchrun) for ``resume``.

    Returns:
        ``(batches, seconds, batches taken from the cache)``.
    """
    rank, world = distributed_context(device)
    count = math.ceil(cfg.images / cfg.batch_size)
    mine = [b for b in range(count) if b % world == rank]
    if cache is not None and world > 1:
        cache = SynthCache(cache.path.with_name(f"{cache.path.name}.rank{rank}"), cache.fingerprint)
    done = {b: x for b, x in (cache.load() if cache and resume else {}).items() if b in mine}

    def saved(batches: dict[int, torch.Tensor]) -> None:
        if cache is not None:
            cache.save(batches)
        if on_progress is not None:
            on_progress(sum(len(x) for x in batches.values()) * world)

    out, seconds = synthesize(
        teacher, proto, chw, cfg, preprocess=preprocess, batches=mine, done=done, on_batch=saved
    )
    if world > 1:
        import torch.distributed as dist

        parts: list[dict[int, torch.Tensor] | None] = [None] * world
        dist.all_gather_object(parts, out)
        out = {b: x for part in parts if part for b, x in part.items()}
    return out, seconds, len(done)


def cache_files(path) -> list:
    """The cache file and the per-rank ones torchrun runs left next to it."""
    from pathlib import Path

    p = Path(path)
    return [p, *p.parent.glob(f"{p.name}.rank*")]
