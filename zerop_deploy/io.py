"""Writing outputs safely: atomically (temp file + rename), never over an input, one run at once."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
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


@contextlib.contextmanager
def output_lock(out: str | os.PathLike[str]) -> Iterator[Path | None]:
    """Hold ``<out>.lock`` while a run writes ``out`` (and the files it keeps beside it).

    Two runs writing the same output would share its checkpoint and temporary files; the second
    one is refused at once instead. The lock is an ``flock`` on the sidecar file, so the system
    drops it when the process dies (``kill -9`` included) and a stale file never blocks a later
    run. The file holds the pid of its holder, for the message, and is removed on release. Under
    ``torchrun`` only rank 0 locks: the other ranks of the run share its output. On a file system
    without ``flock`` the run goes on unlocked.

    Args:
        out: The output path (checked by :func:`check_output_path`).

    Yields:
        The lock file, or None when no lock was taken.

    Raises:
        InputError: Another run holds the lock (names it and its pid), or the lock file cannot be
            created.
    """
    o = Path(out)
    lock = o.with_name(o.name + ".lock")
    if os.environ.get("RANK", "0") != "0" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield None
        return
    fd = _acquire(lock, o)
    if fd is None:
        yield None
        return
    try:
        yield lock
    finally:
        # removed while still held: a run that opened the old file then finds it gone and retries
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                os.unlink(lock)
        os.close(fd)


def _acquire(lock: Path, out: Path) -> int | None:
    """Open and ``flock`` ``lock``, write the pid into it; None where ``flock`` is unsupported."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise InputError(
                f"{out}: cannot create the lock file {lock.name} ({e.strerror}); check the "
                "folder's permissions or choose another -o"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _pid_in(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                with contextlib.suppress(OSError):
                    if not holder:
                        os.unlink(lock)
                return None
            pid = f" (pid {holder})" if holder else ""
            raise InputError(
                f"{out}: another zerop-deploy run is writing this output{pid}; wait for it to "
                "finish or choose another -o"
            ) from None
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # the previous holder removed the file between our open and our flock
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _pid_in(fd: int) -> str:
    """The pid a lock file holds ("" when empty or unreadable)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
