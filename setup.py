"""Build script for the optional compiled core ``vmess._speedups`` (csrc/_speedups.pyx + the C primitives).

Metadata lives in pyproject.toml. Set ``VMESS_NO_EXTENSIONS`` to a non-empty value other than ``0`` at install
time to build no extension (the pure-Python twin ``vmess._core_py`` is then used).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

NO_EXTENSIONS = os.environ.get("VMESS_NO_EXTENSIONS", "") not in ("", "0")


def _extensions() -> list:
    if NO_EXTENSIONS:
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    if sys.platform == "win32":
        extra_compile_args = ["/O2"]
    else:
        # No -march=native: the wheel must run on any x86_64; SHA-NI is dispatched at run time (vm_sha256.c).
        extra_compile_args = ["-O3", "-fno-strict-aliasing"]
    ext = Extension(
        "vmess._speedups",
        sources=["csrc/_speedups.pyx", "csrc/vm_shake.c", "csrc/vm_sha256.c", "csrc/vm_kdf.c"],
        include_dirs=["csrc"],
        depends=["csrc/vm_shake.h", "csrc/vm_sha256.h", "csrc/vm_kdf.h"],
        extra_compile_args=extra_compile_args,
    )
    return cythonize(
        [ext],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False, "cdivision": True},
        quiet=True,
    )


setup(ext_modules=_extensions())
