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
            raise InputError(f"{o}: output path is the input model; choose another path with -o")
    if o.is_dir():
        raise InputError(f"{o}: output path is a directory; give a file name")
    parent = o.resolve().parent
    if not parent.is_dir():
        raise InputError(f"{o}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{o}: folder {parent} is not writable; choose another output path")
    return o


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    A reader never sees a half-written file, and a failure (disk full, interrupt) leaves no partial
    output behind.

    Raises:
        InputError: If the file cannot be written (the message names the path and the OS reason).
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.resolve().parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
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
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
