"""Helpers shared by the benchmark scripts: running a command, updating a BENCHMARKS.md section."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def zerop_command(*args: str) -> list[str]:
    """The command line of ``zerop-deploy ARGS`` with this interpreter (the checkout's package)."""
    return [sys.executable, "-m", "zerop_deploy", *args]


def run_command(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; return wall seconds, its peak RSS in MiB (wait4 rusage), and stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


def cpu_description() -> str:
    """The CPU the numbers come from: its model name and widest SIMD (from /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
        platform.machine(),
    )
    flags = set(
        next(
            (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
        )
    )
    widest = (("avx512_vnni", "AVX-512 with VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
    simd = next((label for flag, label in widest if flag in flags), "no AVX2")
    return f"{name}, {simd}, {os.cpu_count()} cores"


def write_section(name: str, title: str, text: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in BENCHMARKS.md.

    A missing section is appended under ``## title``.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text()
    block = f"{begin}\n{text}\n{end}"
    if begin in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + f"\n\n## {title}\n\n{block}\n"
    path.write_text(doc)


def synthetic_set(model: Path, n: int, seed: int, path: Path) -> float:
    """Make ``n`` synthetic images of ``model`` at ``path`` with ``zerop-deploy synth``, once.

    Returns the seconds the synthesis took; they are kept beside it (``.seconds``), so a later
    run reusing ``path`` reports the same time.
    """
    seconds = path.with_suffix(".seconds")
    if not (path.exists() and seconds.exists()):
        cmd = zerop_command("synth", str(model), "-n", str(n), "-o", str(path), "--seed", str(seed))
        wall, _, _ = run_command(cmd)
        seconds.write_text(f"{wall:.1f}\n")
    return float(seconds.read_text())
