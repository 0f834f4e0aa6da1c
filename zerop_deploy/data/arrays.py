"""Reading and checking image arrays from ``.npz`` (memory-mapped when stored uncompressed)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from zerop_deploy.errors import InputError

FIX = "pass a folder of images, a .npz with 'images' (uint8 N x H x W x C), a .npy or 'builtin'"


def open_npz(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images, labels or None)`` of a ``.npz``, memory-mapped when stored uncompressed."""
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InputError(f"{p}: not a .npz archive but a single array; rename it to .npy")
        with z:
            if "images" not in z.files:
                raise InputError(
                    f"{p}: .npz has no 'images' array (keys: {', '.join(z.files) or 'none'}); "
                    "save it with np.savez(path, images=..., labels=...)"
                )
            labels = z["labels"] if "labels" in z.files else None
            images = npz_memmap(p, "images.npy")
            return (z["images"] if images is None else images), labels
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy/zipfile raise many types on damaged files
        raise InputError(f"{p}: cannot read the .npz ({type(e).__name__}: {e}); {FIX}") from e


def npz_memmap(p: Path, member: str) -> np.memmap | None:
    """Memory-map an uncompressed ``.npy`` member of a zip archive; None when that is impossible."""
    with zipfile.ZipFile(p) as zf:
        if member not in zf.namelist():  # written by hand without the .npy suffix
            return None
        info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(p, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # local file header: name and extra lengths at bytes 26..29
        if local[:4] != b"PK\x03\x04":
            return None
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little")
        f.seek(start + int.from_bytes(local[28:30], "little"))
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        if fortran or dtype.hasobject:
            return None
        return np.memmap(p, dtype=dtype, mode="r", offset=f.tell(), shape=shape)


def check_array(images: np.ndarray, p: Path) -> np.ndarray:
    """``images`` if they are uint8 N x H x W (x C); else InputError naming ``p`` and the fix."""
    if images.dtype != np.uint8:
        raise InputError(
            f"{p}: images must be uint8 (0..255), got {images.dtype}; convert with "
            "(x * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise InputError(f"{p}: images must be N x H x W x C (or N x H x W), got {images.shape}")
    if images.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"{p}: images have {images.shape[-1]} channels (last axis, shape {images.shape}); "
            "use 1 (gray), 3 (RGB) or 4 (RGBA), channels last"
        )
    if len(images) == 0:
        raise InputError(f"{p}: holds no images; {FIX}")
    return images
