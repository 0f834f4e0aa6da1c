"""Cycle counts of the VNNI GEMV inner step, alone in L1 (cited in docs/experiments.md, "Kernels").

Generates, compiles (g++) and runs a small C++ program that times, with no memory traffic beyond
L1: the throughput of `vpdpbusd` alone, and eight steps of the int4 GEMV loop (eight weight rows,
one 32-byte chunk each) in the instruction forms that were compared, with the eight rows 64 bytes
apart (distinct cache sets) or 2048 bytes apart (K = 4096: four rows share address bits 0-11).
Cycles come from a chain of dependent adds (one per cycle) timed the same way.

    python kernels/bench/step_probe.py
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

FORMS = {
    # two loads of the same bytes, low nibble (v & 0xF) ^ 8, high (v & 0xF0) ^ 0x80 in place
    "2 loads + 2 vpternlogd + 2 vpdpbusd": (
        "vmovdqu32 {w}(%0), %%ymm24\\n\\tvmovdqu32 {w}(%0), %%ymm25\\n\\t"
        "vpternlogd $0x6a, %%ymm29, %%ymm30, %%ymm24\\n\\t"
        "vpternlogd $0x6a, %%ymm28, %%ymm31, %%ymm25\\n\\t"
    ),
    # one load and a register copy (the form kernels/core/vnni.cpp uses)
    "1 load + copy + 2 vpternlogd + 2 vpdpbusd": (
        "vmovdqu32 {w}(%0), %%ymm25\\n\\tvmovdqa32 %%ymm25, %%ymm24\\n\\t"
        "vpternlogd $0x6a, %%ymm29, %%ymm30, %%ymm24\\n\\t"
        "vpternlogd $0x6a, %%ymm28, %%ymm31, %%ymm25\\n\\t"
    ),
    # the grouped path's form: high nibbles shifted down
    "1 load + shift + 2 vpternlogd + 2 vpdpbusd": (
        "vmovdqu32 {w}(%0), %%ymm24\\n\\tvpsrlw $4, %%ymm24, %%ymm25\\n\\t"
        "vpternlogd $0x6a, %%ymm29, %%ymm30, %%ymm24\\n\\t"
        "vpternlogd $0x6a, %%ymm29, %%ymm30, %%ymm25\\n\\t"
    ),
}
DOTS = "vpdpbusd %%ymm1, %%ymm24, %%ymm{l}\\n\\tvpdpbusd %%ymm0, %%ymm25, %%ymm{h}\\n\\t"
CLOBBER = ",".join(f'"xmm{i}"' for i in [*range(2, 18), 24, 25]) + ',"memory"'

HEAD = r"""
#include <chrono>
#include <cstdint>
#include <cstdio>
static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
alignas(4096) static uint8_t buf[1 << 15];
int main() {
  const long n = 20000000;
  const uint8_t* p = buf;
  double t0 = now();
  long x = 0;
  for (long i = 0; i < n; ++i)
    asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  const double hz = 4.0 * n / (now() - t0);
  std::printf("clock (dependent adds): %.2f GHz\n", hz / 1e9);
"""


def _timed(name: str, body: str, value: str, unit: str) -> str:
    """C++ block timing `body` (best of 3 x n runs) and printing `value` (of best, n, hz)."""
    return f"""  {{
    double best = 1e9;
    for (int r = 0; r < 3; ++r) {{
      const double t = now();
      for (long i = 0; i < n; ++i) asm volatile("{body}" :: "r"(p) : {CLOBBER});
      if (now() - t < best) best = now() - t;
    }}
    std::printf("%-58s %6.2f {unit}\\n", "{name}", {value});
  }}
"""


def source() -> str:
    """The probe program."""
    parts = [HEAD]
    dots = "".join(f"vpdpbusd %%ymm0, %%ymm1, %%ymm{r}\\n\\t" for r in range(2, 18))
    parts.append(
        _timed("vpdpbusd alone (16 accumulators)", dots, "16.0 * n / (best * hz)", "per cycle")
    )
    for stride in (64, 2048):
        for name, form in FORMS.items():
            body = "".join(
                form.format(w=j * stride) + DOTS.format(l=2 + j, h=10 + j) for j in range(8)
            )
            label = f"{name}, rows {stride} B apart"
            parts.append(_timed(label, body, "best * hz / n", "cycles per 8 steps"))
    parts.append("  return 0;\n}\n")
    return "".join(parts)


def main() -> None:
    """Compile and run the probe."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "probe.cpp", Path(tmp) / "probe"
        src.write_text(source())
        flags = ["-O2", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512vnni"]
        subprocess.run(["g++", *flags, str(src), "-o", str(exe)], check=True)
        subprocess.run([str(exe)], check=True)


if __name__ == "__main__":
    main()
