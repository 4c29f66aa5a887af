"""Kernel benchmark (not a test): single-thread matvec and GEMM speed of every
kernel variant this CPU can run.

- matvec (n_tok = 1, decode): GB/s of weights read, next to a measured read
  bandwidth peer (the best variant's f32 dot over two 64 MiB arrays, a plain
  streaming read loop in C), and the ratio kernel / peer.
- GEMM (n_tok = 64..512, prompt batches): GFLOP/s (2 * rows * cols * n_tok).

Every number is the median of --reps runs (--stat best: the fastest run),
each through pq_kernel_matmul (which includes quantizing the activations, as
the forward pass does). Runs are timed by this thread's CPU time by default
(--clock cpu): the kernels are single-threaded, so on an idle machine it
equals wall time, and on a shared one it leaves out time-slices lost to other
jobs (cache contention still counts); --clock wall times the wall clock.

    .venv/bin/python benchmarks/bench_kernels.py [--rows 4096 --cols 4096 --reps 7]
    .venv/bin/python -m benchmarks.bench_kernels --gemm-only --types Q4_0 Q8_0 \
        --tokens 16 512 --variants avx2 avx512vnni --stat best   # prompt GEMMs only

On x86, n_tok >= 4 takes the row-interleaved prompt path
(csrc/x86_avx512_prefill.c, csrc/x86_avx2_prefill.c); n_tok < 4 the older tiles.
"""
import argparse
import statistics
import time

import numpy as np

from pyllama_q._pq import ffi, lib

WTYPES = [("Q4_0", lib.PQ_TYPE_Q4_0), ("Q4_1", lib.PQ_TYPE_Q4_1), ("Q8_0", lib.PQ_TYPE_Q8_0),
          ("F16", lib.PQ_TYPE_F16), ("BF16", lib.PQ_TYPE_BF16), ("F32", lib.PQ_TYPE_F32)]


def weights(ptype, rows, cols, rng):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    rb = cols // lib.pq_type_block_size(ptype) * lib.pq_type_block_bytes(ptype)
    W = np.zeros((rows, rb), dtype=np.uint8)
    st = lib.pq_quantize(ptype, ffi.cast("float *", w.ctypes.data), ffi.cast("void *", W.ctypes.data),
                         rows, cols)
    assert st == lib.PQ_OK
    return W


STAT = statistics.median
CLOCK = time.thread_time


def median_time(fn, reps):
    fn()  # warm caches and page in
    ts = []
    for _ in range(reps):
        t0 = CLOCK()
        fn()
        ts.append(CLOCK() - t0)
    return STAT(ts)


def matmul_fn(variant, ptype, W, rows, cols, X, Y):
    args = (variant.encode(), ptype, ffi.cast("void *", W.ctypes.data), rows, cols,
            ffi.cast("float *", X.ctypes.data), X.shape[0], ffi.cast("float *", Y.ctypes.data))

    def run():
        st = lib.pq_kernel_matmul(*args)
        assert st == lib.PQ_OK

    return run


def read_bandwidth(variant, reps):
    n = 16 << 20  # 2 x 64 MiB of f32
    a = np.ones(n, dtype=np.float32)
    b = np.ones(n, dtype=np.float32)
    out = ffi.new("float *")
    pa, pb = ffi.cast("void *", a.ctypes.data), ffi.cast("float *", b.ctypes.data)
    dt = median_time(lambda: lib.pq_kernel_dot(variant.encode(), lib.PQ_TYPE_F32, pa, pb, n, out), reps)
    return 2 * n * 4 / dt / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--gemm-size", type=int, default=2048, help="rows = cols of the GEMM matrices")
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--types", nargs="+", default=[n for n, _ in WTYPES])
    ap.add_argument("--scalar", action="store_true", help="include the scalar variant in GEMM runs")
    ap.add_argument("--stat", choices=["median", "best"], default="median")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--gemm-only", action="store_true", help="skip the matvec table and the bandwidth peer")
    ap.add_argument("--variants", nargs="+", help="only these kernel variants (default: all this CPU runs)")
    args = ap.parse_args()
    global STAT, CLOCK
    STAT = statistics.median if args.stat == "median" else min
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter

    variants = ffi.string(lib.pq_kernels_available()).decode().split()
    if args.variants:
        variants = [v for v in variants if v in args.variants]
    best = ffi.string(lib.pq_kernels_active()).decode()
    print(f"cpu features: {ffi.string(lib.pq_cpu_features()).decode()}")
    print(f"variants: {' '.join(variants)}; active (chosen at start-up): {best}")
    print(f"timing: {args.stat} of {args.reps} runs, {args.clock} clock, one thread")
    rng = np.random.default_rng(0)
    types = [(n, t) for n, t in WTYPES if n in args.types]
    if not args.gemm_only:
        matvec_table(args, variants, best, types, rng)
    gemm_table(args, variants, types, rng)


def matvec_table(args, variants, best, types, rng):
    peer = read_bandwidth(best, args.reps)
    print(f"read bandwidth peer (f32 dot over 2 x 64 MiB, {best}): {peer:.1f} GB/s\n")
    print(f"matvec {args.rows}x{args.cols}, n_tok=1: GB/s of weights (ratio to peer)")
    print(f"{'type':6s}" + "".join(f"{v:>20s}" for v in variants))
    for name, ptype in types:
        W = weights(ptype, args.rows, args.cols, rng)
        X = rng.standard_normal((1, args.cols)).astype(np.float32)
        Y = np.empty((1, args.rows), dtype=np.float32)
        cells = []
        for v in variants:
            reps = max(3, args.reps // 2) if v == "scalar" else args.reps
            dt = median_time(matmul_fn(v, ptype, W, args.rows, args.cols, X, Y), reps)
            gbs = W.nbytes / dt / 1e9
            cells.append(f"{gbs:8.1f} ({gbs / peer:4.2f})")
        print(f"{name:6s}" + "".join(f"{c:>20s}" for c in cells))
    print()


def gemm_table(args, variants, types, rng):
    n = args.gemm_size
    gvars = [v for v in variants if v != "scalar" or args.scalar]
    print(f"GEMM {n}x{n} @ (n_tok, {n}): GFLOP/s")
    print(f"{'type':6s}{'n_tok':>6s}" + "".join(f"{v:>12s}" for v in gvars))
    for name, ptype in types:
        W = weights(ptype, n, n, rng)
        for nt in args.tokens:
            X = rng.standard_normal((nt, n)).astype(np.float32)
            Y = np.empty((nt, n), dtype=np.float32)
            cells = []
            for v in gvars:
                dt = median_time(matmul_fn(v, ptype, W, n, n, X, Y), max(3, args.reps // 2))
                cells.append(f"{2.0 * n * n * nt / dt / 1e9:12.1f}")
            print(f"{name:6s}{nt:6d}" + "".join(cells))


if __name__ == "__main__":
    main()
