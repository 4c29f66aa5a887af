/* arm_neon.c: the "neon" kernel table, for aarch64 (NEON is baseline there).
 *
 * What it is: gemm kernels for Q4_0/Q4_1/Q8_0 (int8 dot products) and
 * F32/F16/BF16 weights, plus dot/axpy, same signatures as the scalar twins in
 * quants.c. The int8 dot uses SDOT (Armv8.2 dotprod: Cortex-A55/A76 and
 * later, Apple M1, Neoverse, Graviton 2+) when the kernel reports it in
 * AT_HWCAP, else widening multiplies; both paths share one tiled body.
 * Activation quantizers are the scalar reference ones (bit-exact by
 * construction; their cost is O(cols) per token against O(rows*cols)).
 * Attention: only its vector primitives are here; the drivers are in
 * attn_common.h (shared with the x86 files).
 * What it is not: built anywhere but aarch64; elsewhere pq_kernels_neon()
 * returns NULL. Arm intrinsics reference: https://developer.arm.com/architectures/instruction-sets/intrinsics/
 */
#include "kernels.h"

#if defined(__aarch64__)

#include <arm_neon.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif

#include "quants.h"
#include "quants_ref.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off") /* FMAs only where written */
#endif

#define AI static inline __attribute__((always_inline))

/* SDOT is emitted through inline asm so that this file needs no dotprod
 * target and the fallback can never execute it; the ".arch" line tells GNU as
 * the opcode exists. clang's integrated assembler checks the enclosing
 * function's target instead and rejects it, so clang builds take the
 * widening path (a per-function target("dotprod") copy would fix that). */
#if defined(__clang__)
#define PQ_SDOT_ASM 0
#else
#define PQ_SDOT_ASM 1
#endif

/* acc += sums of 4 adjacent s8*s8 products. */
AI int32x4_t dot_s8(const int dotprod, int32x4_t acc, int8x16_t a, int8x16_t b) {
    if (PQ_SDOT_ASM && dotprod) {
        __asm__(".arch armv8.2-a+dotprod\n\tsdot %0.4s, %1.16b, %2.16b"
                : "+w"(acc) : "w"(a), "w"(b));
        return acc;
    }
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t hi = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
}

AI float f16_load(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return pq_fp16_to_fp32(h);
}

/* ---- quantized gemm ------------------------------------------------------------- */

enum { K_Q4_0, K_Q4_1, K_Q8_0 };

/* Y[t*ldy + r] for an R x T tile over nb blocks; W (R, nb*32) @ X (T, nb*32)^T.
 * Weights decoded once per block to two int8x16 (elements 0..15, 16..31). */
AI void tile_q(const int kind, const int dp, const int R, const int T, int64_t nb,
               const char *w, size_t ws, const char *x, size_t xs, float *y, int64_t ldy) {
    const size_t wbs = kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : 34;
    const size_t xbs = kind == K_Q4_1 ? 36 : 34, xoff = kind == K_Q4_1 ? 4 : 2;
    float32x4_t acc[4][4];
    float accm[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) { acc[r][t] = vdupq_n_f32(0.0f); accm[r][t] = 0.0f; }
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t w0[4], w1[4];
        float dw[4], mw[4];
        for (int r = 0; r < R; r++) {
            const char *wb = w + r * ws + b * wbs;
            dw[r] = f16_load(wb);
            if (kind == K_Q8_0) {
                w0[r] = vld1q_s8((const int8_t *)wb + 2);
                w1[r] = vld1q_s8((const int8_t *)wb + 18);
            } else {
                const uint8x16_t q = vld1q_u8((const uint8_t *)wb + (kind == K_Q4_0 ? 2 : 4));
                w0[r] = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
                w1[r] = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
                if (kind == K_Q4_0) { /* centre: q - 8 */
                    w0[r] = vsubq_s8(w0[r], vdupq_n_s8(8));
                    w1[r] = vsubq_s8(w1[r], vdupq_n_s8(8));
                }
                if (kind == K_Q4_1) mw[r] = f16_load(wb + 2);
            }
        }
        for (int t = 0; t < T; t++) {
            const char *xb = x + t * xs + b * xbs;
            const float dx = f16_load(xb);
            const int8x16_t x0 = vld1q_s8((const int8_t *)xb + xoff);
            const int8x16_t x1 = vld1q_s8((const int8_t *)xb + xoff + 16);
            for (int r = 0; r < R; r++) {
                const int32x4_t d = dot_s8(dp, dot_s8(dp, vdupq_n_s32(0), w0[r], x0), w1[r], x1);
                acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(d), dw[r] * dx);
                if (kind == K_Q4_1) accm[r][t] += mw[r] * f16_load(xb + 2);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * ldy + r] = vaddvq_f32(acc[r][t]) + accm[r][t];
}

AI void tile_q_tokens(const int kind, const int dp, const int R, int T, int64_t nb,
                      const char *w, size_t ws, const char *x, size_t xs, float *y, int64_t ldy) {
    switch (T) {
    case 1: tile_q(kind, dp, R, 1, nb, w, ws, x, xs, y, ldy); break;
    case 2: tile_q(kind, dp, R, 2, nb, w, ws, x, xs, y, ldy); break;
    case 3: tile_q(kind, dp, R, 3, nb, w, ws, x, xs, y, ldy); break;
    default: tile_q(kind, dp, R, 4, nb, w, ws, x, xs, y, ldy); break;
    }
}

/* Rows in pairs (fours for one token: decode), then one; tokens in fours. */
AI void gemm_q(const int kind, const int dp, int64_t cols, const void *W, size_t ws,
               const void *X, size_t xs, int64_t n_tok, float *Y, int64_t ldy, int64_t r0,
               int64_t r1) {
    const int64_t nb = cols / 32;
    int64_t r = r0;
    if (n_tok == 1)
        for (; r + 4 <= r1; r += 4)
            tile_q(kind, dp, 4, 1, nb, (const char *)W + r * ws, ws, (const char *)X, xs, Y + r, ldy);
    for (; r + 2 <= r1; r += 2)
        for (int64_t t = 0; t < n_tok; t += 4)
            tile_q_tokens(kind, dp, 2, (int)(n_tok - t < 4 ? n_tok - t : 4), nb,
                          (const char *)W + r * ws, ws, (const char *)X + t * xs, xs,
                          Y + t * ldy + r, ldy);
    for (; r < r1; r++)
        for (int64_t t = 0; t < n_tok; t += 4)
            tile_q_tokens(kind, dp, 1, (int)(n_tok - t < 4 ? n_tok - t : 4), nb,
                          (const char *)W + r * ws, ws, (const char *)X + t * xs, xs,
                          Y + t * ldy + r, ldy);
}

#define GEMM_ARGS int64_t cols, const void *W, size_t ws, const void *X, size_t xs, \
                  int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1
#define GEMM_PASS cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1
static void gemm_q4_0(GEMM_ARGS) { gemm_q(K_Q4_0, 0, GEMM_PASS); }
static void gemm_q4_1(GEMM_ARGS) { gemm_q(K_Q4_1, 0, GEMM_PASS); }
static void gemm_q8_0(GEMM_ARGS) { gemm_q(K_Q8_0, 0, GEMM_PASS); }
static void gemm_q4_0_dp(GEMM_ARGS) { gemm_q(K_Q4_0, 1, GEMM_PASS); }
static void gemm_q4_1_dp(GEMM_ARGS) { gemm_q(K_Q4_1, 1, GEMM_PASS); }
static void gemm_q8_0_dp(GEMM_ARGS) { gemm_q(K_Q8_0, 1, GEMM_PASS); }

/* ---- float-weight gemm (activations f32) ---------------------------------------- */

enum { K_F32, K_F16, K_BF16 };

AI float32x4_t load_w4(const int kind, const char *w, int64_t i) {
    if (kind == K_F32) return vld1q_f32((const float *)w + i);
    const uint16x4_t h = vld1_u16((const uint16_t *)w + i);
    if (kind == K_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16)); /* bf16: the top half of an f32 */
}

AI float load_w1(const int kind, const char *w, int64_t i) {
    if (kind == K_F32) return ((const float *)w)[i];
    if (kind == K_F16) return pq_fp16_to_fp32(((const uint16_t *)w)[i]);
    return pq_bf16_to_fp32(((const uint16_t *)w)[i]);
}

AI void tile_f(const int kind, const int R, const int T, int64_t cols, const char *w,
               size_t ws, const char *x, size_t xs, float *y, int64_t ldy) {
    float32x4_t acc[2][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= cols; i += 4) {
        float32x4_t wv[2];
        for (int r = 0; r < R; r++) wv[r] = load_w4(kind, w + r * ws, i);
        for (int t = 0; t < T; t++) {
            const float32x4_t xv = vld1q_f32((const float *)(x + t * xs) + i);
            for (int r = 0; r < R; r++) acc[r][t] = vfmaq_f32(acc[r][t], wv[r], xv);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float s = vaddvq_f32(acc[r][t]);
            for (int64_t j = i; j < cols; j++)
                s += load_w1(kind, w + r * ws, j) * ((const float *)(x + t * xs))[j];
            y[t * ldy + r] = s;
        }
}

AI void tile_f_tokens(const int kind, const int R, int T, int64_t cols, const char *w,
                      size_t ws, const char *x, size_t xs, float *y, int64_t ldy) {
    switch (T) {
    case 1: tile_f(kind, R, 1, cols, w, ws, x, xs, y, ldy); break;
    case 2: tile_f(kind, R, 2, cols, w, ws, x, xs, y, ldy); break;
    case 3: tile_f(kind, R, 3, cols, w, ws, x, xs, y, ldy); break;
    default: tile_f(kind, R, 4, cols, w, ws, x, xs, y, ldy); break;
    }
}

AI void gemm_f(const int kind, GEMM_ARGS) {
    int64_t r = r0;
    for (; r + 2 <= r1; r += 2)
        for (int64_t t = 0; t < n_tok; t += 4)
            tile_f_tokens(kind, 2, (int)(n_tok - t < 4 ? n_tok - t : 4), cols,
                          (const char *)W + r * ws, ws, (const char *)X + t * xs, xs,
                          Y + t * ldy + r, ldy);
    for (; r < r1; r++)
        for (int64_t t = 0; t < n_tok; t += 4)
            tile_f_tokens(kind, 1, (int)(n_tok - t < 4 ? n_tok - t : 4), cols,
                          (const char *)W + r * ws, ws, (const char *)X + t * xs, xs,
                          Y + t * ldy + r, ldy);
}

static void gemm_f32(GEMM_ARGS) { gemm_f(K_F32, GEMM_PASS); }
static void gemm_f16(GEMM_ARGS) { gemm_f(K_F16, GEMM_PASS); }
static void gemm_bf16(GEMM_ARGS) { gemm_f(K_BF16, GEMM_PASS); }

/* ---- attention helpers ------------------------------------------------------------ */

static float dot_f32(const float *a, const float *b, int64_t n) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] += a * x[i];
}

static float dot_f16(const uint16_t *a, const float *b, int64_t n) {
    float32x4_t s = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) s = vfmaq_f32(s, load_w4(K_F16, (const char *)a, i), vld1q_f32(b + i));
    float r = vaddvq_f32(s);
    for (; i < n; i++) r += pq_fp16_to_fp32(a[i]) * b[i];
    return r;
}

static void axpy_f16(float a, const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), load_w4(K_F16, (const char *)x, i), a));
    for (; i < n; i++) y[i] += a * pq_fp16_to_fp32(x[i]);
}

/* ---- attention primitives (drivers: attn_common.h) ---------------------------------- */

/* Blocked (prefill): 4 query rows a register. Key and value elements enter
 * through FMA-by-lane (4 consecutive elements of a row per load). */
enum { AW = 4, VT = 16 };

/* exp(x) for x <= 0 (-inf gives 0), 4 lanes, within 2 ulp of expf down to
 * -87.3 (below that, where expf is subnormal, 0): x = n ln2 + r with
 * |r| <= ln2/2 (ln2 in two parts, so r is exact to about 2^-32), exp(r) by
 * its degree-7 Taylor polynomial (truncation |r|^8/8! < 6e-9, a tenth of an
 * ulp), times 2^n built in the exponent field. */
AI float32x4_t attn_exp4(float32x4_t x) {
    const float32x4_t lo = vdupq_n_f32(-87.3f);
    const uint32x4_t keep = vcgeq_f32(x, lo);
    x = vmaxq_f32(x, lo);
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.0f / 5040);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 720), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 120), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 24), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 6), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(vmulq_f32(p, vreinterpretq_f32_s32(e))), keep));
}

/* One f16 cache row -> hd f32, 4 at a time, scalar tail. */
AI void attn_row_f16(const uint16_t *x, int64_t hd, float *out) {
    int64_t d = 0;
    for (; d + 4 <= hd; d += 4) vst1q_f32(out + d, load_w4(K_F16, (const char *)x, d));
    for (; d < hd; d++) out[d] = pq_fp16_to_fp32(x[d]);
}

/* S[i] (4 lanes) = sum_d Q^T[d] * k_i[d] for P keys k_i = k + i*kld. */
AI void attn_score_tile(const int P, int64_t hd, const float *qt, const float *k, int64_t kld,
                        float *s) {
    float32x4_t acc[8];
    for (int i = 0; i < P; i++) acc[i] = vdupq_n_f32(0.0f);
    int64_t d = 0;
    for (; d + 4 <= hd; d += 4) {
        const float32x4_t q0 = vld1q_f32(qt + d * AW), q1 = vld1q_f32(qt + (d + 1) * AW);
        const float32x4_t q2 = vld1q_f32(qt + (d + 2) * AW), q3 = vld1q_f32(qt + (d + 3) * AW);
        for (int i = 0; i < P; i++) {
            const float32x4_t kv = vld1q_f32(k + i * kld + d);
            acc[i] = vfmaq_laneq_f32(acc[i], q0, kv, 0);
            acc[i] = vfmaq_laneq_f32(acc[i], q1, kv, 1);
            acc[i] = vfmaq_laneq_f32(acc[i], q2, kv, 2);
            acc[i] = vfmaq_laneq_f32(acc[i], q3, kv, 3);
        }
    }
    for (; d < hd; d++) {
        const float32x4_t q = vld1q_f32(qt + d * AW);
        for (int i = 0; i < P; i++) acc[i] = vfmaq_n_f32(acc[i], q, k[i * kld + d]);
    }
    for (int i = 0; i < P; i++) vst1q_f32(s + i * AW, acc[i]);
}

/* O^T[i] (4 lanes) += sum_p W[p] * v_p[i] over kn values, for D columns i
 * (D a multiple of 4, or 1). */
AI void attn_value_tile(const int D, int64_t kn, const float *w, const float *v, int64_t vld,
                        float *ot) {
    float32x4_t acc[16];
    for (int i = 0; i < D; i++) acc[i] = vld1q_f32(ot + i * AW);
    for (int64_t p = 0; p < kn; p++) {
        const float32x4_t wp = vld1q_f32(w + p * AW);
        if (D == 1) {
            acc[0] = vfmaq_n_f32(acc[0], wp, v[p * vld]);
            continue;
        }
        for (int i = 0; i < D; i += 4) {
            const float32x4_t vv = vld1q_f32(v + p * vld + i);
            acc[i] = vfmaq_laneq_f32(acc[i], wp, vv, 0);
            acc[i + 1] = vfmaq_laneq_f32(acc[i + 1], wp, vv, 1);
            acc[i + 2] = vfmaq_laneq_f32(acc[i + 2], wp, vv, 2);
            acc[i + 3] = vfmaq_laneq_f32(acc[i + 3], wp, vv, 3);
        }
    }
    for (int i = 0; i < D; i++) vst1q_f32(ot + i * AW, acc[i]);
}

/* One lane chunk, s (nk, 4): scale; keys after a lane's last (only from
 * diag on) to -inf; s = exp(s - max) in place; the 4 lane sums to sum. */
AI void attn_softmax_lanes(float *s, int64_t nk, int64_t diag, const int32_t *last, float scale,
                           float *sum_out) {
    const float32x4_t ninf = vdupq_n_f32(-INFINITY);
    const int32x4_t lastv = vld1q_s32(last);
    float32x4_t mx = ninf, sum = vdupq_n_f32(0.0f);
    for (int64_t p = 0; p < nk; p++) {
        float32x4_t v = vmulq_n_f32(vld1q_f32(s + p * AW), scale);
        if (p >= diag) v = vbslq_f32(vcgtq_s32(vdupq_n_s32((int32_t)p), lastv), ninf, v);
        vst1q_f32(s + p * AW, v);
        mx = vmaxq_f32(mx, v);
    }
    for (int64_t p = 0; p < nk; p++) {
        const float32x4_t e = attn_exp4(vsubq_f32(vld1q_f32(s + p * AW), mx));
        vst1q_f32(s + p * AW, e);
        sum = vaddq_f32(sum, e);
    }
    vst1q_f32(sum_out, sum);
}

/* O^T (hd, 4) /= the 4 lane sums. */
AI void attn_div_lanes(float *o, int64_t hd, const float *sum) {
    const float32x4_t sumv = vld1q_f32(sum);
    for (int64_t d = 0; d < hd; d++) vst1q_f32(o + d * AW, vdivq_f32(vld1q_f32(o + d * AW), sumv));
}

/* Decode: 4 head_dim elements a register, two accumulators a head; values
 * keep 8 FMA chains running. */
enum { DW = 4, DEC_CHAINS = 8 };

AI float32x4_t dec_row4(const int f16, const void *X, int64_t i) {
    return f16 ? load_w4(K_F16, (const char *)X, i) : vld1q_f32((const float *)X + i);
}

/* t[h] = q_h . k over [0, hdv) for the H heads q + h*hd. */
AI void dec_dots(const int f16, const int H, int64_t hdv, int64_t hd, const char *k, const float *q,
                 float *t) {
    float32x4_t acc[4][2];
    for (int h = 0; h < H; h++) acc[h][0] = acc[h][1] = vdupq_n_f32(0.0f);
    for (int64_t d = 0; d < hdv; d += 4) {
        const float32x4_t r = dec_row4(f16, k, d);
        const int a = (int)(d >> 2) & 1;
        for (int h = 0; h < H; h++) acc[h][a] = vfmaq_f32(acc[h][a], r, vld1q_f32(q + h * hd + d));
    }
    for (int h = 0; h < H; h++) t[h] = vaddvq_f32(vaddq_f32(acc[h][0], acc[h][1]));
}

/* sh = exp(sh - max sh) over n_keys scores in place; returns their sum. */
AI float dec_softmax(float *sh, int64_t n_keys) {
    float tail[4];
    const int64_t n4 = n_keys & ~(int64_t)3;
    float32x4_t mx = vdupq_n_f32(-INFINITY), sv = vdupq_n_f32(0.0f);
    for (int64_t p = 0; p < n4; p += 4) mx = vmaxq_f32(mx, vld1q_f32(sh + p));
    float m = vmaxvq_f32(mx);
    for (int64_t p = n4; p < n_keys; p++) m = sh[p] > m ? sh[p] : m;
    mx = vdupq_n_f32(m);
    for (int64_t p = 0; p < n4; p += 4) {
        const float32x4_t e = attn_exp4(vsubq_f32(vld1q_f32(sh + p), mx));
        vst1q_f32(sh + p, e);
        sv = vaddq_f32(sv, e);
    }
    for (int j = 0; j < 4; j++) tail[j] = n4 + j < n_keys ? sh[n4 + j] : -INFINITY;
    const float32x4_t e = attn_exp4(vsubq_f32(vld1q_f32(tail), mx));
    vst1q_f32(tail, e);
    for (int64_t p = n4; p < n_keys; p++) sh[p] = tail[p - n4];
    return vaddvq_f32(vaddq_f32(sv, e));
}

/* Columns [d, d + 4*CC) of the outputs of H heads: o = sum_p w_p V_p / sum
 * (the same per column whatever CC and H, so results do not depend on them). */
AI void dec_values(const int f16, const int H, const int CC, int64_t d, int64_t hd, int64_t n_keys,
                   const void *V, int64_t kv_ld, const float *s, const float *sum, float *o) {
    const size_t es = f16 ? 2 : 4;
    float32x4_t ov[4][8];
    for (int h = 0; h < H; h++)
        for (int c = 0; c < CC; c++) ov[h][c] = vdupq_n_f32(0.0f);
    for (int64_t p = 0; p < n_keys; p++) {
        const char *v = (const char *)V + p * kv_ld * es;
        float32x4_t r[8];
        for (int c = 0; c < CC; c++) r[c] = dec_row4(f16, v, d + 4 * c);
        for (int h = 0; h < H; h++) {
            const float w = s[h * n_keys + p];
            for (int c = 0; c < CC; c++) ov[h][c] = vfmaq_n_f32(ov[h][c], r[c], w);
        }
    }
    for (int h = 0; h < H; h++)
        for (int c = 0; c < CC; c++)
            vst1q_f32(o + h * hd + d + 4 * c, vdivq_f32(ov[h][c], vdupq_n_f32(sum[h])));
}

#include "attn_common.h"

static void copy_f32(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * 4); }

/* ---- the table ------------------------------------------------------------------------ */

static pq_kernels table;
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* SDOT usable: HWCAP_ASIMDDP (bit 20) on Linux; PQ_NEON_NO_DOTPROD=1 forces
 * the widening-multiply path (tests run both). */
/* g = silu(g) * up, 4 lanes, scalar tail. silu(x) = x * s with
 * s = 1 / (1 + e) for x >= 0 and e / (1 + e) below, e = exp(-|x|) <= 1, so
 * the exponential never overflows (attn_exp4 is for arguments <= 0). */
static void silu_mul(float *g, const float *up, int64_t n) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t x = vld1q_f32(g + i);
        const float32x4_t e = attn_exp4(vnegq_f32(vabsq_f32(x)));
        const uint32x4_t neg = vcltq_f32(x, vdupq_n_f32(0.0f));
        const float32x4_t s = vdivq_f32(vbslq_f32(neg, e, one), vaddq_f32(one, e));
        vst1q_f32(g + i, vmulq_f32(vmulq_f32(x, s), vld1q_f32(up + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * up[i];
}

static int cpu_has_dotprod(void) {
    const char *off = getenv("PQ_NEON_NO_DOTPROD");
    if (off && off[0] && strcmp(off, "0") != 0) return 0;
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & (1UL << 20)) != 0;
#else
    return 0;
#endif
}

static void init(void) {
    pq_kernels *k = &table;
    const int dp = PQ_SDOT_ASM && cpu_has_dotprod();
    k->name = "neon";
    k->quantize_act[PQ_TYPE_F32] = copy_f32;
    k->quantize_act[PQ_TYPE_F16] = copy_f32;
    k->quantize_act[PQ_TYPE_BF16] = copy_f32;
    k->quantize_act[PQ_TYPE_Q4_0] = pq_quantize_row_q8_0;
    k->quantize_act[PQ_TYPE_Q8_0] = pq_quantize_row_q8_0;
    k->quantize_act[PQ_TYPE_Q4_1] = pq_quantize_row_q8_1;
    k->gemm[PQ_TYPE_F32] = gemm_f32;
    k->gemm[PQ_TYPE_F16] = gemm_f16;
    k->gemm[PQ_TYPE_BF16] = gemm_bf16;
    k->gemm[PQ_TYPE_Q4_0] = dp ? gemm_q4_0_dp : gemm_q4_0;
    k->gemm[PQ_TYPE_Q4_1] = dp ? gemm_q4_1_dp : gemm_q4_1;
    k->gemm[PQ_TYPE_Q8_0] = dp ? gemm_q8_0_dp : gemm_q8_0;
    k->dot_f32 = dot_f32;
    k->axpy_f32 = axpy_f32;
    k->dot_f16 = dot_f16;
    k->axpy_f16 = axpy_f16;
    k->attn_f32 = attn_f32;
    k->attn_f16 = attn_f16;
    k->attn_lanes = AW;
    k->attn_dec_f32 = attn_dec_f32;
    k->attn_dec_f16 = attn_dec_f16;
    k->silu_mul = silu_mul;
}

const pq_kernels *pq_kernels_neon(void) {
    pthread_once(&once, init);
    return &table;
}

#else /* not aarch64 */

const pq_kernels *pq_kernels_neon(void) { return NULL; }

#endif
