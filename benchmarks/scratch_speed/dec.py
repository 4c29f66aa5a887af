"""scratch: 1-thread decode CPU ms/token (process CPU time) via pq_ctx_bench_decode."""
import sys, time, os
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks.engines import PyllamaQ
from benchmarks.make_models import ensure
name = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
thr = int(sys.argv[3]) if len(sys.argv) > 3 else 1
e = PyllamaQ(ensure(name, quiet=True), thr, 512)
e.decode_c(1, 8, time.process_time)
best = 1e9; walls = []
for r in range(3):
    t0 = time.process_time(); w0 = time.perf_counter()
    dt, toks = e.decode_c(1, n, time.process_time)
    w = time.perf_counter() - w0
    best = min(best, dt); walls.append(w/n*1e3)
    print(f"{name} thr={thr}: cpu {dt/n*1e3:.2f} ms/tok  wall {w/n*1e3:.2f} ms/tok  toks[:6]={toks[:6]}")
print(f"best cpu {best/n*1e3:.2f} ms/tok; walls " + " ".join(f"{x:.1f}" for x in walls))
