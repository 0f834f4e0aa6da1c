"""Writing outputs safely: atomically (temp file + rename), never over an input."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from zerop_deploy.errors import InputError


def check_output_path(
    out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """Check that ``out`` can be written and is none of ``inputs``.

    Raises:
        InputError: If ``out`` is an input file, a directory, or its folder is missing or read-only.
    """
    o = Path(out)
    for i in inputs:
        ip = Path(i)
        if o.resolve() == ip.resolve() or (o.exists() and ip.exists() and o.samefile(ip)):
            raise InputError(f"{o}: output path is the input {ip}; choose another output path")
    if o.is_dir():
        raise InputError(f"{o}: output path is a directory; give a file name")
    parent = o.resolve().parent
    if not parent.is_dir():
        raise InputError(f"{o}: folder {parent} does not exist; create it first")
    if not _can_create_in(parent):
        raise InputError(f"{o}: folder {parent} is not writable; choose another output path")
    return o


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``.

    Tried for real: file modes do not stop root, and read-only mounts are invisible to them.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=".zerop-probe.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    A reader never sees a half-written file, and a failure (disk full, interrupt) leaves no partial
    output behind.

    Raises:
        InputError: If the file cannot be written (the message names the path and the OS reason).
    """
    return atomic_write_all([(path, data)])[0]


def atomic_write_all(items: Iterable[tuple[str | os.PathLike[str], bytes]]) -> list[Path]:
    """Write several files all or nothing.

    Each goes to a temporary file first, and only when every one is safely on disk are they
    renamed into place.

    A failure while writing (disk full, interrupt) leaves every target as it was before.

    Raises:
        InputError: If a file cannot be written (the message names the path and the OS reason).
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in items:
            staged.append((_stage(Path(path), data), Path(path)))
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for tmp, p in staged:
        os.replace(tmp, p)
    return [p for _, p in staged]


def _stage(p: Path, data: bytes) -> str:
    """``data`` in a synced temporary file beside ``p``; returns the temporary file's path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.resolve().parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InputError(
            f"{p}: cannot be written ({e.strerror}); check free space and permissions"
        ) from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
