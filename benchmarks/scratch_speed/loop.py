"""scratch: fixed loop of one matvec for perf stat (type rows cols iters)."""
import sys, os
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks.bench_kernels import weights, matmul_fn
from pyllama_q._pq import lib
t = getattr(lib, "PQ_TYPE_" + sys.argv[1]); rows, cols, it = map(int, sys.argv[2:5])
rng = np.random.default_rng(0)
W = weights(t, rows, cols, rng); X = rng.standard_normal((1, cols)).astype(np.float32); Y = np.empty((1, rows), np.float32)
fn = matmul_fn("avx512vnni", t, W, rows, cols, X, Y)
for _ in range(it): fn()
