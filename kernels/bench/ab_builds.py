"""A/B of two versions of kernels/core in one process: a git revision against the working tree.

On a shared machine two runs minutes apart can differ by 30 %, so a kernel change is judged by
timing both builds side by side, on the same weights, in alternating rounds, and taking the median
of the per-round ratios. Both versions are compiled into one binary (the old one with its
namespace renamed, running on the working tree's thread pool: see SHIM); the C++ entry
`matmul_int4_f32` is timed directly, without Python.

    python kernels/bench/ab_builds.py --base HEAD~1 --threads 2 --k 4096 --n 4096 --group 0 128
    python kernels/bench/ab_builds.py --base HEAD~1 --copies 16   # weights from DRAM

Prints, per case: the median and best us per call of each build and the median paired speedup
(old / new: above 1 means the working tree is faster). Needs g++ and git.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["-O3", "-ffp-contract=off", "-std=c++17", "-pthread"]  # as setup.py builds the module

DRIVER = r"""
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>
#define DECLARE(NS)                                                                        \
  namespace NS {                                                                           \
  enum class Impl : int { kAuto = 0 };                                                     \
  void matmul_int4_f32(const float*, int64_t, int64_t, const uint8_t*, int64_t,            \
                       const float*, int64_t, const float*, float*, int, Impl);            \
  }
DECLARE(zerop)
DECLARE(zold)
static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
int main(int argc, char** argv) {
  const int th = std::atoi(argv[1]);
  const int64_t m = std::atoll(argv[2]), k = std::atoll(argv[3]), n = std::atoll(argv[4]);
  const int64_t g = std::atoll(argv[5]);
  const int rounds = std::atoi(argv[6]);
  const int64_t copies = std::atoll(argv[7]);  // > 1: rotate over copies (cold caches)
  std::mt19937 rng(1);
  std::vector<float> x(m * k);
  for (auto& v : x) v = static_cast<float>(static_cast<int>(rng() % 2001) - 1000) / 1000.0f;
  // numpy places large arrays 16 bytes past a page boundary: time the weights there too
  const int64_t bytes = n * ((k + 1) / 2), stride = (bytes + 4095) / 4096 * 4096;
  std::vector<uint8_t> buf(static_cast<size_t>(copies * stride + 4096 + 16));
  uint8_t* w0 = buf.data() + ((4096 - reinterpret_cast<uintptr_t>(buf.data()) % 4096) % 4096) + 16;
  for (int64_t i = 0; i < bytes; ++i) w0[i] = static_cast<uint8_t>(rng());
  for (int64_t c = 1; c < copies; ++c) std::copy(w0, w0 + bytes, w0 + c * stride);
  int64_t next = 0;
  const uint8_t* w = w0;
  auto rotate = [&] { w = w0 + (next = (next + 1) % copies) * stride; };
  const int64_t groups = g ? (k + g - 1) / g : 1;
  std::vector<float> s(groups * n), y_new(m * n), y_old(m * n);
  for (auto& v : s) v = 0.5f + static_cast<float>(rng() % 1000) / 1000.0f;
  auto run_new = [&] {
    rotate();
    zerop::matmul_int4_f32(x.data(), m, k, w, n, s.data(), g, nullptr, y_new.data(), th,
                           zerop::Impl::kAuto);
  };
  auto run_old = [&] {
    rotate();
    zold::matmul_int4_f32(x.data(), m, k, w, n, s.data(), g, nullptr, y_old.data(), th,
                          zold::Impl::kAuto);
  };
  run_new();
  run_old();
  const bool same = y_new == y_old;
  const int64_t calls = std::max<int64_t>(5, 20000000 / std::max<int64_t>(1, m * n * k / 2));
  std::vector<double> t_new, t_old, ratio;
  for (int r = 0; r < rounds; ++r) {
    double t0 = now();
    for (int64_t i = 0; i < calls; ++i) run_old();
    t_old.push_back((now() - t0) / calls * 1e6);
    t0 = now();
    for (int64_t i = 0; i < calls; ++i) run_new();
    t_new.push_back((now() - t0) / calls * 1e6);
    ratio.push_back(t_old.back() / t_new.back());
  }
  std::printf(
      "threads=%d M=%lld K=%lld N=%lld group=%lld copies=%lld: base %.1f us (best %.1f), "
      "working tree %.1f us (best %.1f), median paired speedup %.3fx%s\n",
      th, static_cast<long long>(m), static_cast<long long>(k), static_cast<long long>(n),
      static_cast<long long>(g), static_cast<long long>(copies), median(t_old),
      *std::min_element(t_old.begin(), t_old.end()), median(t_new),
      *std::min_element(t_new.begin(), t_new.end()), median(ratio),
      same ? "" : "  OUTPUTS DIFFER");
  return same ? 0 : 1;
}
"""

# The base build runs on the working tree's thread pool: two pools in one process disturb each
# other (identical code measured 1.2x apart), and in two processes the two 8 MiB weight copies
# compete for the L3 (identical code measured 0.78x apart). So a change to thread_pool.cpp itself
# is not what this tool compares.
SHIM = r"""
#include <cstdint>
#include <functional>
namespace zerop {
int resolve_threads(int threads);
namespace detail {
void parallel_for(int64_t n_tasks, int threads, const std::function<void(int64_t)>& fn);
}
}  // namespace zerop
namespace zold {
int resolve_threads(int threads) { return zerop::resolve_threads(threads); }
namespace detail {
void parallel_for(int64_t n_tasks, int threads, const std::function<void(int64_t)>& fn) {
  zerop::detail::parallel_for(n_tasks, threads, fn);
}
}  // namespace detail
}  // namespace zold
"""


def _compile(src_dir: Path, out_dir: Path, extra: list[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(src_dir.glob("*.cpp"))

    def one(src: Path) -> Path:
        obj = out_dir / (src.stem + ".o")
        cmd = ["g++", *FLAGS, *extra, f"-I{src_dir}", "-c", str(src), "-o", str(obj)]
        subprocess.run(cmd, check=True)
        return obj

    with ThreadPoolExecutor() as pool:
        return list(pool.map(one, sources))


def main() -> None:
    """Build both versions into one binary and time them case by case."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD", help="git revision of the old kernels/core")
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--group", type=int, nargs="+", default=[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument(
        "--copies", type=int, default=1, help="rotate over this many weight copies (16: cold)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        old_src, new_src = tmp_path / "old", ROOT / "kernels" / "core"
        old_src.mkdir()
        files = subprocess.run(
            ["git", "-C", str(ROOT), "ls-tree", "--name-only", args.base, "kernels/core/"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for f in files:
            text = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{args.base}:{f}"],
                check=True,
                capture_output=True,
            ).stdout
            (old_src / Path(f).name).write_bytes(text)
        (old_src / "thread_pool.cpp").unlink()
        objs = _compile(old_src, tmp_path / "obj_old", ["-Dzerop=zold"])
        objs += _compile(new_src, tmp_path / "obj_new", [])
        shim = tmp_path / "shim" / "shim.cpp"  # compiled without the renaming
        shim.parent.mkdir()
        shim.write_text(SHIM)
        objs += _compile(shim.parent, tmp_path / "obj_shim", [])
        driver = tmp_path / "driver.cpp"
        driver.write_text(DRIVER)
        exe = tmp_path / "ab"
        subprocess.run(["g++", *FLAGS, str(driver), *map(str, objs), "-o", str(exe)], check=True)
        failed = False
        for g in args.group:
            for t in args.threads:
                cmd = [str(exe), str(t), str(args.m), str(args.k), str(args.n), str(g)]
                res = subprocess.run(
                    [*cmd, str(args.rounds), str(args.copies)], capture_output=True, text=True
                )
                print(res.stdout.strip() or res.stderr.strip(), flush=True)
                failed |= res.returncode != 0
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
