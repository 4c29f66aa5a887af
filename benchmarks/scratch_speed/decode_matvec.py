"""scratch: decode matvec GB/s of one or more builds of _pq, side by side in one
process (A/B on a shared machine), gemm pointers timed from C, thread CPU time.

    python benchmarks/scratch_speed/decode_matvec.py MODE A.so[,B.so...] VARIANT TYPES SHAPES
    MODE: hot     - every row aliases row 0 (row stride 0): the compute ceiling
          cold    - ~96 MB of copies of the matrix, called in address order
          scatter - the same copies called in a scattered order (stride 7), as a
                    decode step meets its matrices (tensor order != use order)
    e.g.  ... scatter pyllama_q/_pq.abi3.so,/tmp/old.so avx512vnni Q4_0,F16 576x576,1536x576
"""
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from pyllama_q._pq import ffi, lib  # noqa: E402  (quantizing only)

ACT = {"Q4_0": "Q8_0", "Q4_1": "Q8_1", "Q8_0": "Q8_0", "F16": "F32", "F32": "F32", "BF16": "F32"}
GEMM_OFFSET = 8 + 8 * 32  # pq_kernels: name, quantize_act[32], then gemm[32]


def timer():
    out = os.path.join(tempfile.mkdtemp(), "matvec_timer.so")
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", out, os.path.join(HERE, "matvec_timer.c")],
                   check=True)
    t = ctypes.CDLL(out)
    t.run_many.restype = ctypes.c_double
    t.run_many.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_size_t,
                           ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                           ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    return t


def quantized(name, a):
    if name == "F32":
        return np.ascontiguousarray(a).view(np.uint8)
    pt = getattr(lib, "PQ_TYPE_" + name)
    rb = a.shape[1] // lib.pq_type_block_size(pt) * lib.pq_type_block_bytes(pt)
    out = np.zeros((a.shape[0], rb), np.uint8)
    assert lib.pq_quantize(pt, ffi.cast("float *", a.ctypes.data), ffi.cast("void *", out.ctypes.data),
                           *a.shape) == 0
    return out


def main():
    mode, paths, variant, types, shapes = sys.argv[1], sys.argv[2].split(","), sys.argv[3], \
        sys.argv[4].split(","), [tuple(map(int, s.split("x"))) for s in sys.argv[5].split(",")]
    t = timer()
    tables = []
    for p in paths:
        get = getattr(ctypes.CDLL(os.path.abspath(p)), "pq_kernels_" + variant)
        get.restype = ctypes.c_void_p
        tables.append(get())
    rng = np.random.default_rng(0)
    print(f"{mode}, {variant}, GB/s of weights per build: {' | '.join(paths)}")
    for rows, cols in shapes:
        for name in types:
            pt = getattr(lib, "PQ_TYPE_" + name)
            one = quantized(name, rng.standard_normal((rows, cols)).astype(np.float32))
            nmat = 1 if mode == "hot" else max(4, int(96e6 / one.nbytes))
            W = np.tile(one.reshape(-1), nmat)
            X = quantized(ACT[name], rng.standard_normal((1, cols)).astype(np.float32))
            Y = np.empty(rows, np.float32)
            ws = 0 if mode == "hot" else one.shape[1]
            stride = 7 if mode == "scatter" and nmat % 7 else 1
            rounds = max(3, int(4e7 / one.nbytes)) if mode == "hot" else 2
            best = [1e9] * len(tables)
            for _ in range(3):  # interleaved, best of all
                for i, tab in enumerate(tables):
                    fp = ctypes.c_void_p.from_address(tab + GEMM_OFFSET + 8 * pt).value
                    best[i] = min(best[i], t.run_many(fp, cols, W.ctypes.data, ws, one.nbytes, nmat, stride,
                                                      X.ctypes.data, X.nbytes, Y.ctypes.data, rows, rounds))
            print(f"{name:5s} {rows}x{cols} ({one.nbytes / 1e6:.2f} MB x {nmat}): "
                  + "  ".join(f"{one.nbytes / b / 1e9:6.1f}" for b in best), flush=True)


if __name__ == "__main__":
    main()
