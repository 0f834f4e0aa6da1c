"""How an image of any size becomes the model's input: resize, center crop, channels, normalise.

One :class:`Preprocess` describes it for every image input (proxy, candidates, eval, data). The
geometry is the evaluation transform ImageNet users know ("resize the shorter side to 256, center
crop 224"), written as a crop ratio so that it holds for any input size:

* the shorter side is resized to ``round(S / crop_ratio)``, where ``S`` is the model's shorter
  input side (bigger when needed so that the image covers H x W), antialiased, with bilinear or
  bicubic interpolation;
* the H x W center is cropped.

``crop_ratio`` 0.875 at 224 is the usual 256 -> 224; 1.0 fits the shorter side to the input (the
whole image, only the longer side is cropped). Left unset, inputs of at least
:data:`IMAGENET_SIDE` pixels get ratio 0.875 and bicubic interpolation (the reference evaluation of
EfficientNet and timm's default; torchvision's classic ResNet transform is bilinear), smaller
inputs get ratio 1.0 and bilinear (CIFAR-size networks see whole images). An image already at the
input size is never touched. An
alpha channel is dropped, gray is replicated to RGB, RGB becomes gray by luminance.

Two steps, each done in one place: :meth:`Preprocess.fit` turns decoded images into uint8 at the
input size (the data stage keeps images in that form: four times smaller than float), and
:meth:`Preprocess.to_input` turns uint8 (or float in [0, 1]) images into what the model reads,
``(x / 255 - mean) / std`` for graphs that do not normalise their own input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zerop_deploy.errors import ConfigError, UnsupportedModelError

IMAGENET_SIDE = 128
"""Inputs whose shorter side has at least this many pixels get the ImageNet defaults."""

IMAGENET_CROP_RATIO = 0.875
"""224 / 256: the default crop ratio of ImageNet-size inputs."""

INTERPOLATIONS = ("bilinear", "bicubic")
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """Geometry of the image -> model-input transform (checked on construction).

    Attributes:
        resize: Shorter side after resizing, for a model input of side ``crop`` (``--resize``).
        crop: The center crop that ``resize`` refers to (``--crop``); the ratio ``crop / resize``
            is what is applied, at the model's own input size.
        crop_ratio: The same as one number (``--crop-ratio``); not together with resize/crop.
        interpolation: ``"bilinear"`` or ``"bicubic"``, or None for the default (bicubic).
        mean: Per-channel mean (0..1 units) to subtract (``--mean``), for graphs that do not
            normalise their input; one value for all channels, or None for 0.
        std: Per-channel std to divide by (``--std``), or None for 1.
    """

    resize: int | None = None
    crop: int | None = None
    crop_ratio: float | None = None
    interpolation: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.std is not None and not all(s > 0 for s in self.std):
            raise ConfigError(f"--std {self.std}: every value must be positive")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ConfigError(f"--mean {self.mean} and --std {self.std}: need as many values")
        if self.crop_ratio is not None and (self.resize is not None or self.crop is not None):
            raise ConfigError("--crop-ratio: give either --crop-ratio or --resize/--crop, not both")
        if (self.resize is None) != (self.crop is None):
            raise ConfigError("--resize and --crop go together (e.g. --resize 256 --crop 224)")
        if self.resize is not None and self.crop is not None:
            if self.resize < 1 or self.crop < 1:
                raise ConfigError(f"--resize {self.resize} --crop {self.crop}: must be >= 1")
            if self.crop > self.resize:
                raise ConfigError(
                    f"--crop {self.crop} is larger than --resize {self.resize}: the crop is cut "
                    "from the resized image, so it cannot be bigger (--resize 256 --crop 224)"
                )
        if self.crop_ratio is not None and not 0.05 <= self.crop_ratio <= 1:
            raise ConfigError(f"--crop-ratio {self.crop_ratio}: must be in [0.05, 1] (e.g. 0.875)")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"--interpolation {self.interpolation}: use {' or '.join(INTERPOLATIONS)}"
            )

    def ratio(self, chw: tuple[int, int, int]) -> float:
        """The crop ratio used for a model input of ``chw``."""
        if self.crop_ratio is not None:
            return self.crop_ratio
        if self.resize is not None and self.crop is not None:
            return self.crop / self.resize
        return IMAGENET_CROP_RATIO if min(chw[1:]) >= IMAGENET_SIDE else 1.0

    def mode(self, chw: tuple[int, int, int]) -> str:
        """The interpolation used for a model input of ``chw``."""
        if self.interpolation is not None:
            return self.interpolation
        return "bicubic" if min(chw[1:]) >= IMAGENET_SIDE else "bilinear"

    def decode_size(self, chw: tuple[int, int, int]) -> tuple[int, int]:
        """(W, H) a decoder may shrink a big image to (JPEG draft) without losing detail."""
        ratio = self.ratio(chw)
        return int(np.ceil(chw[2] / ratio)), int(np.ceil(chw[1] / ratio))

    def describe(self, chw: tuple[int, int, int]) -> dict[str, Any]:
        """What the report records: the input size, resized shorter side, ratio, interpolation."""
        ratio = self.ratio(chw)
        return {
            "input": list(chw[1:]),
            "resize_shorter_side": round(min(chw[1:]) / ratio),
            "crop_ratio": round(ratio, 6),
            "interpolation": self.mode(chw),
            "untouched": "images already at the input size",
            **({"mean": list(self.mean)} if self.mean is not None else {}),
            **({"std": list(self.std)} if self.std is not None else {}),
        }

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """Turn uint8 (or float in [0, 1]) N x C x H x W into the model's float32 input.

        ``x / 255`` for uint8, then ``(x - mean) / std`` per channel where they are set.

        Raises:
            ConfigError: ``mean`` or ``std`` has neither 1 nor C values.
        """
        return normalize(images, self.mean, self.std)

    def fit(self, images: np.ndarray, chw: tuple[int, int, int]) -> torch.Tensor:
        """Fit uint8 N x H x W x C images (C in 1, 3, 4) to ``chw``: uint8 N x C x H x W.

        Raises:
            UnsupportedModelError: The model input has neither 1 nor 3 channels.
        """
        c, h, w = chw
        if c not in (1, 3):
            raise UnsupportedModelError(f"model input has {c} channels; only 1 or 3 are supported")
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # memory maps, decoded PIL buffers: torch wants writable
            images = images.copy()
        x = torch.from_numpy(images).permute(0, 3, 1, 2)[:, :3]
        if x.shape[1:] in ((c, h, w), (1, h, w)):
            return x.expand(-1, c, -1, -1).clone(memory_format=torch.contiguous_format)
        y = x.float()
        if y.shape[1] == 3 and c == 1:
            y = (y * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if y.shape[2:] != (h, w):
            y = self._resize_crop(y, h, w, self.ratio(chw), self.mode(chw))
        y = y.round().clamp(0, 255).to(torch.uint8)
        return y.expand(-1, c, -1, -1).contiguous()

    @staticmethod
    def _resize_crop(y: torch.Tensor, h: int, w: int, ratio: float, mode: str) -> torch.Tensor:
        short = round(min(h, w) / ratio)
        scale = short / min(y.shape[2], y.shape[3])
        scale = max(scale, h / y.shape[2], w / y.shape[3])  # cover H x W whatever the aspect
        size = (max(h, round(y.shape[2] * scale)), max(w, round(y.shape[3] * scale)))
        if size != tuple(y.shape[2:]):
            y = F.interpolate(y, size=size, mode=mode, antialias=True, align_corners=False)
        top, left = (y.shape[2] - h) // 2, (y.shape[3] - w) // 2
        return y[:, :, top : top + h, left : left + w]


NO_PREPROCESS = Preprocess()
"""The default Preprocess (no mean/std): a shared, immutable default argument."""


def unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float32 in [0, 1] (``x / 255``); float images are kept as they are."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Turn uint8 (or float in [0, 1]) N x C x H x W into float32 [0, 1], then ``(x - mean) / std``.

    The one definition of the model-input scale (:meth:`Preprocess.to_input` calls it); ``mean``
    and ``std`` are per channel (or one value for all); a missing one means 0 or 1.

    Raises:
        ConfigError: ``mean`` or ``std`` has neither 1 nor C values, or ``std`` is not positive.
    """
    x = unit(images)
    if mean is None and std is None:
        return x
    c = x.shape[1]
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) not in (1, c):
            raise ConfigError(f"--{name} has {len(v)} values; the model input has {c} channels")
    if std is not None and not all(v > 0 for v in std):
        raise ConfigError(f"--std values must be positive, got {tuple(std)}")
    kw = {"dtype": torch.float32, "device": x.device}
    m = torch.tensor(mean if mean is not None else (0.0,), **kw).view(1, -1, 1, 1)
    s = torch.tensor(std if std is not None else (1.0,), **kw).view(1, -1, 1, 1)
    return (x - m) / s
