"""Training batches: a deterministic function of (seed, step), mixing proxy and synthetic images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zerop_deploy.data.preprocess import NO_PREPROCESS, Preprocess, unit

INFERENCE_PIXELS = 2048 * 32 * 32
"""Input pixels of one inference pass (no gradients) at most: 2,048 images at 32 x 32, 41 at
224 x 224. Scoring, validation and the per-layer SQNR pass cut their batches to it, so that a
224-px model holds the activations of a few dozen images, not of hundreds."""


def images_per_pass(chw: tuple[int, ...], most: int) -> int:
    """Images per inference pass over inputs ``chw`` (``C, H, W`` or a whole ``N, C, H, W``).

    ``most``, or fewer (at least 1) where ``most`` images would exceed :data:`INFERENCE_PIXELS`.
    """
    return max(1, min(most, INFERENCE_PIXELS // (chw[-2] * chw[-1])))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts (reflect-padded crops of 1/8 of the size) and horizontal flips, per image."""
    n, _, h, w = x.shape
    ph, pw = max(1, h // 8), max(1, w // 8)
    padded = F.pad(x, (pw, pw, ph, ph), mode="reflect")
    dy = torch.randint(0, 2 * ph + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pw + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(
        n, x.shape[1], h, w + 2 * pw
    )
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def batch_fn(
    images: torch.Tensor,
    batch_size: int,
    *,
    seed: int,
    augment_images: bool = True,
    synthetic: torch.Tensor | None = None,
    sd_ratio: float = 0.0,
    preprocess: Preprocess = NO_PREPROCESS,
):
    """Make a deterministic ``batch(step) -> float32 tensor`` over ``images`` (and ``synthetic``).

    The batch of step ``s`` depends only on ``(seed, s)``, so resumed runs see the same data. Each
    part is gathered and turned into float in [0, 1] (uint8 / 255; float is kept as is), augmented,
    then ``preprocess`` turns the whole batch into model inputs, so real and synthetic images
    must be in the same unnormalised space.
    """
    n_sd = round(batch_size * sd_ratio) if synthetic is not None and len(synthetic) else 0
    n_pd = batch_size - n_sd

    def batch(step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        parts = []
        if n_pd:
            parts.append(unit(images[torch.randint(0, len(images), (n_pd,), generator=gen)]))
        if n_sd:
            pick = torch.randint(0, len(synthetic), (n_sd,), generator=gen)
            parts.append(unit(synthetic[pick]))
        x = torch.cat(parts)
        x = augment(x, gen) if augment_images else x
        return preprocess.to_input(x)

    return batch
