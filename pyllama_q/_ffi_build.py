"""cffi (API mode) builder for pyllama_q._pq: every C file in csrc/, one extension.

The cdef is csrc/pq.h itself with preprocessor lines dropped, so the C header
is the single source of truth for the API.
"""
import glob
import os
import platform

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")


def _cdef_text():
    with open(os.path.join(CSRC, "pq.h")) as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


def _compile_args():
    args = ["-O3", "-std=gnu11", "-pthread", "-fno-strict-aliasing", "-Wall",
            "-Wno-unused-function"]
    # No -march: ISA-specific code opts in per function with target
    # attributes, and dispatch.c picks a variant from the CPU at run time.
    if os.environ.get("PQ_DEBUG_BUILD"):
        args = [a if a != "-O3" else "-O0" for a in args] + ["-g"]
    return args


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "pyllama_q._pq",
    '#include "pq.h"\n',
    sources=sorted(os.path.relpath(p) for p in glob.glob(os.path.join(CSRC, "*.c"))),
    include_dirs=[os.path.relpath(CSRC)],
    extra_compile_args=_compile_args(),
    extra_link_args=["-pthread"] + (["-lm"] if platform.system() != "Darwin" else []),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
