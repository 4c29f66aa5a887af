/* bench_attn.c: single-thread speed of the attention kernels (a benchmark,
 * not a test), every variant this CPU runs, f16 cache.
 *
 * - decode: one token of g query heads against n_keys cached positions,
 *   three ways: the per-position path (dot_f16 per key, axpy_f16 per value),
 *   the blocked attn_f16 kernel with g lanes, and attn_dec_f16.
 * - prefill: the causal triangle of n_keys tokens for one kv head in calls
 *   of 64/g tokens (as forward.c deals prefill items), per-position path vs
 *   attn_f16.
 * Prints ns per (query head, key) pair, the best of --reps runs by thread
 * CPU time.
 *
 *   gcc -O3 -std=gnu11 -pthread -Icsrc -o /tmp/bench_attn benchmarks/bench_attn.c \
 *       csrc/quants.c csrc/dispatch.c csrc/status.c csrc/x86_avx2.c csrc/x86_avx512.c \
 *       csrc/arm_neon.c -lm && /tmp/bench_attn [reps]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#include "pq.h"
#include "quants.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* forward.c's decode path for one token of g heads (heads hd apart in q). */
static void per_position(const pq_kernels *K, int64_t hd, const float *q, int g, int64_t n_keys,
                         const uint16_t *kc, const uint16_t *vc, int64_t kv_ld, float scale,
                         float *out, float *att) {
    for (int h = 0; h < g; h++) {
        float mx = -INFINITY, sum = 0;
        for (int64_t p = 0; p < n_keys; p++) {
            att[p] = K->dot_f16(kc + p * kv_ld, q + h * hd, hd) * scale;
            if (att[p] > mx) mx = att[p];
        }
        for (int64_t p = 0; p < n_keys; p++) sum += att[p] = expf(att[p] - mx);
        memset(out + h * hd, 0, sizeof(float) * hd);
        for (int64_t p = 0; p < n_keys; p++) K->axpy_f16(att[p] / sum, vc + p * kv_ld, out + h * hd, hd);
    }
}

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 5;
    const char *variants[] = {"scalar", "avx2", "avx512", "avx512vnni", "neon"};
    static const int shapes[][3] = {{64, 3, 1024}, {64, 8, 1024}, {128, 1, 1024}, {64, 3, 256}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t hd = shapes[s][0], n_keys = shapes[s][2];
        const int g = shapes[s][1];
        const int64_t kv_ld = hd, q_ld = g * hd;
        uint16_t *kc = malloc(2 * n_keys * kv_ld), *vc = malloc(2 * n_keys * kv_ld);
        float *q = malloc(sizeof(float) * n_keys * q_ld), *o = malloc(sizeof(float) * n_keys * q_ld);
        float *tmp = malloc(sizeof(float) * n_keys * kv_ld);
        float *scratch = aligned_alloc(64, pq_attn_scratch_floats(n_keys, hd) * sizeof(float) + 64);
        srand(1);
        for (int64_t i = 0; i < n_keys * kv_ld; i++) tmp[i] = (float)rand() / RAND_MAX - 0.5f;
        pq_quantize(PQ_TYPE_F16, tmp, kc, 1, n_keys * kv_ld);
        for (int64_t i = 0; i < n_keys * kv_ld; i++) tmp[i] = (float)rand() / RAND_MAX - 0.5f;
        pq_quantize(PQ_TYPE_F16, tmp, vc, 1, n_keys * kv_ld);
        for (int64_t i = 0; i < n_keys * q_ld; i++) q[i] = (float)rand() / RAND_MAX - 0.5f;
        const float scale = 1.0f / sqrtf((float)hd);
        const int64_t bt = g < PQ_ATTN_LANES_MAX ? PQ_ATTN_LANES_MAX / g : 1;
        const double pairs_dec = (double)g * n_keys, pairs_pp = (double)g * n_keys * (n_keys + 1) / 2;
        printf("hd=%lld g=%d n_keys=%lld (ns per (query head, key))\n", (long long)hd, g, (long long)n_keys);
        for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
            if (pq_kernels_select(variants[v]) != PQ_OK) continue;
            const pq_kernels *K = pq_kernels_get();
            double best[5] = {1e30, 1e30, 1e30, 1e30, 1e30};
            for (int r = 0; r < reps; r++) {
                double t0 = now();
                per_position(K, hd, q, g, n_keys, kc, vc, kv_ld, scale, o, scratch);
                double t1 = now();
                K->attn_f16(hd, q, q_ld, g, 1, n_keys - 1, kc, vc, kv_ld, scale, o, q_ld, scratch);
                double t2 = now();
                if (n_keys <= 256) { /* the per-position prefill is slow: small case only */
                    for (int64_t t = 0; t < n_keys; t++)
                        per_position(K, hd, q + t * q_ld, g, t + 1, kc, vc, kv_ld, scale, o + t * q_ld, scratch);
                }
                double t3 = now();
                for (int64_t t0b = 0; t0b < n_keys; t0b += bt)
                    K->attn_f16(hd, q + t0b * q_ld, q_ld, g, n_keys - t0b < bt ? n_keys - t0b : bt, t0b,
                                kc, vc, kv_ld, scale, o + t0b * q_ld, q_ld, scratch);
                double t4 = now();
                if (K->attn_dec_f16)
                    K->attn_dec_f16(hd, q, q_ld, g, 1, n_keys - 1, kc, vc, kv_ld, scale, o, q_ld, scratch);
                double t5 = now();
                double d[5] = {t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4};
                for (int i = 0; i < 5; i++) if (d[i] < best[i]) best[i] = d[i];
            }
            printf("  %-11s decode: per-position %6.2f  attn_f16 %6.2f  attn_dec_f16 %6.2f   prefill: ",
                   K->name, best[0] / pairs_dec * 1e9, best[1] / pairs_dec * 1e9, best[4] / pairs_dec * 1e9);
            if (n_keys <= 256) printf("per-position %6.2f  ", best[2] / pairs_pp * 1e9);
            printf("attn_f16 %6.2f\n", best[3] / pairs_pp * 1e9);
        }
        free(kc); free(vc); free(q); free(o); free(tmp); free(scratch);
    }
    return 0;
}
