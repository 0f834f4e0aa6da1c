"""Image sources: ``.npz`` / ``.npy`` arrays and image folders, preprocessed to the model's input.

Images become float32 NCHW tensors in [0, 1] at the model's input size and channel count (bilinear,
antialiased resizing of the shorter side then a center crop; gray <-> RGB by replication or
luminance).
Models whose graph does not normalise its own input take ``mean``/``std`` (in [0, 1] units).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zerop_deploy.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageSet:
    """Decoded images (uint8 NHWC) with optional integer labels and a count of skipped files."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    skipped: int = 0


def load_images(path: str | os.PathLike[str], *, limit: int | None = None) -> ImageSet:
    """Read an ``.npz`` (``images`` + optional ``labels``), an ``.npy`` or a folder of images.

    Raises:
        InputError: Missing path, unreadable file, wrong keys/dtype/rank, or no image at all.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder; pass an image folder, .npz or .npy")
    if p.is_dir():
        return _load_folder(p, limit)
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                if "images" not in z.files:
                    raise InputError(
                        f"{p}: .npz has no 'images' array (keys: {', '.join(z.files)})"
                    )
                images = z["images"]
                labels = z["labels"] if "labels" in z.files else None
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: cannot read the .npz ({e})") from e
    elif p.suffix == ".npy":
        try:
            images, labels = np.load(p, allow_pickle=False), None
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: cannot read the .npy ({e})") from e
    else:
        raise InputError(f"{p}: unknown image source; use a folder of images, a .npz or a .npy")
    images = _check_array(images, p)
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(images):
            raise InputError(f"{p}: {len(labels)} labels for {len(images)} images")
    if limit is not None:
        images, labels = images[:limit], None if labels is None else labels[:limit]
    return ImageSet(images=images, labels=labels, source=str(p))


def _check_array(images: np.ndarray, p: Path) -> np.ndarray:
    if images.dtype != np.uint8:
        raise InputError(f"{p}: images must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise InputError(f"{p}: images must be N x H x W x C, got shape {images.shape}")
    if images.shape[-1] not in (1, 3, 4):
        raise InputError(f"{p}: images have {images.shape[-1]} channels; use 1 (gray), 3 or 4")
    if len(images) == 0:
        raise InputError(f"{p}: holds no images")
    return images


def _load_folder(p: Path, limit: int | None) -> ImageSet:
    from PIL import Image

    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    classes = sorted({f.parent.name for f in files}) if all(f.parent != p for f in files) else []
    images, labels, skipped = [], [], 0
    for f in files[: limit or None]:
        try:
            with Image.open(f) as im:
                im.draft("RGB", (256, 256))
                images.append(np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.uint8))
            labels.append(classes.index(f.parent.name) if classes else -1)
        except (OSError, ValueError, Image.DecompressionBombError):
            skipped += 1
    if not images:
        raise InputError(f"{p}: no readable image (jpg, png, bmp, webp) in this folder")
    return ImageSet(
        images=np.stack(images),
        labels=np.asarray(labels) if classes else None,
        source=str(p),
        skipped=skipped,
    )


def to_model_input(
    images: np.ndarray,
    shape: tuple[int, int, int],
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """Turn uint8 NHWC images into float32 NCHW of ``shape = (C, H, W)``, values in [0, 1]."""
    c, h, w = shape
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] == 1 and c == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and c == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if x.shape[2:] != (h, w):
        scale = max(h / x.shape[2], w / x.shape[3])
        size = (max(h, round(x.shape[2] * scale)), max(w, round(x.shape[3] * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        x = x[:, :, top : top + h, left : left + w]
    x = x.clamp(0, 1).contiguous()
    if mean is not None or std is not None:
        m = torch.tensor(mean or (0.0,) * c).view(1, -1, 1, 1)
        s = torch.tensor(std or (1.0,) * c).view(1, -1, 1, 1)
        x = (x - m) / s
    return x


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
):
    """Make a deterministic ``batch(step) -> tensor`` over ``images`` (and ``synthetic``).

    The batch of step ``s`` depends only on ``(seed, s)``, so resumed runs see the same data.
    """
    n_sd = round(batch_size * sd_ratio) if synthetic is not None and len(synthetic) else 0
    n_pd = batch_size - n_sd

    def batch(step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        parts = []
        if n_pd:
            parts.append(images[torch.randint(0, len(images), (n_pd,), generator=gen)])
        if n_sd:
            parts.append(synthetic[torch.randint(0, len(synthetic), (n_sd,), generator=gen)])
        x = torch.cat(parts)
        return augment(x, gen) if augment_images else x

    return batch
