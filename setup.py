"""Build of the optional native extension ``zerop_deploy._kernels`` (the rest is in pyproject.toml).

The C++ int4 kernels are optional: when no C++17 compiler is present, or the build fails, the
install still succeeds as a pure-Python package, prints why the kernels were skipped and what to
install, and ``zerop_deploy.kernels.available()`` reports False. Set ``ZEROP_REQUIRE_KERNELS=1``
to make a failed kernel build fail the install instead (for CI and wheels).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
CORE = Path("kernels") / "core"
SOURCES = [
    str(Path("kernels") / "bindings" / "module.cpp"),
    *(
        str(CORE / name)
        for name in (
            "avx2.cpp",
            "conv.cpp",
            "depthwise.cpp",
            "lsq.cpp",
            "clamp.cpp",
            "feature_mse.cpp",
            "matmul.cpp",
            "scalar.cpp",
            "thread_pool.cpp",
            "vnni.cpp",
        )
    ),
]
HINT = (
    "install a C++17 compiler (g++ >= 9, e.g. `apt-get install g++`) and reinstall zerop-deploy "
    "(pip install --force-reinstall --no-deps .)"
)


def _skip_message(reason: str) -> str:
    bar = "*" * 78
    return (
        f"\n{bar}\nzerop-deploy: the native int4 kernels (zerop_deploy._kernels) were NOT built: "
        f"{reason}\nThe package works without them (zerop_deploy.kernels.available() is False).\n"
        f"To get them, {HINT}.\n{bar}\n"
    )


def _required() -> bool:
    return os.environ.get("ZEROP_REQUIRE_KERNELS", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """A build_ext that turns a failed kernel build into a clear message, not a failed install."""

    def run(self) -> None:
        """Build the extensions; on any failure print why and continue without them."""
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler/setup failure means "no kernels"
            self._skip(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        """Build one extension; on failure print why and continue without it."""
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    def _skip(self, exc: BaseException) -> None:
        if _required():
            raise exc
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
        sys.stderr.write(_skip_message(reason))


def _extensions() -> list:
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        if _required():
            raise
        sys.stderr.write(_skip_message("pybind11 is not installed in the build environment"))
        return []
    return [
        Pybind11Extension(
            "zerop_deploy._kernels",
            sorted(SOURCES),
            include_dirs=[str(CORE)],
            cxx_std=17,
            # No -mavx2: only the AVX2/VNNI functions carry target attributes, so the module still
            # loads on older CPUs. No FMA contraction: the float epilogue must round like numpy.
            extra_compile_args=["-O3", "-ffp-contract=off", "-pthread"],
            extra_link_args=["-pthread"],
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
