/* x86_avx2.c: the "avx2" kernel table (AVX2 + FMA + F16C), for x86-64 CPUs
 * from Intel Haswell (2013) and AMD Zen 1 (2017) on.
 *
 * What it is: SIMD versions of every entry of the scalar table in quants.c,
 * same signatures, tested against that twin. What it is not: chosen here;
 * dispatch.c decides whether this CPU may run it. On non-x86 builds the file
 * shrinks to a pq_kernels_avx2() that returns NULL.
 *
 * gemm layout: a tile of R weight rows x T tokens keeps R*T float
 * accumulators in registers, so each decoded weight block is used T times
 * (prompt batches) and each activation block R times. Decode (one token)
 * runs 8 rows per activation block, each row decoded right before its dot.
 * Intel intrinsics guide: https://www.intel.com/content/www/us/en/docs/intrinsics-guide/
 */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <pthread.h>
#include <string.h>

#include "quants.h"
#include "x86_common.h"

/* Every function below, helpers included, is compiled for this ISA; no FMA
 * contraction except where written (keeps quantize_act bit-exact). */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#endif

#define AI static inline __attribute__((always_inline))

AI float hsum_f32x8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI float f16_load(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* 16 bytes of packed nibbles -> 32 bytes 0..15: low nibbles are elements
 * 0..15, high nibbles 16..31 (the ggml order). */
AI __m256i load_nibbles(const uint8_t *qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* roundf() for 8 floats: ties away from zero, as the scalar encoder. */
AI __m256 round_away(__m256 s) {
    const __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_sub_ps(s, t); /* exact */
    const __m256 sign = _mm256_and_ps(s, _mm256_set1_ps(-0.0f));
    const __m256 absf = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), frac);
    const __m256 half = _mm256_cmp_ps(absf, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(sign, _mm256_set1_ps(1.0f)); /* +-1 */
    return _mm256_add_ps(t, _mm256_and_ps(half, one));
}

/* ---- activation quantizers (bit-exact with quants.c) ------------------------ */

/* One block of 32 floats -> 32 int8 q = round(x*id) and the f32 scale d
 * (before its fp16 rounding); returns sum(q). */
AI int quantize_block_q8(const float *x, int8_t *qs, float *dout) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v[i]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float d = _mm_cvtss_f32(m) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    *dout = d;
    __m256i q[4];
    for (int i = 0; i < 4; i++)
        q[i] = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[i], _mm256_set1_ps(id))));
    /* int32 -> int8; the packs interleave 128-bit lanes, the permute undoes it */
    const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_si256((__m256i *)qs, _mm256_permutevar8x32_epi32(p8, perm));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    return _mm_cvtsi128_si32(s4);
}

static void quantize_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        float d;
        quantize_block_q8(x + b * 32, y[b].qs, &d);
        y[b].d = pq_fp32_to_fp16(d);
    }
}

/* s = fp16(sum(q) * d) with d the f32 scale, as quants.c. */
static void quantize_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t b = 0; b < n / QK8_1; b++) {
        float d;
        const int sum = quantize_block_q8(x + b * 32, y[b].qs, &d);
        y[b].d = pq_fp32_to_fp16(d);
        y[b].s = pq_fp32_to_fp16((float)sum * d);
    }
}

static void copy_f32(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * 4); }

/* ---- quantized gemm tiles ------------------------------------------------------ */

/* kind: which weight format (compile-time constant after inlining). */
enum { K_Q4_0, K_Q4_1, K_Q8_0 };

/* Y[t*ldy + r] for an R x T tile: rows w + r*ws, tokens x + t*xs, nb blocks.
 * Shape: W (R, nb*32) @ X (T, nb*32)^T -> Y (T, R) at stride ldy. */
AI void tile_q(const int kind, const int R, const int T, int64_t nb, const char *w,
               size_t ws, const char *x, size_t xs, float *y, int64_t ldy) {
    const size_t wbs = kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : 34; /* block bytes */
    const size_t xbs = kind == K_Q4_1 ? 36 : 34;
    const size_t xoff = kind == K_Q4_1 ? 4 : 2; /* qs offset in the act block */
    const __m256i ones16 = _mm256_set1_epi16(1), eights = _mm256_set1_epi8(8);
    __m256 acc[8][4];
    float accm[8][4]; /* Q4_1: sum of m * s */
    __m128 accmv[8];  /* Q4_1 decode: the same sum, in lane 1 */
    for (int r = 0; r < R; r++) accmv[r] = _mm_setzero_ps();
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) { acc[r][t] = _mm256_setzero_ps(); accm[r][t] = 0.0f; }
    const size_t pf = pq_prefetch_ahead(R, ws);
    for (int64_t b = 0; b < nb; b++) {
        if (T == 1) { /* decode: one activation block, R rows each loaded just before use */
            const float dx = f16_load(x + b * xbs);
            const __m256i xq = _mm256_loadu_si256((const __m256i *)(x + b * xbs + xoff));
            const __m256i xc = _mm256_maddubs_epi16(eights, xq);
            const float sx = kind == K_Q4_1 ? f16_load(x + b * xbs + 2) : 0.0f;
            /* Q4_1: (d, m) of a row and (dx, s) convert as one pair each, so
             * one multiply gives d*dx (the scale) and m*s (the minimum's term) */
            uint32_t xds = 0;
            if (kind == K_Q4_1) memcpy(&xds, x + b * xbs, 4);
            const __m128 dsx = _mm_cvtph_ps(_mm_cvtsi32_si128((int)xds));
            for (int r = 0; r < R; r++) {
                const char *wb = w + r * ws + b * wbs;
                /* software prefetch into L2 (x86_common.h), about one line per
                 * row per 64 bytes: every block for Q8_0, every other for Q4 */
                if (kind == K_Q8_0 || (b & 1) == 0) _mm_prefetch(wb + pf, _MM_HINT_T1);
                if (kind == K_Q4_1) {
                    uint32_t wdm;
                    memcpy(&wdm, wb, 4);
                    const __m128 prod = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)wdm)), dsx);
                    const __m256i p16 = _mm256_maddubs_epi16(load_nibbles((const uint8_t *)wb + 4), xq);
                    const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones16));
                    acc[r][0] = _mm256_fmadd_ps(p, _mm256_broadcastss_ps(prod), acc[r][0]);
                    accmv[r] = _mm_add_ps(accmv[r], prod); /* lane 1: m*s */
                    continue;
                }
                __m256i p16;
                if (kind == K_Q4_0)
                    p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(load_nibbles((const uint8_t *)wb + 2), xq), xc);
                if (kind == K_Q4_1) p16 = _mm256_maddubs_epi16(load_nibbles((const uint8_t *)wb + 4), xq);
                if (kind == K_Q8_0) {
                    const __m256i q = _mm256_loadu_si256((const __m256i *)(wb + 2));
                    p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(xq, q));
                }
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones16));
                acc[r][0] = _mm256_fmadd_ps(p, _mm256_set1_ps(f16_load(wb) * dx), acc[r][0]);
                if (kind == K_Q4_1) accm[r][0] += f16_load(wb + 2) * sx;
            }
            continue;
        }
        __m256i wq[4];
        float dw[4], mw[4];
        for (int r = 0; r < R; r++) {
            const char *wb = w + r * ws + b * wbs;
            dw[r] = f16_load(wb);
            if (kind == K_Q4_0) wq[r] = load_nibbles((const uint8_t *)wb + 2);
            if (kind == K_Q4_1) { mw[r] = f16_load(wb + 2); wq[r] = load_nibbles((const uint8_t *)wb + 4); }
            if (kind == K_Q8_0) wq[r] = _mm256_loadu_si256((const __m256i *)(wb + 2));
        }
        for (int t = 0; t < T; t++) {
            const char *xb = x + t * xs + b * xbs;
            const float dx = f16_load(xb);
            const __m256i xq = _mm256_loadu_si256((const __m256i *)(xb + xoff));
            __m256i xc = _mm256_setzero_si256();
            /* Q4_0: dot(q-8, x) = dot(q, x) - dot(8, x); the second term per token */
            if (kind == K_Q4_0) xc = _mm256_maddubs_epi16(eights, xq);
            for (int r = 0; r < R; r++) {
                __m256i p16;
                if (kind == K_Q4_0) p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(wq[r], xq), xc);
                if (kind == K_Q4_1) p16 = _mm256_maddubs_epi16(wq[r], xq);
                /* signed x signed: move w's sign onto x so maddubs sees |w| */
                if (kind == K_Q8_0)
                    p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(wq[r]), _mm256_sign_epi8(xq, wq[r]));
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones16));
                acc[r][t] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw[r] * dx), acc[r][t]);
                if (kind == K_Q4_1) accm[r][t] += mw[r] * f16_load(xb + 2);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float m = accm[r][t];
            if (kind == K_Q4_1 && T == 1) m += _mm_cvtss_f32(_mm_shuffle_ps(accmv[r], accmv[r], 1));
            y[t * ldy + r] = hsum_f32x8(acc[r][t]) + m;
        }
}

/* T = 1..4 tokens at compile time for an R-row tile. */
AI void tile_q_tokens(const int kind, const int R, int T, int64_t nb, const char *w,
                      size_t ws, const char *x, size_t xs, float *y, int64_t ldy) {
    switch (T) {
    case 1: tile_q(kind, R, 1, nb, w, ws, x, xs, y, ldy); break;
    case 2: tile_q(kind, R, 2, nb, w, ws, x, xs, y, ldy); break;
    case 3: tile_q(kind, R, 3, nb, w, ws, x, xs, y, ldy); break;
    default: tile_q(kind, R, 4, nb, w, ws, x, xs, y, ldy); break;
    }
}

AI void gemm_q(const int kind, int64_t cols, const void *W, size_t ws, const void *X,
               size_t xs, int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    /* prompt batches: whole 8-row tiles in x86_avx2_prefill.c, the rest here */
    if (n_tok >= PQ_PREFILL_MIN_TOK) {
        const int wt = kind == K_Q4_0 ? PQ_TYPE_Q4_0 : kind == K_Q4_1 ? PQ_TYPE_Q4_1 : PQ_TYPE_Q8_0;
        r0 = pq_prefill_avx2(wt, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
    }
    const int64_t nb = cols / 32;
    const int64_t chunk = pq_token_chunk(xs, n_tok);
    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        const int64_t tn = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        const char *x = (const char *)X + t0 * xs;
        int64_t r = r0;
        if (tn == 1) { /* decode: 8 rows share each activation block */
            for (; r + 8 <= r1; r += 8)
                tile_q(kind, 8, 1, nb, (const char *)W + r * ws, ws, x, xs, Y + t0 * ldy + r, ldy);
            for (; r + 4 <= r1; r += 4)
                tile_q(kind, 4, 1, nb, (const char *)W + r * ws, ws, x, xs, Y + t0 * ldy + r, ldy);
        }
        for (; r + 2 <= r1; r += 2)
            for (int64_t t = 0; t < tn; t += 4)
                tile_q_tokens(kind, 2, (int)(tn - t < 4 ? tn - t : 4), nb, (const char *)W + r * ws,
                              ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy);
        for (; r < r1; r++)
            for (int64_t t = 0; t < tn; t += 4)
                tile_q_tokens(kind, 1, (int)(tn - t < 4 ? tn - t : 4), nb, (const char *)W + r * ws,
                              ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy);
    }
}

static void gemm_q4_0(int64_t cols, const void *W, size_t ws, const void *X, size_t xs,
                      int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    gemm_q(K_Q4_0, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
}
static void gemm_q4_1(int64_t cols, const void *W, size_t ws, const void *X, size_t xs,
                      int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    gemm_q(K_Q4_1, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
}
static void gemm_q8_0(int64_t cols, const void *W, size_t ws, const void *X, size_t xs,
                      int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    gemm_q(K_Q8_0, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
}

/* ---- float-weight gemm tiles (activations f32) ------------------------------- */

enum { K_F32, K_F16, K_BF16 };

/* 8 weights at element i of row w, as f32. */
AI __m256 load_w8(const int kind, const char *w, int64_t i) {
    if (kind == K_F32) return _mm256_loadu_ps((const float *)w + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (kind == K_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* bf16 */
}

AI float load_w1(const int kind, const char *w, int64_t i) {
    if (kind == K_F32) return ((const float *)w)[i];
    if (kind == K_F16) return _cvtsh_ss(((const uint16_t *)w)[i]);
    return pq_bf16_to_fp32(((const uint16_t *)w)[i]);
}

AI void tile_f(const int kind, const int R, const int T, int64_t cols, const char *w,
               size_t ws, const char *x, size_t xs, float *y, int64_t ldy) {
    __m256 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= cols; i += 8) {
        __m256 wv[4];
        /* decode: L2 prefetch as in tile_q, one line per row per 64 bytes */
        if (T == 1 && (i & (kind == K_F32 ? 15 : 31)) == 0)
            for (int r = 0; r < R; r++)
                _mm_prefetch(w + r * ws + pq_prefetch_ahead(R, ws) + i * (kind == K_F32 ? 4 : 2), _MM_HINT_T1);
        for (int r = 0; r < R; r++) wv[r] = load_w8(kind, w + r * ws, i);
        for (int t = 0; t < T; t++) {
            const __m256 xv = _mm256_loadu_ps((const float *)(x + t * xs) + i);
            for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float s = hsum_f32x8(acc[r][t]);
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

AI void gemm_f(const int kind, int64_t cols, const void *W, size_t ws, const void *X,
               size_t xs, int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t chunk = pq_token_chunk(xs, n_tok);
    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        const int64_t tn = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        const char *x = (const char *)X + t0 * xs;
        int64_t r = r0;
        if (tn == 1) {
            for (; r + 4 <= r1; r += 4)
                tile_f(kind, 4, 1, cols, (const char *)W + r * ws, ws, x, xs, Y + t0 * ldy + r, ldy);
        }
        for (; r + 2 <= r1; r += 2)
            for (int64_t t = 0; t < tn; t += 4)
                tile_f_tokens(kind, 2, (int)(tn - t < 4 ? tn - t : 4), cols, (const char *)W + r * ws,
                              ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy);
        for (; r < r1; r++)
            for (int64_t t = 0; t < tn; t += 4)
                tile_f_tokens(kind, 1, (int)(tn - t < 4 ? tn - t : 4), cols, (const char *)W + r * ws,
                              ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy);
    }
}

static void gemm_f32(int64_t cols, const void *W, size_t ws, const void *X, size_t xs,
                     int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    gemm_f(K_F32, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
}
static void gemm_f16(int64_t cols, const void *W, size_t ws, const void *X, size_t xs,
                     int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    gemm_f(K_F16, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
}
static void gemm_bf16(int64_t cols, const void *W, size_t ws, const void *X, size_t xs,
                      int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    gemm_f(K_BF16, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
}

/* ---- attention helpers ------------------------------------------------------------ */

static float dot_f32(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum_f32x8(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static float dot_f16(const uint16_t *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(load_w8(K_F16, (const char *)a, i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(load_w8(K_F16, (const char *)a, i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(load_w8(K_F16, (const char *)a, i), _mm256_loadu_ps(b + i), s0);
    float s = hsum_f32x8(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += _cvtsh_ss(a[i]) * b[i];
    return s;
}

static void axpy_f16(float a, const uint16_t *x, float *y, int64_t n) {
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, load_w8(K_F16, (const char *)x, i),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * _cvtsh_ss(x[i]);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

/* ---- the table ------------------------------------------------------------------------ */

static pq_kernels table;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void) {
    pq_kernels *k = &table;
    k->name = "avx2";
    k->quantize_act[PQ_TYPE_F32] = copy_f32;
    k->quantize_act[PQ_TYPE_F16] = copy_f32;
    k->quantize_act[PQ_TYPE_BF16] = copy_f32;
    k->quantize_act[PQ_TYPE_Q4_0] = quantize_q8_0;
    k->quantize_act[PQ_TYPE_Q8_0] = quantize_q8_0;
    k->quantize_act[PQ_TYPE_Q4_1] = quantize_q8_1;
    k->gemm[PQ_TYPE_F32] = gemm_f32;
    k->gemm[PQ_TYPE_F16] = gemm_f16;
    k->gemm[PQ_TYPE_BF16] = gemm_bf16;
    k->gemm[PQ_TYPE_Q4_0] = gemm_q4_0;
    k->gemm[PQ_TYPE_Q4_1] = gemm_q4_1;
    k->gemm[PQ_TYPE_Q8_0] = gemm_q8_0;
    k->dot_f32 = dot_f32;
    k->axpy_f32 = axpy_f32;
    k->dot_f16 = dot_f16;
    k->axpy_f16 = axpy_f16;
}

const pq_kernels *pq_kernels_avx2(void) {
    pthread_once(&once, init);
    return &table;
}

#else /* not x86 */

const pq_kernels *pq_kernels_avx2(void) { return NULL; }

#endif
