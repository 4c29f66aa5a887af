/* neon_check.c: cross-test driver for the NEON kernel table.
 *
 * Built with aarch64-linux-gnu-gcc -static together with the kernel files of
 * csrc/ and run under qemu-aarch64 by tests/neon/test_neon.py. Checks every
 * NEON gemm against the scalar twin on odd shapes (tolerance: both are
 * within (n_terms+4)*2^-23*sum|terms| of the exact value), the activation
 * quantizers byte for byte, dot/axpy and the blocked attention against float64. Prints one line per
 * failure and "ok <checks>" at the end; exit status 1 on any failure.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pq.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static double urand(void) { /* xorshift64*, uniform in [0, 1) */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545f4914f6cdd1dULL) >> 11) / 9007199254740992.0;
}
static float nrand(void) { /* roughly normal */
    return (float)((urand() + urand() + urand() + urand() - 2.0) * 1.7);
}

static int failures, checks;

static void check_gemm(int wtype, const char *name, int64_t rows, int64_t cols, int64_t n_tok) {
    const size_t wrb = pq_row_bytes(wtype, cols);
    const int at = pq_act_type(wtype);
    const size_t xrb = pq_act_row_bytes(wtype, cols);
    float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * n_tok * cols);
    float *wd = malloc(sizeof(float) * rows * cols), *xd = malloc(sizeof(float) * n_tok * cols);
    unsigned char *W = malloc(wrb * rows), *XQ = malloc(xrb * n_tok);
    float *ys = malloc(sizeof(float) * rows * n_tok), *yn = malloc(sizeof(float) * rows * n_tok);
    for (int64_t i = 0; i < rows * cols; i++) w[i] = nrand() * (i / cols == rows / 2 ? 1e-3f : 1.0f);
    for (int64_t i = 0; i < n_tok * cols; i++) x[i] = nrand() * (float)(1 + i / cols);
    pq_quantize(wtype, w, W, rows, cols);
    pq_dequantize(wtype, W, wd, rows, cols);
    pq_kernel_quantize_act("scalar", wtype, x, XQ, n_tok, cols);
    pq_dequantize(at, XQ, xd, n_tok, cols);
    for (int64_t i = 0; i < rows * n_tok; i++) ys[i] = yn[i] = NAN;
    pq_kernel_matmul("scalar", wtype, W, rows, cols, x, n_tok, ys);
    pq_kernel_matmul("neon", wtype, W, rows, cols, x, n_tok, yn);
    const int64_t n_terms = (wtype == PQ_TYPE_F32 || wtype == PQ_TYPE_F16 || wtype == PQ_TYPE_BF16) ? cols : cols / 32;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < rows; r++) {
            double abs_sum = 0.0;
            for (int64_t j = 0; j < cols; j++) abs_sum += fabs((double)wd[r * cols + j] * xd[t * cols + j]);
            /* Q4_1's s term is fp16-rounded in both; they share it, so no extra */
            const double tol = 2.0 * (n_terms + 4) * ldexp(1.0, -23) * abs_sum + 1e-30;
            const double a = ys[t * rows + r], b = yn[t * rows + r];
            checks++;
            if (!(fabs(a - b) <= tol + 1e-6 * fabs(a))) {
                failures++;
                printf("FAIL gemm %s %lldx%lld n_tok=%lld at (t=%lld,r=%lld): scalar %.9g neon %.9g tol %.3g\n",
                       name, (long long)rows, (long long)cols, (long long)n_tok, (long long)t,
                       (long long)r, a, b, tol);
                t = n_tok; break;
            }
        }
    /* the activation quantizer must write the reference bytes */
    unsigned char *XN = malloc(xrb * n_tok);
    pq_kernel_quantize_act("neon", wtype, x, XN, n_tok, cols);
    checks++;
    if (memcmp(XN, XQ, xrb * n_tok) != 0) {
        failures++;
        printf("FAIL quantize_act %s cols=%lld\n", name, (long long)cols);
    }
    free(XN); free(w); free(x); free(wd); free(xd); free(W); free(XQ); free(ys); free(yn);
}

static void check_vec(void) {
    static const int64_t ns[] = {0, 1, 3, 4, 7, 8, 9, 16, 31, 100, 257};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int64_t n = ns[k];
        float a[260], b[260], y[260], y0[260];
        uint16_t h[260];
        for (int64_t i = 0; i < n; i++) { a[i] = nrand(); b[i] = nrand(); y0[i] = nrand(); }
        pq_quantize(PQ_TYPE_F16, a, h, 1, n);
        float ah[260];
        pq_dequantize(PQ_TYPE_F16, h, ah, 1, n);
        for (int typ = 0; typ < 2; typ++) {
            const float *av = typ ? ah : a;
            const void *ap = typ ? (const void *)h : (const void *)a;
            const int type = typ ? PQ_TYPE_F16 : PQ_TYPE_F32;
            double ref = 0, abs_sum = 0;
            for (int64_t i = 0; i < n; i++) { ref += (double)av[i] * b[i]; abs_sum += fabs((double)av[i] * b[i]); }
            float out = NAN;
            pq_kernel_dot("neon", type, ap, b, n, &out);
            checks++;
            if (!(fabs(out - ref) <= (n + 4) * ldexp(1.0, -23) * abs_sum + 1e-30)) {
                failures++;
                printf("FAIL dot type=%d n=%lld: %.9g vs %.9g\n", type, (long long)n, out, ref);
            }
            memcpy(y, y0, sizeof(float) * n);
            pq_kernel_axpy("neon", type, -0.37f, ap, y, n);
            for (int64_t i = 0; i < n; i++) {
                const double r = y0[i] + (double)-0.37f * av[i];
                checks++;
                if (!(fabs(y[i] - r) <= ldexp(1.0, -23) * (fabs(y0[i]) + 0.37 * fabs(av[i])) + 1e-30)) {
                    failures++;
                    printf("FAIL axpy type=%d n=%lld i=%lld\n", type, (long long)n, (long long)i);
                    break;
                }
            }
        }
    }
}

/* Blocked causal attention (pq_attn_fn): neon and scalar against float64,
 * bound as in tests/test_kernels.py: a weight's relative error is at most
 * 4x the largest score error ((hd+4)*2^-23*scale*|q|.|k| + 1 ulp) plus
 * (2*n_keys+16)*2^-23, times 2; then the exponential alone through exact
 * scores (o[1] = e^x / (1 + e^x), 4 ulp); both the blocked and the decode
 * kernel. */
static void check_attn_case(int kv_type, int64_t hd, int g, int64_t n_tok, int64_t n_past) {
    const int64_t n_keys = n_past + n_tok, q_ld = g * hd + 3, kv_ld = 2 * hd + 5, o_ld = g * hd + 2;
    const int f16 = kv_type == PQ_TYPE_F16;
    float *q = malloc(sizeof(float) * n_tok * q_ld), *kf = malloc(sizeof(float) * n_keys * kv_ld);
    float *vf = malloc(sizeof(float) * n_keys * kv_ld), *o = malloc(sizeof(float) * n_tok * o_ld);
    uint16_t *kh = malloc(2 * n_keys * kv_ld), *vh = malloc(2 * n_keys * kv_ld);
    double *s = malloc(sizeof(double) * n_keys);
    const float scale = 1.0f / sqrtf((float)hd);
    for (int64_t i = 0; i < n_tok * q_ld; i++) q[i] = nrand();
    for (int64_t i = 0; i < n_keys * kv_ld; i++) { kf[i] = nrand(); vf[i] = nrand(); }
    if (f16) { /* the cache holds f16: the reference reads the same rounded values */
        pq_quantize(PQ_TYPE_F16, kf, kh, 1, n_keys * kv_ld);
        pq_quantize(PQ_TYPE_F16, vf, vh, 1, n_keys * kv_ld);
        pq_dequantize(PQ_TYPE_F16, kh, kf, 1, n_keys * kv_ld);
        pq_dequantize(PQ_TYPE_F16, vh, vf, 1, n_keys * kv_ld);
    }
    const char *variants[] = {"scalar", "neon", "neon"};
    const int decode[] = {0, 0, 1}; /* the blocked kernel, then the decode one */
    for (int vi = 0; vi < 3; vi++) {
        for (int64_t i = 0; i < n_tok * o_ld; i++) o[i] = NAN;
        const void *K = f16 ? (const void *)(kh + hd) : (const void *)(kf + hd);
        const void *V = f16 ? (const void *)(vh + hd) : (const void *)(vf + hd);
        pq_kernel_attn(variants[vi], decode[vi], kv_type, hd, q, q_ld, g, n_tok, n_past, K, V, kv_ld, scale, o, o_ld);
        for (int64_t t = 0; t < n_tok; t++)
            for (int i = 0; i < g; i++) {
                const float *qq = q + t * q_ld + i * hd;
                const int64_t nv = n_past + t + 1;
                double mx = -INFINITY, sum = 0, e = 0;
                for (int64_t p = 0; p < nv; p++) {
                    double dot = 0, ab = 0;
                    for (int64_t d = 0; d < hd; d++) {
                        dot += (double)qq[d] * kf[p * kv_ld + hd + d];
                        ab += fabs((double)qq[d] * kf[p * kv_ld + hd + d]);
                    }
                    s[p] = scale * dot;
                    if (s[p] > mx) mx = s[p];
                    const double ep = (hd + 4) * ldexp(1.0, -23) * scale * ab + ldexp(1.0, -23) * fabs(s[p]);
                    if (ep > e) e = ep;
                }
                for (int64_t p = 0; p < nv; p++) sum += exp(s[p] - mx);
                const double rel = 4 * e + (2 * nv + 16) * ldexp(1.0, -23);
                for (int64_t d = 0; d < hd; d++) {
                    double ref = 0, absref = 0;
                    for (int64_t p = 0; p < nv; p++) {
                        const double w = exp(s[p] - mx) / sum, v = vf[p * kv_ld + hd + d];
                        ref += w * v;
                        absref += w * fabs(v);
                    }
                    const double got = o[t * o_ld + i * hd + d];
                    checks++;
                    if (!(fabs(got - ref) <= 2 * rel * absref + 1e-30 + 1e-6 * fabs(ref))) {
                        failures++;
                        printf("FAIL attn %s%s kv=%d hd=%lld g=%d n_tok=%lld n_past=%lld at (t=%lld,i=%d,d=%lld): %.9g vs %.9g\n",
                               variants[vi], decode[vi] ? " decode" : "", kv_type, (long long)hd, g, (long long)n_tok, (long long)n_past,
                               (long long)t, i, (long long)d, got, ref);
                        goto next_variant;
                    }
                }
            }
        for (int64_t t = 0; t < n_tok; t++)
            if (!isnan(o[t * o_ld + g * hd]) || !isnan(o[t * o_ld + g * hd + 1])) {
                failures++;
                printf("FAIL attn %s%s wrote past the last head of row %lld\n", variants[vi],
                       decode[vi] ? " decode" : "", (long long)t);
            }
    next_variant:;
    }
    free(q); free(kf); free(vf); free(o); free(kh); free(vh); free(s);
}

static void check_attn(void) {
    static const int64_t shapes[][4] = {{64, 3, 16, 0}, {64, 3, 7, 61}, {64, 4, 5, 130},
                                        {128, 1, 33, 7}, {64, 8, 3, 64}, {20, 2, 9, 3},
                                        {7, 5, 3, 0}, {1, 1, 1, 0}, {36, 3, 17, 40},
                                        {64, 4, 20, 10}, {18, 8, 9, 5},
                                        /* decode shapes: one token, tiles of 1..4 heads */
                                        {64, 3, 1, 299}, {64, 9, 1, 16}, {128, 1, 1, 130},
                                        {72, 2, 1, 70}, {102, 5, 1, 9}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int f16 = 0; f16 < 2; f16++)
            check_attn_case(f16 ? PQ_TYPE_F16 : PQ_TYPE_F32, shapes[i][0], (int)shapes[i][1],
                            shapes[i][2], shapes[i][3]);
    /* exp alone: k0 = (0, 0), k1 = (1, 0), v0 = (1, 0), v1 = (0, 1), scale 1 */
    enum { G = 200 };
    static float q[2 * G], o[2 * G];
    const float k[4] = {0, 0, 1, 0}, v[4] = {1, 0, 0, 1};
    for (int i = 0; i < G; i++) {
        q[2 * i] = i < 180 ? -87.0f * (float)i / 179 : -87.0f - (float)(i - 179) * 3;
        q[2 * i + 1] = 0;
        o[2 * i] = o[2 * i + 1] = NAN;
    }
    for (int dec = 0; dec < 2; dec++) {
        for (int i = 0; i < 2 * G; i++) o[i] = NAN;
        pq_kernel_attn("neon", dec, PQ_TYPE_F32, 2, q, 2 * G, G, 1, 1, k, v, 2, 1.0f, o, 2 * G);
        for (int i = 0; i < G; i++) {
            const double e = exp((double)q[2 * i]), r1 = e / (1 + e);
            checks++;
            if (!(fabs(o[2 * i + 1] - r1) <= 4 * ldexp(1.0, -24) * r1 + 1.2e-38)) {
                failures++;
                printf("FAIL attn%s exp at x=%.9g: %.9g vs %.9g\n", dec ? " decode" : "", q[2 * i],
                       o[2 * i + 1], r1);
            }
        }
    }
    /* decode: a head's output does not depend on the tile of heads it is in */
    for (int hd = 64; hd <= 66; hd += 2) {
        float qq[8 * 66], kk[100 * 66], vv[100 * 66], whole[8 * 66], part[8 * 66];
        for (int i = 0; i < 8 * hd; i++) qq[i] = nrand();
        for (int i = 0; i < 100 * hd; i++) { kk[i] = nrand(); vv[i] = nrand(); }
        pq_kernel_attn("neon", 1, PQ_TYPE_F32, hd, qq, 8 * hd, 8, 1, 99, kk, vv, hd, 0.125f, whole, 8 * hd);
        for (int i0 = 0; i0 < 8; i0 += 3) {
            const int gn = 8 - i0 < 3 ? 8 - i0 : 3;
            pq_kernel_attn("neon", 1, PQ_TYPE_F32, hd, qq + i0 * hd, gn * hd, gn, 1, 99, kk, vv, hd,
                           0.125f, part, gn * hd);
            checks++;
            if (memcmp(part, whole + i0 * hd, sizeof(float) * gn * hd) != 0) {
                failures++;
                printf("FAIL attn decode hd=%d heads %d..%d differ from the whole group\n", hd, i0, i0 + gn);
            }
        }
    }
}

/* SwiGLU's silu_mul: neon and scalar against float64, x over [-120, 120]
 * (both signs of the exp-argument trick, and the range where exp underflows),
 * n not a multiple of 4. */
static void check_silu(void) {
    enum { N = 203 };
    static float g[N], u[N], out[N];
    for (int i = 0; i < N; i++) {
        g[i] = (float)(-120.0 + 240.0 * i / (N - 1)) * (i % 3 ? 0.05f : 1.0f);
        u[i] = nrand();
    }
    const char *variants[] = {"neon", "scalar"};
    for (int vi = 0; vi < 2; vi++) {
        memcpy(out, g, sizeof out);
        pq_kernel_silu_mul(variants[vi], out, u, N);
        for (int i = 0; i < N; i++) {
            const double x = g[i], ref = x / (1.0 + exp(-x)) * u[i];
            checks++;
            if (!(fabs(out[i] - ref) <= 1e-6 * fabs(ref) + 1e-30)) {
                failures++;
                printf("FAIL silu_mul %s at x=%.9g: %.9g vs %.9g\n", variants[vi], x, out[i], ref);
            }
        }
    }
}

int main(void) {
    if (pq_kernels_select("neon") != PQ_OK) {
        printf("FAIL neon table not available (features: %s)\n", pq_cpu_features());
        return 1;
    }
    printf("features: %s; available: %s\n", pq_cpu_features(), pq_kernels_available());
    static const struct { int type; const char *name; } types[] = {
        {PQ_TYPE_Q4_0, "Q4_0"}, {PQ_TYPE_Q4_1, "Q4_1"}, {PQ_TYPE_Q8_0, "Q8_0"},
        {PQ_TYPE_F32, "F32"}, {PQ_TYPE_F16, "F16"}, {PQ_TYPE_BF16, "BF16"}};
    static const int64_t shapes[][3] = {{1, 32, 1}, {3, 64, 2}, {5, 96, 3}, {13, 256, 5},
                                        {7, 4096, 1}, {19, 544, 7}, {11, 2048, 17}, {6, 160, 4}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            check_gemm(types[i].type, types[i].name, shapes[s][0], shapes[s][1], shapes[s][2]);
    for (size_t i = 3; i < 6; i++) { /* float weights: any column count */
        check_gemm(types[i].type, types[i].name, 3, 7, 2);
        check_gemm(types[i].type, types[i].name, 5, 33, 5);
    }
    check_vec();
    check_attn();
    check_silu();
    printf("%s %d checks, %d failures\n", failures ? "FAILED" : "ok", checks, failures);
    return failures ? 1 : 0;
}
