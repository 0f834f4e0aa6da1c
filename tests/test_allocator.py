"""The allocator setting: big tensors freed and reallocated do not fault their pages in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_SCRIPT = """
import resource, sys, torch
from zerop_deploy.quant.memory import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory() is True
for _ in range(12):  # the first rounds grow the heap and settle where blocks go
    torch.empty(50_000_000).fill_(1.0)  # 200 MB, far above glibc's mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(50_000_000).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)
def test_reallocated_big_tensors_reuse_their_pages():
    """In a fresh process, as the command line runs: about 5 x 48,800 faults without, ~0 with."""
    default, kept = _faults("default"), _faults("kept")
    assert default > 100_000, default  # the storm the setting removes
    assert kept < default / 20, (kept, default)
