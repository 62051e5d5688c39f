"""Build the Cython core, fastproxy._core, as one compilation unit.

Switches (environment variables):
  FASTPROXY_SANITIZE=1   build with AddressSanitizer and UBSan (-O1 -g); run the
                         tests with LD_PRELOAD=$(gcc -print-file-name=libasan.so)
  FASTPROXY_DEBUG=1      -O0 -g and Cython's own bounds checks back on
"""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

SANITIZE = os.environ.get("FASTPROXY_SANITIZE", "") not in ("", "0")
DEBUG = os.environ.get("FASTPROXY_DEBUG", "") not in ("", "0")

if sys.platform == "win32":
    compile_args = ["/O2"]
    link_args: list[str] = []
else:
    compile_args = ["-O3", "-fno-strict-aliasing", "-Wno-unused-function"]
    link_args = []
    if SANITIZE:
        flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        compile_args = ["-O1", "-g", *flags, "-Wno-unused-function"]
        link_args = flags
    elif DEBUG:
        compile_args = ["-O0", "-g", "-Wno-unused-function"]

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
    "freethreading_compatible": True,
}

extensions = [
    Extension(
        "fastproxy._core",
        ["src/fastproxy/_core.pyx"],
        include_dirs=["src/fastproxy/_cy"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
