"""The built-in proxy pool: random crops of public sample photos shipped by installed dependencies.

A user with no data at all still gets proxy images (``--proxy builtin``). The photos are read from
the installed package folders, located with :func:`importlib.util.find_spec` on the top-level
package name, which finds a package without importing it (``import sklearn`` takes most of a
second).

Photos and licences (as stated by the shipping packages):

- scikit-image ``skimage/data/``: ``astronaut.png`` (Eileen Collins, NASA Great Images database,
  public domain); ``chelsea.png`` (Stefan van der Walt, CC0); ``coffee.png`` (Rachel Michetti, CC0);
  ``rocket.jpg`` (DSCOVR launch on Falcon 9, SpaceX, released into the public domain);
  ``motorcycle_left.png`` / ``motorcycle_right.png`` (Middlebury 2014 stereo benchmark, Scharstein
  et al.).
- scikit-learn ``sklearn/datasets/images/``: ``china.jpg`` (danielbuechele) and ``flower.jpg``
  (vultilion), both CC BY 2.0 per scikit-learn's ``README.txt`` there.

Image ``i`` of a pool with seed ``s`` is a deterministic function of ``(s, i)``: photo ``i mod 8``;
a crop whose shorter side is the photo's shorter side times ``u``, ``u`` log-uniform in
[0.08, 1], with the model's aspect ratio (a square for square inputs), placed uniformly at random;
a horizontal flip with probability 0.5; resized (antialiased bilinear) to the model's H x W. So any
subset of the pool can be rendered without rendering the rest.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from zerop_deploy.errors import InputError

# (import name, path inside the package, distribution to install)
PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("skimage", "data/astronaut.png", "scikit-image"),
    ("skimage", "data/chelsea.png", "scikit-image"),
    ("skimage", "data/coffee.png", "scikit-image"),
    ("skimage", "data/rocket.jpg", "scikit-image"),
    ("skimage", "data/motorcycle_left.png", "scikit-image"),
    ("skimage", "data/motorcycle_right.png", "scikit-image"),
    ("sklearn", "datasets/images/china.jpg", "scikit-learn"),
    ("sklearn", "datasets/images/flower.jpg", "scikit-learn"),
)
_MIN_SCALE = 0.08


@lru_cache(maxsize=1)
def photo_paths() -> tuple[str, ...]:
    """Locate the pool's photos without importing their packages.

    Raises:
        InputError: A package or one of its photos is missing (names the package to install).
    """
    paths = []
    for module, rel, dist in PHOTOS:
        spec = importlib.util.find_spec(module)
        roots = list(spec.submodule_search_locations or []) if spec else []
        found = [Path(r) / rel for r in roots if (Path(r) / rel).is_file()]
        if not found:
            raise InputError(
                f"builtin: the proxy pool needs {module}/{rel}, which is missing; "
                f"install {dist} (pip install {dist}) or pass your own images with --proxy PATH"
            )
        paths.append(str(found[0]))
    return tuple(paths)


@lru_cache(maxsize=2 * len(PHOTOS))
def _photo(path: str, gray: bool):
    """Decode one photo once (RGB, or luminance 0.299/0.587/0.114 when ``gray``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("L" if gray else "RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(
            f"builtin: cannot decode {path} ({e}); reinstall the package that ships it"
        ) from e


def _crop(rng: np.random.Generator, pw: int, ph: int, h: int, w: int):
    """A random crop box (left, top, right, bottom) with aspect ``w / h`` inside a pw x ph photo."""
    u = math.exp(rng.uniform(math.log(_MIN_SCALE), 0.0))
    ch = u * min(pw, ph)
    cw = ch * w / h
    fit = min(1.0, pw / cw, ph / ch)
    ch, cw = ch * fit, cw * fit
    left, top = rng.uniform(0.0, pw - cw), rng.uniform(0.0, ph - ch)
    return (left, top, left + cw, top + ch)


def render(
    indices: Sequence[int] | np.ndarray, chw: tuple[int, int, int], seed: int
) -> torch.Tensor:
    """Render pool images ``indices`` for seed ``seed`` as uint8 N x C x H x W (C is 1 or 3).

    Raises:
        InputError: The photos are missing or unreadable.
    """
    from PIL import Image

    c, h, w = chw
    paths = photo_paths()
    out = np.empty((len(indices), h, w, c), np.uint8)
    for k, i in enumerate(np.asarray(indices, dtype=np.int64).tolist()):
        rng = np.random.default_rng([seed % (1 << 63), i])
        photo = _photo(paths[i % len(paths)], c == 1)
        box = _crop(rng, photo.width, photo.height, h, w)
        im = photo.resize((w, h), Image.Resampling.BILINEAR, box=box)
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[k] = np.asarray(im).reshape(h, w, c)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
