"""Build hook for the optional C extension ``cipher._native``; metadata is in pyproject.toml.

The extension is optional: without a C compiler (or Python headers) the install still
succeeds and the cipher falls back to numba or numpy. The logistic maps must be evaluated
with exact IEEE-754 doubles, so floating-point contraction (FMA) and fast-math stay off.
"""

from __future__ import annotations

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

UNIX_FLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing"]
MSVC_FLAGS = ["/O2", "/fp:precise"]  # /fp:precise does not contract into FMA (VS 2022+)


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        flags = MSVC_FLAGS if self.compiler.compiler_type == "msvc" else UNIX_FLAGS
        for ext in self.extensions:
            ext.extra_compile_args = list(flags)
        super().build_extensions()


setup(
    ext_modules=[Extension("cipher._native", sources=["cipher/_native.c"], optional=True)],
    cmdclass={"build_ext": BuildExt},
)
