"""Image sources (``.npz``, ``.npy``, image folders, the built-in pool) streamed to the model input.

:func:`open_source` validates a source and returns an :class:`ImageSource` that decodes images only
when read, so a folder of 100k images never sits in memory at once: ``.npy`` files are memory
mapped, folders are listed and decoded batch by batch. :func:`load_pool` reads a random subset,
:func:`iter_batches` streams a source in order.

Every image of a source is fitted to the model input (C, H, W) by the source's
:class:`~zerop_deploy.data.preprocess.Preprocess` (resize the shorter side, center crop, channels;
the ImageNet "256 -> 224" convention for ImageNet-size inputs). Fitted images stay uint8;
:meth:`Preprocess.to_input` turns them into float32 in [0, 1] and applies ``mean``/``std`` (in [0,
1] units) for models whose graph does not normalise its own input.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from zerop_deploy.data.arrays import FIX, check_array, open_npz
from zerop_deploy.data.builtin_pool import photo_paths, render
from zerop_deploy.data.preprocess import Preprocess
from zerop_deploy.errors import ConfigError, InputError

BUILTIN = "builtin"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True, eq=False)
class ImageSource:
    """An opened, validated image source; images are decoded only when read.

    Attributes:
        name: The path as given, or ``"builtin"``.
        kind: ``"npz"``, ``"npy"``, ``"folder"`` or ``"builtin"``.
        count: Number of images (for a folder: files with an image suffix; some may turn out
            unreadable when read).
        labels: int64 [count], or None. Folders have labels when every file sits in a class
            subfolder (ImageFolder style: the sorted top-level subfolder names are classes 0..K-1).
    """

    name: str
    kind: str
    count: int
    labels: np.ndarray | None = field(repr=False)
    _array: np.ndarray | None = field(default=None, repr=False)  # N x H x W x C uint8 (memmap)
    _files: tuple[str, ...] = field(default=(), repr=False)
    _seed: int = field(default=0, repr=False)
    preprocess: Preprocess = field(default_factory=Preprocess, repr=False)

    def read(
        self, indices: Sequence[int] | np.ndarray, chw: tuple[int, int, int]
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Decode the images at ``indices``, fitted to the model input ``chw = (C, H, W)``.

        Returns:
            A uint8 tensor N x C x H x W and the int64 indices actually read, in the order asked.
            Unreadable or corrupt files (folders only) are left out of both.

        Raises:
            IndexError: An index is outside ``[0, count)``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError(f"{self.name}: indices must lie in [0, {self.count})")
        if self.kind == BUILTIN:
            return render(idx, chw, self._seed), idx
        if self.kind == "folder":
            return _read_files([self._files[i] for i in idx], idx, chw, self.preprocess)
        assert self._array is not None
        return fit_images(self._array[idx], chw, self.preprocess), idx


@dataclass(frozen=True, eq=False)
class Pool:
    """Images read from a source, fitted to the model input.

    Attributes:
        images: uint8 N x C x H x W at the model input size.
        labels: int64 [N] aligned with ``images``, or None.
        source: The source's name.
        total: Number of images in the source.
        skipped: Unreadable files met while reading.
    """

    images: torch.Tensor
    labels: np.ndarray | None
    source: str
    total: int
    skipped: int


def open_source(
    path: str | os.PathLike[str],
    *,
    builtin_images: int = 4096,
    seed: int = 0,
    preprocess: Preprocess | None = None,
) -> ImageSource:
    """Validate and open an image source without decoding its images.

    The string ``"builtin"`` always means the built-in pool of ``builtin_images`` random crops of
    public photos (see ``zerop_deploy.data.builtin_pool``), even where a file of that name exists;
    pass ``"./builtin"`` or a ``Path`` for such a file. ``.npy`` files are memory mapped; a ``.npz``
    whose ``images`` member is stored uncompressed (``np.savez``) is memory mapped too, while a
    compressed one (``np.savez_compressed``) is read whole.

    Args:
        path: A folder of images (jpg, jpeg, png, bmp, webp; searched recursively), a ``.npz`` with
            ``images`` (uint8 N x H x W x C or N x H x W) and optional ``labels``, a ``.npy`` of
            images, or ``"builtin"``.
        builtin_images: Size of the built-in pool.
        seed: Seed of the built-in pool's crops.
        preprocess: How images are fitted to the model input (the built-in pool renders its crops
            at the input size itself).

    Raises:
        InputError: Missing path, unknown suffix, ``.npz`` without ``images``, unreadable file,
            non-uint8 images, wrong rank or channel count (not 1, 3 or 4), no images, or a folder
            without image files. A folder where no file decodes is found when reading.
    """
    if isinstance(path, str) and path == BUILTIN:
        return _open_builtin(builtin_images, seed)
    return replace(_open_path(Path(path), str(path)), preprocess=preprocess or Preprocess())


def _open_path(p: Path, name: str) -> ImageSource:
    if not p.exists():
        raise InputError(f"{p}: no such file or folder; {FIX}")
    if p.is_dir():
        return _open_folder(p)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        images, labels = open_npz(p)
    elif suffix == ".npy":
        try:
            images, labels = np.load(p, mmap_mode="r", allow_pickle=False), None
        except Exception as e:  # noqa: BLE001 - numpy raises many types on damaged headers
            raise InputError(f"{p}: cannot read the .npy ({type(e).__name__}: {e}); {FIX}") from e
    else:
        raise InputError(f"{p}: unknown image source suffix '{p.suffix}'; {FIX}")
    images = check_array(images, p)
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(images):
            raise InputError(f"{p}: {len(labels)} labels for {len(images)} images")
    return ImageSource(name, suffix[1:], len(images), labels, _array=images)


def _open_builtin(n: int, seed: int) -> ImageSource:

    if n < 1:
        raise ConfigError(f"builtin_images must be at least 1, got {n}")
    photo_paths()  # fail now, naming the package to install, rather than when reading
    return ImageSource(BUILTIN, BUILTIN, n, None, _seed=seed)


def _open_folder(p: Path) -> ImageSource:
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise InputError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder; {FIX}")
    top = [f.relative_to(p).parts for f in files]
    labels = None
    if all(len(parts) > 1 for parts in top):
        classes = sorted({parts[0] for parts in top})
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[parts[0]] for parts in top], dtype=np.int64)
    return ImageSource(str(p), "folder", len(files), labels, _files=tuple(map(str, files)))


MAX_PIXELS = 100_000_000
"""Image files whose header claims more pixels than this are skipped without being decoded."""


def _decode(path: str, chw: tuple[int, int, int], size: tuple[int, int]) -> np.ndarray | None:
    """One file as uint8 H x W x C (C is 1 or 3), or None when it cannot be decoded.

    A JPEG is decoded at the smallest DCT scale that still covers ``size`` (W, H).
    """
    from PIL import Image

    mode = "L" if chw[0] == 1 else "RGB"
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning would be a stderr line
            warnings.simplefilter("ignore")
            im = Image.open(path)  # reads the header only
        with im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                return None  # a decompression bomb, or nothing a CNN input is cut from
            if im.format == "JPEG":
                im.draft(mode, size)  # DCT scaling, still covering the resized image
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - damaged files make PIL raise many types: skip and count
        return None
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def _read_files(
    files: list[str], idx: np.ndarray, chw: tuple[int, int, int], preprocess: Preprocess
) -> tuple[torch.Tensor, np.ndarray]:
    out, kept = [], []
    for f, i in zip(files, idx.tolist(), strict=True):
        arr = _decode(f, chw, preprocess.decode_size(chw))
        if arr is not None and arr.shape[0] > 0 and arr.shape[1] > 0:
            out.append(fit_images(arr[None], chw, preprocess))
            kept.append(i)
    images = torch.cat(out) if out else torch.empty((0, *chw), dtype=torch.uint8)
    return images, np.asarray(kept, dtype=np.int64)


def fit_images(
    images: np.ndarray, chw: tuple[int, int, int], preprocess: Preprocess | None = None
) -> torch.Tensor:
    """Fit uint8 N x H x W x C images (C in 1, 3, 4) to ``chw``: uint8 N x C x H x W.

    See :class:`zerop_deploy.data.preprocess.Preprocess` (the default one when None).

    Raises:
        UnsupportedModelError: The model input has neither 1 nor 3 channels.
    """
    return (preprocess or Preprocess()).fit(images, chw)


def load_pool(
    source: ImageSource,
    chw: tuple[int, int, int],
    *,
    limit: int | None = None,
    seed: int = 0,
    batch: int = 256,
) -> Pool:
    """Read ``limit`` images chosen at random from ``source`` (all of them when ``limit`` is None).

    The choice is a deterministic function of ``seed``; images are read ``batch`` at a time in
    index order, so only the chosen images (uint8 at model size) are ever held. Unreadable files
    are replaced by further random picks while any are left.

    Raises:
        InputError: Nothing in the source could be read.
    """
    n = source.count
    want = n if limit is None else max(0, min(limit, n))
    order = np.arange(n) if want == n else np.random.default_rng(seed).permutation(n)
    out = torch.empty((want, *chw), dtype=torch.uint8)
    got: list[np.ndarray] = []
    filled = pos = 0
    while filled < want and pos < n:
        chosen = np.sort(order[pos : pos + want - filled])
        pos += len(chosen)
        for start in range(0, len(chosen), batch):
            images, idx = source.read(chosen[start : start + batch], chw)
            out[filled : filled + len(idx)] = images
            filled += len(idx)
            got.append(idx)
    if want and not filled:
        raise InputError(
            f"{source.name}: none of the {n} image files could be read (corrupt, or not "
            f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)}); {FIX}"
        )
    read = np.concatenate(got) if got else np.empty(0, np.int64)
    return Pool(
        images=out if filled == want else out[:filled].clone(),
        labels=None if source.labels is None else source.labels[read],
        source=source.name,
        total=n,
        skipped=pos - filled,
    )


def iter_batches(
    source: ImageSource,
    chw: tuple[int, int, int],
    *,
    batch: int = 256,
    limit: int | None = None,
) -> Iterator[Pool]:
    """Stream the first ``limit`` images of ``source`` (all when None), in order, as Pool chunks.

    Each chunk covers up to ``batch`` consecutive indices; unreadable files are left out, so a
    chunk may hold fewer images (empty chunks are not yielded: their skips count in the next
    chunk, or the previous one at the end). The chunks' ``skipped`` add up to all skips.

    Raises:
        InputError: Nothing in the source could be read (after the whole source was tried).
    """
    n = source.count if limit is None else max(0, min(limit, source.count))
    pending: Pool | None = None
    carry = 0
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        images, got = source.read(idx, chw)
        skipped = len(idx) - len(got)
        if not len(got):
            if pending is None:
                carry += skipped
            else:
                pending = replace(pending, skipped=pending.skipped + skipped)
            continue
        if pending is not None:
            yield pending
        labels = None if source.labels is None else source.labels[got]
        pending = Pool(images, labels, source.name, source.count, skipped + carry)
        carry = 0
    if pending is None and n:
        raise InputError(f"{source.name}: none of the {n} image files could be read; {FIX}")
    if pending is not None:
        yield pending


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images (uint8 NHWC) with optional integer labels and a count of skipped files."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    skipped: int = 0


def load_images(
    path: str | os.PathLike[str], *, limit: int | None = None, size: int = 64
) -> ImageSet:
    """Read the first ``limit`` images of a source whole into memory (a convenience for small sets).

    Arrays keep their own size and channels; folder images and the built-in pool are fitted to RGB
    ``size`` x ``size`` (resize + center crop, see :func:`fit_images`). Prefer :func:`open_source`
    with :func:`load_pool` or :func:`iter_batches` for anything big.

    Raises:
        InputError: See :func:`open_source`; also when no folder image could be read.
    """
    src = open_source(path)
    n = src.count if limit is None else min(limit, src.count)
    if src._array is not None:
        labels = None if src.labels is None else src.labels[:n]
        return ImageSet(np.array(src._array[:n]), labels, src.name)
    chunks = list(iter_batches(src, (3, size, size), limit=n))
    labels = None if src.labels is None else np.concatenate([c.labels for c in chunks])
    images = torch.cat([c.images for c in chunks]).permute(0, 2, 3, 1).numpy()
    return ImageSet(images, labels, src.name, sum(c.skipped for c in chunks))


def to_model_input(
    images: np.ndarray,
    shape: tuple[int, int, int],
    preprocess: Preprocess | None = None,
) -> torch.Tensor:
    """Turn uint8 NHWC images into float32 NCHW of ``shape = (C, H, W)``: fit, then to_input."""
    preprocess = preprocess or Preprocess()
    return preprocess.to_input(fit_images(images, shape, preprocess))
