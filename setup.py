"""Build hook for the optional C extension ``cipher._native``; metadata is in pyproject.toml.

The extension is optional: without a C compiler (or Python headers) the install still
succeeds and the cipher runs on its numpy reference (``cipher/_reference.py``), which says
so once per process. The logistic maps must be evaluated with exact IEEE-754 doubles, so
floating-point contraction (FMA) and fast-math stay off. The vector kernels enable their
instruction sets per function (``target`` attributes) and are chosen at run time, so the
build needs no ``-march`` and runs on any CPU of its architecture.
"""

from __future__ import annotations

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

UNIX_FLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing"]
MSVC_FLAGS = ["/O2", "/fp:precise"]  # /fp:precise does not contract into FMA (VS 2022+)
# Every file is built everywhere; a kernel for another architecture compiles to nothing.
SOURCES = [
    "cipher/csrc/module.c",
    "cipher/csrc/dicomwalk.c",
    "cipher/csrc/sf_core.c",
    "cipher/csrc/sf_maps.c",
    "cipher/csrc/k_table.c",
    "cipher/csrc/k_aesni_sse.c",
    "cipher/csrc/k_aesni_avx2.c",
    "cipher/csrc/k_vaes_avx2.c",
    "cipher/csrc/k_gfni_avx2.c",
    "cipher/csrc/k_gfni_avx512.c",
    "cipher/csrc/k_neon.c",
]
HEADERS = ["cipher/csrc/dicomwalk.h", "cipher/csrc/sf_core.h", "cipher/csrc/rowloop.h", "cipher/csrc/k_aesni.h", "cipher/csrc/k_gfni.h"]


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        flags = MSVC_FLAGS if self.compiler.compiler_type == "msvc" else UNIX_FLAGS
        for ext in self.extensions:
            ext.extra_compile_args = list(flags)
        super().build_extensions()


setup(
    ext_modules=[Extension("cipher._native", sources=SOURCES, depends=HEADERS, optional=True)],
    cmdclass={"build_ext": BuildExt},
)
