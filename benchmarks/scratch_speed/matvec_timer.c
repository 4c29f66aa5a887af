/* scratch: time a kernel table's gemm pointer from C (no Python per call).
 * Built on demand by decode_matvec.py: cc -O2 -shared -fPIC. */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef void (*gemm_fn)(int64_t, const void *, size_t, const void *, size_t, int64_t, float *,
                        int64_t, int64_t, int64_t);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Seconds per matvec, best of `rounds` passes over nmat matrices mat_bytes
 * apart, visited in order k*stride mod nmat (stride 1: contiguous, like one
 * long tensor; another stride scatters them like a decode step's). */
double run_many(gemm_fn f, int64_t cols, const char *W, size_t ws, size_t mat_bytes, int nmat,
                int stride, const void *X, size_t xs, float *Y, int64_t rows, int rounds) {
    double best = 1e9;
    for (int k = 0; k < rounds; k++) {
        const double t0 = now();
        for (int i = 0; i < nmat; i++)
            f(cols, W + (size_t)(((int64_t)i * stride) % nmat) * mat_bytes, ws, X, xs, 1, Y, rows, 0, rows);
        const double dt = (now() - t0) / nmat;
        if (dt < best) best = dt;
    }
    return best;
}
