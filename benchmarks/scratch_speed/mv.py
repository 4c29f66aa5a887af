"""scratch: 1-thread matvec GB/s, thread CPU time, best of reps."""
import sys, time, os
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks.bench_kernels import weights, matmul_fn
from pyllama_q._pq import ffi, lib
T = {"Q4_0": lib.PQ_TYPE_Q4_0, "Q4_1": lib.PQ_TYPE_Q4_1, "Q8_0": lib.PQ_TYPE_Q8_0, "F16": lib.PQ_TYPE_F16}
rng = np.random.default_rng(0)
v = sys.argv[1] if len(sys.argv) > 1 else "avx512vnni"
for rows, cols in [(49152, 576), (16384, 4096), (1536, 576)][:int(os.environ.get("NSH", "3"))]:
    for name in ["Q4_0", "Q4_1", "Q8_0"]:
        W = weights(T[name], rows, cols, rng)
        X = rng.standard_normal((1, cols)).astype(np.float32); Y = np.empty((1, rows), np.float32)
        fn = matmul_fn(v, T[name], W, rows, cols, X, Y)
        fn()
        reps = max(5, int(2e8 / W.nbytes))
        ts = []
        for _ in range(reps):
            t0 = time.thread_time(); fn(); ts.append(time.thread_time() - t0)
        print(f"{v} {name} {rows}x{cols}: {W.nbytes/min(ts)/1e9:6.1f} GB/s best, {W.nbytes/np.median(ts)/1e9:6.1f} median ({W.nbytes/1e6:.1f} MB)")
