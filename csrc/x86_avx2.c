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
 * has its own kernels: Q4_0/Q4_1 fold four rows' int16 sums before one
 * madd/cvt/fma (gemv_q4), floats run gemv_f; both prefetch a short distance
 * and never past their rows. Q8_0 decode runs tile_q with 8 rows.
 * Attention: only its vector primitives are here; the drivers are in
 * attn_common.h (shared with x86_avx512.c and arm_neon.c).
 * Intel intrinsics guide: https://www.intel.com/content/www/us/en/docs/intrinsics-guide/
 */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <math.h>
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

AI float hmax_f32x8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
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
               size_t ws, const char *x, size_t xs, float *y, int64_t ldy, const char *end) {
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
    const size_t pf = pq_prefetch_ahead_clamped(R, ws);
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
                 * row per 64 bytes: every block for Q8_0, every other for Q4;
                 * never past the call's rows (end). Unclamped 64 KiB ahead,
                 * SmolLM2-135M Q8_0 decoded 0.90x / 0.94x as fast at 2 / 1
                 * threads (this table timed on Zen 4, in-process A/B). */
                if ((kind == K_Q8_0 || (b & 1) == 0) && wb + pf < end) _mm_prefetch(wb + pf, _MM_HINT_T1);
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

/* ---- Q4 decode (n_tok == 1): four rows x two blocks per step ----------------------- */

/* A decode matvec reads every weight once, so its cost is instructions per
 * weight. Per row and block pair: one 16-byte load and one inserted load give
 * [b0 quants | b1 quants], and / shift / and split the nibbles, two maddubs
 * against activations re-laid once per call (xpair) and one add give the row's
 * int16 partial sums. Four rows' partial sums then fold (two rounds of unpack
 * + add, int16 still: at most 8 * 2 * 15 * 128 = 30720) so that one madd,
 * one cvt and one fma finish four rows x two blocks, with one lane per (row,
 * block). The scales of those 8 (row, block)s are gathered with scalar loads
 * into one xmm and converted at once. About half the vector instructions per
 * weight of the tile_q decode branch above. */

/* Activations of two blocks, matching the layout of the folded sums: bytes
 * 16i..16i+15 and lanes 4i..4i+3 belong to block i of the pair (lane 4i+k to
 * row k of a four-row group). */
typedef struct {
    __m256i lo; /* elements 0..15 of each block (meet the low nibbles) */
    __m256i hi; /* elements 16..31 (meet the high nibbles) */
    __m256i c;  /* Q4_0: int32 -8*sum(x) of block i in lanes 4i..4i+3;
                 * Q4_1: f32 s of block i in lanes 4i..4i+3 */
    __m256 d;   /* f32 activation scale of block i in lanes 4i..4i+3 */
} xpair;        /* 128 bytes */

/* Columns re-laid per pass: 128 pairs = 8192 columns = 16 KiB of stack; longer
 * rows go in several passes over the rows, each adding into Y. */
enum { PAIR_CHUNK = 128 };

/* Activation blocks 2g, 2g+1 (those < nb; the rest zero) -> one xpair. */
AI void pair_x(const int kind, const char *x, int64_t nb, int64_t g, xpair *out) {
    const size_t xbs = kind == K_Q4_1 ? 36 : 34, off = kind == K_Q4_1 ? 4 : 2;
    __m128i lo[2], hi[2];
    float d[2] = {0.0f, 0.0f}, s[2] = {0.0f, 0.0f};
    int c[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        lo[i] = hi[i] = _mm_setzero_si128();
        if (2 * g + i >= nb) continue;
        const char *xb = x + (2 * g + i) * xbs;
        lo[i] = _mm_loadu_si128((const __m128i *)(xb + off));
        hi[i] = _mm_loadu_si128((const __m128i *)(xb + off + 16));
        d[i] = f16_load(xb);
        if (kind == K_Q4_1) s[i] = f16_load(xb + 2);
        for (int j = 0; j < 32; j++) c[i] -= 8 * (int8_t)xb[off + j]; /* dot(q-8, x) = dot(q, x) - 8*sum(x) */
    }
    out->lo = _mm256_set_m128i(lo[1], lo[0]);
    out->hi = _mm256_set_m128i(hi[1], hi[0]);
    out->d = _mm256_setr_ps(d[0], d[0], d[0], d[0], d[1], d[1], d[1], d[1]);
    if (kind == K_Q4_0) out->c = _mm256_setr_epi32(c[0], c[0], c[0], c[0], c[1], c[1], c[1], c[1]);
    else out->c = _mm256_castps_si256(_mm256_setr_ps(s[0], s[0], s[0], s[0], s[1], s[1], s[1], s[1]));
}

/* One row's block pair at wb (two = 0: block 0 only, block 1's quants read as
 * zero and never loaded): int16 sums of 4 products, [b0 x 8 | b1 x 8]. */
AI __m256i pair_dot16(const int kind, const int two, const xpair *xp, const char *wb) {
    const size_t wbs = kind == K_Q4_0 ? 18 : 20, off = kind == K_Q4_0 ? 2 : 4;
    const __m128i q0 = _mm_loadu_si128((const __m128i *)(wb + off));
    const __m128i q1 = two ? _mm_loadu_si128((const __m128i *)(wb + wbs + off)) : _mm_setzero_si128();
    const __m256i q = _mm256_set_m128i(q1, q0);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_and_si256(q, m4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    return _mm256_add_epi16(_mm256_maddubs_epi16(lo, xp->lo), _mm256_maddubs_epi16(hi, xp->hi));
}

/* Fold two rows' int16 sums: each 128-bit lane (one block) -> [a a b b a a b b]. */
AI __m256i fold16(__m256i a, __m256i b) {
    return _mm256_add_epi16(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
}

/* fp16 at p, as the low 16 bits of an integer. */
AI uint64_t h16(const char *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

/* Four rows (wr[0..3]) x the block pair at byte offset o: acc (+ accm, Q4_1's
 * m*s) += one lane per (row k, block i) at 4i+k. */
AI void pair_rows4(const int kind, const int two, const xpair *xp, const char *const wr[4],
                   size_t o, size_t pf, const char *end, __m256 *acc, __m256 *accm) {
    const size_t wbs = kind == K_Q4_0 ? 18 : 20;
    __m256i s16[4];
    for (int k = 0; k < 4; k++) {
        /* L2 prefetch (x86_common.h), not past the call's rows; a pair is
         * <= 40 bytes, so one line per pair and row misses none */
        if (wr[k] + pf + o < end) _mm_prefetch(wr[k] + pf + o, _MM_HINT_T1);
        s16[k] = pair_dot16(kind, two, xp, wr[k] + o);
    }
    const __m256i f = _mm256_add_epi16(_mm256_unpacklo_epi64(fold16(s16[0], s16[1]), fold16(s16[2], s16[3])),
                                       _mm256_unpackhi_epi64(fold16(s16[0], s16[1]), fold16(s16[2], s16[3])));
    __m256i i32 = _mm256_madd_epi16(f, _mm256_set1_epi16(1));
    if (kind == K_Q4_0) i32 = _mm256_add_epi32(i32, xp->c);
    /* the 8 (row, block) scales (Q4_1: and minima), by scalar loads */
    uint64_t d0 = 0, d1 = 0, m0 = 0, m1 = 0;
    for (int k = 0; k < 4; k++) {
        d0 |= h16(wr[k] + o) << (16 * k);
        if (two) d1 |= h16(wr[k] + o + wbs) << (16 * k);
        if (kind == K_Q4_1) {
            m0 |= h16(wr[k] + o + 2) << (16 * k);
            if (two) m1 |= h16(wr[k] + o + wbs + 2) << (16 * k);
        }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_set_epi64x((long long)d1, (long long)d0));
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32), _mm256_mul_ps(dw, xp->d), *acc);
    if (kind == K_Q4_1)
        *accm = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_set_epi64x((long long)m1, (long long)m0)),
                                _mm256_castsi256_ps(xp->c), *accm);
}

/* y[r] (add = 0) or y[r] += (add = 1) for rows w + r*ws, r < n (1..4; the
 * missing rows repeat row 0 and are not stored): pairs [0, np) of xp, the last
 * one holding one block if odd. */
AI void tile_q4_dec(const int kind, const xpair *xp, int64_t np, int odd, const char *w, size_t ws,
                    const char *end, int n, float *y, int add) {
    const size_t pb = kind == K_Q4_0 ? 36 : 40; /* bytes of a weight block pair */
    const size_t pf = pq_prefetch_ahead_clamped(4, ws);
    const char *wr[4];
    for (int k = 0; k < 4; k++) wr[k] = w + (k < n ? k : 0) * ws;
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    const int64_t nfull = odd ? np - 1 : np;
    for (int64_t g = 0; g < nfull; g++) pair_rows4(kind, 1, xp + g, wr, g * pb, pf, end, &acc, &accm);
    if (odd) pair_rows4(kind, 0, xp + nfull, wr, nfull * pb, pf, end, &acc, &accm);
    if (kind == K_Q4_1) acc = _mm256_add_ps(acc, accm);
    float v[4];
    _mm_storeu_ps(v, _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
    for (int k = 0; k < n; k++) y[k] = add ? y[k] + v[k] : v[k];
}

/* y[r] = dot(W row r, x) for r in [r0, r1): W (rows, cols) @ x (cols). */
AI void gemv_q4(const int kind, int64_t cols, const char *W, size_t ws, const char *x, float *y,
                int64_t r0, int64_t r1) {
    const size_t xbs = kind == K_Q4_1 ? 36 : 34, wbs = kind == K_Q4_0 ? 18 : 20;
    const int64_t nb = cols / 32;
    xpair xp[PAIR_CHUNK];
    if (nb <= 0) /* no columns: empty dot products (the passes below would not run) */
        for (int64_t r = r0; r < r1; r++) y[r] = 0.0f;
    for (int64_t b0 = 0; b0 < nb; b0 += 2 * PAIR_CHUNK) {
        const int64_t nbc = nb - b0 < 2 * PAIR_CHUNK ? nb - b0 : 2 * PAIR_CHUNK;
        const int64_t np = (nbc + 1) / 2;
        const char *xc = x + b0 * xbs, *wc = W + b0 * wbs;
        for (int64_t g = 0; g < np; g++) pair_x(kind, xc, nbc, g, &xp[g]);
        for (int64_t r = r0; r < r1; r += 4)
            tile_q4_dec(kind, xp, np, (int)(nbc & 1), wc + r * ws, ws, W + r1 * ws,
                        (int)(r1 - r < 4 ? r1 - r : 4), y + r, b0 > 0);
    }
}

/* T = 1..4 tokens at compile time for an R-row tile. */
AI void tile_q_tokens(const int kind, const int R, int T, int64_t nb, const char *w,
                      size_t ws, const char *x, size_t xs, float *y, int64_t ldy, const char *end) {
    switch (T) {
    case 1: tile_q(kind, R, 1, nb, w, ws, x, xs, y, ldy, end); break;
    case 2: tile_q(kind, R, 2, nb, w, ws, x, xs, y, ldy, end); break;
    case 3: tile_q(kind, R, 3, nb, w, ws, x, xs, y, ldy, end); break;
    default: tile_q(kind, R, 4, nb, w, ws, x, xs, y, ldy, end); break;
    }
}

AI void gemm_q(const int kind, int64_t cols, const void *W, size_t ws, const void *X,
               size_t xs, int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    if (n_tok == 1 && kind != K_Q8_0) { /* decode: the four-row kernel above */
        gemv_q4(kind, cols, (const char *)W, ws, (const char *)X, Y, r0, r1);
        return;
    }
    /* prompt batches: whole 8-row tiles in x86_avx2_prefill.c, the rest here */
    if (n_tok >= PQ_PREFILL_MIN_TOK) {
        const int wt = kind == K_Q4_0 ? PQ_TYPE_Q4_0 : kind == K_Q4_1 ? PQ_TYPE_Q4_1 : PQ_TYPE_Q8_0;
        r0 = pq_prefill_avx2(wt, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
    }
    const int64_t nb = cols / 32;
    const int64_t chunk = pq_token_chunk(xs, n_tok);
    const char *end = (const char *)W + r1 * ws; /* decode prefetches stop here */
    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        const int64_t tn = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        const char *x = (const char *)X + t0 * xs;
        int64_t r = r0;
        if (tn == 1) { /* decode: 8 rows share each activation block */
            for (; r + 8 <= r1; r += 8)
                tile_q(kind, 8, 1, nb, (const char *)W + r * ws, ws, x, xs, Y + t0 * ldy + r, ldy, end);
            for (; r + 4 <= r1; r += 4)
                tile_q(kind, 4, 1, nb, (const char *)W + r * ws, ws, x, xs, Y + t0 * ldy + r, ldy, end);
        }
        for (; r + 2 <= r1; r += 2)
            for (int64_t t = 0; t < tn; t += 4)
                tile_q_tokens(kind, 2, (int)(tn - t < 4 ? tn - t : 4), nb, (const char *)W + r * ws,
                              ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy, end);
        for (; r < r1; r++)
            for (int64_t t = 0; t < tn; t += 4)
                tile_q_tokens(kind, 1, (int)(tn - t < 4 ? tn - t : 4), nb, (const char *)W + r * ws,
                              ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy, end);
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

/* Decode (n_tok == 1): y[r] = dot(W row r, x) for r in [r0, r1), R = 4 rows
 * per 8 columns (then single rows). Memory-bound, so what matters is the
 * prefetch: ~16 KiB ahead, one line per row per 64 bytes, never past the
 * call's rows (x86_common.h, pq_prefetch_ahead_clamped). */
AI void gemv_f_rows(const int kind, const int R, int64_t cols, const char *w, size_t ws,
                    const float *x, const char *end, float *y) {
    const size_t es = kind == K_F32 ? 4 : 2; /* bytes per weight */
    const size_t pf = pq_prefetch_ahead_clamped(R, ws);
    __m256 acc[4];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= cols; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        for (int r = 0; r < R; r++) {
            const char *pa = w + r * ws + pf + i * es;
            if ((i & (kind == K_F32 ? 15 : 31)) == 0 && pa < end) _mm_prefetch(pa, _MM_HINT_T1);
            acc[r] = _mm256_fmadd_ps(load_w8(kind, w + r * ws, i), xv, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        float s = hsum_f32x8(acc[r]);
        for (int64_t j = i; j < cols; j++) s += load_w1(kind, w + r * ws, j) * x[j];
        y[r] = s;
    }
}

AI void gemv_f(const int kind, int64_t cols, const char *W, size_t ws, const float *x, float *y,
               int64_t r0, int64_t r1) {
    const char *end = W + r1 * ws;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) gemv_f_rows(kind, 4, cols, W + r * ws, ws, x, end, y + r);
    for (; r < r1; r++) gemv_f_rows(kind, 1, cols, W + r * ws, ws, x, end, y + r);
}

AI void gemm_f(const int kind, int64_t cols, const void *W, size_t ws, const void *X,
               size_t xs, int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    if (n_tok == 1) { /* decode: gemv_f above */
        gemv_f(kind, cols, (const char *)W, ws, (const float *)X, Y, r0, r1);
        return;
    }
    const int64_t chunk = pq_token_chunk(xs, n_tok);
    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        const int64_t tn = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        const char *x = (const char *)X + t0 * xs;
        if (tn == 1) { /* a last chunk of one token streams the weights: the decode kernel */
            gemv_f(kind, cols, (const char *)W, ws, (const float *)x, Y + t0 * ldy, r0, r1);
            continue;
        }
        int64_t r = r0;
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

/* ---- attention primitives (drivers: attn_common.h) ---------------------------------- */

/* Blocked (prefill): 8 query rows a register. A key or value element enters
 * as a broadcast f32 (vbroadcastss). */
enum { AW = 8, VT = 8 };

/* exp(x) for x <= 0 (-inf gives 0), 8 lanes, within 2 ulp of expf down to
 * -87.3 (below that, where expf is subnormal, 0): x = n ln2 + r with
 * |r| <= ln2/2 (ln2 in two parts, so r is exact to about 2^-32), exp(r) by
 * its degree-7 Taylor polynomial (truncation |r|^8/8! < 6e-9, a tenth of an
 * ulp), times 2^n built in the exponent field. */
AI __m256 attn_exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_max_ps(x, lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

/* One f16 cache row -> hd f32, 8 at a time, scalar tail. */
AI void attn_row_f16(const uint16_t *x, int64_t hd, float *out) {
    int64_t d = 0;
    for (; d + 8 <= hd; d += 8) _mm256_storeu_ps(out + d, load_w8(K_F16, (const char *)x, d));
    for (; d < hd; d++) out[d] = _cvtsh_ss(x[d]);
}

/* S[i] (8 lanes) = sum_d Q^T[d] * k_i[d] for P keys k_i = k + i*kld. */
AI void attn_score_tile(const int P, int64_t hd, const float *qt, const float *k, int64_t kld,
                        float *s) {
    __m256 acc[8];
    for (int i = 0; i < P; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d++) {
        const __m256 q = _mm256_loadu_ps(qt + d * AW);
        for (int i = 0; i < P; i++) acc[i] = _mm256_fmadd_ps(q, _mm256_broadcast_ss(k + i * kld + d), acc[i]);
    }
    for (int i = 0; i < P; i++) _mm256_storeu_ps(s + i * AW, acc[i]);
}

/* O^T[i] (8 lanes) += sum_p W[p] * v_p[i] over kn values, for D columns i. */
AI void attn_value_tile(const int D, int64_t kn, const float *w, const float *v, int64_t vld,
                        float *ot) {
    __m256 acc[8];
    for (int i = 0; i < D; i++) acc[i] = _mm256_loadu_ps(ot + i * AW);
    for (int64_t p = 0; p < kn; p++) {
        const __m256 wp = _mm256_loadu_ps(w + p * AW);
        for (int i = 0; i < D; i++) acc[i] = _mm256_fmadd_ps(wp, _mm256_broadcast_ss(v + p * vld + i), acc[i]);
    }
    for (int i = 0; i < D; i++) _mm256_storeu_ps(ot + i * AW, acc[i]);
}

/* One lane chunk, s (nk, 8): scale; keys after a lane's last (only from
 * diag on) to -inf; s = exp(s - max) in place; the 8 lane sums to sum. */
AI void attn_softmax_lanes(float *s, int64_t nk, int64_t diag, const int32_t *last, float scale,
                           float *sum_out) {
    const __m256 sc = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lastv = _mm256_loadu_si256((const __m256i *)last);
    __m256 mx = ninf, sum = _mm256_setzero_ps();
    for (int64_t p = 0; p < nk; p++) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + p * AW), sc);
        if (p >= diag) {
            const __m256i after = _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)p), lastv);
            v = _mm256_blendv_ps(v, ninf, _mm256_castsi256_ps(after));
        }
        _mm256_storeu_ps(s + p * AW, v);
        mx = _mm256_max_ps(mx, v);
    }
    for (int64_t p = 0; p < nk; p++) {
        const __m256 e = attn_exp8(_mm256_sub_ps(_mm256_loadu_ps(s + p * AW), mx));
        _mm256_storeu_ps(s + p * AW, e);
        sum = _mm256_add_ps(sum, e);
    }
    _mm256_storeu_ps(sum_out, sum);
}

/* O^T (hd, 8) /= the 8 lane sums. */
AI void attn_div_lanes(float *o, int64_t hd, const float *sum) {
    const __m256 sumv = _mm256_loadu_ps(sum);
    for (int64_t d = 0; d < hd; d++) _mm256_storeu_ps(o + d * AW, _mm256_div_ps(_mm256_loadu_ps(o + d * AW), sumv));
}

/* Decode: 8 head_dim elements a register, one accumulator a head; values
 * keep 4 FMA chains running. */
enum { DW = 8, DEC_CHAINS = 4 };

AI __m256 dec_row8(const int f16, const void *X, int64_t i) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)X + i)));
    return _mm256_loadu_ps((const float *)X + i);
}

/* t[h] = q_h . k over [0, hdv) for the H heads q + h*hd. */
AI void dec_dots(const int f16, const int H, int64_t hdv, int64_t hd, const char *k, const float *q,
                 float *t) {
    __m256 acc[4];
    for (int h = 0; h < H; h++) acc[h] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hdv; d += 8) {
        const __m256 r = dec_row8(f16, k, d);
        for (int h = 0; h < H; h++) acc[h] = _mm256_fmadd_ps(r, _mm256_loadu_ps(q + h * hd + d), acc[h]);
    }
    for (int h = 0; h < H; h++) t[h] = hsum_f32x8(acc[h]);
}

/* sh = exp(sh - max sh) over n_keys scores in place; returns their sum. */
AI float dec_softmax(float *sh, int64_t n_keys) {
    float tail[8];
    const int64_t n8 = n_keys & ~(int64_t)7;
    __m256 mx = _mm256_set1_ps(-INFINITY), sv = _mm256_setzero_ps();
    for (int64_t p = 0; p < n8; p += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sh + p));
    float m = hmax_f32x8(mx);
    for (int64_t p = n8; p < n_keys; p++) m = sh[p] > m ? sh[p] : m;
    mx = _mm256_set1_ps(m);
    for (int64_t p = 0; p < n8; p += 8) {
        const __m256 e = attn_exp8(_mm256_sub_ps(_mm256_loadu_ps(sh + p), mx));
        _mm256_storeu_ps(sh + p, e);
        sv = _mm256_add_ps(sv, e);
    }
    for (int j = 0; j < 8; j++) tail[j] = n8 + j < n_keys ? sh[n8 + j] : -INFINITY;
    const __m256 e = attn_exp8(_mm256_sub_ps(_mm256_loadu_ps(tail), mx));
    _mm256_storeu_ps(tail, e);
    for (int64_t p = n8; p < n_keys; p++) sh[p] = tail[p - n8];
    return hsum_f32x8(_mm256_add_ps(sv, e));
}

/* Columns [d, d + 8*CC) of the outputs of H heads: o = sum_p w_p V_p / sum
 * (the same per column whatever CC and H, so results do not depend on them). */
AI void dec_values(const int f16, const int H, const int CC, int64_t d, int64_t hd, int64_t n_keys,
                   const void *V, int64_t kv_ld, const float *s, const float *sum, float *o) {
    const size_t es = f16 ? 2 : 4;
    __m256 ov[4][4];
    for (int h = 0; h < H; h++)
        for (int c = 0; c < CC; c++) ov[h][c] = _mm256_setzero_ps();
    for (int64_t p = 0; p < n_keys; p++) {
        const char *v = (const char *)V + p * kv_ld * es;
        __m256 r[4];
        for (int c = 0; c < CC; c++) r[c] = dec_row8(f16, v, d + 8 * c);
        for (int h = 0; h < H; h++) {
            const __m256 w = _mm256_broadcast_ss(s + h * n_keys + p);
            for (int c = 0; c < CC; c++) ov[h][c] = _mm256_fmadd_ps(w, r[c], ov[h][c]);
        }
    }
    for (int h = 0; h < H; h++)
        for (int c = 0; c < CC; c++)
            _mm256_storeu_ps(o + h * hd + d + 8 * c, _mm256_div_ps(ov[h][c], _mm256_set1_ps(sum[h])));
}

#include "attn_common.h"

/* ---- SwiGLU ------------------------------------------------------------------------ */

/* g = silu(g) * up, 8 lanes, scalar tail. silu(x) = x * s with
 * s = 1 / (1 + e) for x >= 0 and e / (1 + e) below, e = exp(-|x|) <= 1, so
 * the exponential never overflows (attn_exp8 is for arguments <= 0). */
static void silu_mul(float *g, const float *up, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = attn_exp8(_mm256_or_ps(x, sign)); /* -|x| */
        const __m256 neg = _mm256_cmp_ps(x, zero, _CMP_LT_OQ);
        const __m256 s = _mm256_div_ps(_mm256_blendv_ps(one, e, neg), _mm256_add_ps(one, e));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_mul_ps(x, s), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * up[i];
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
    k->attn_f32 = attn_f32;
    k->attn_f16 = attn_f16;
    k->attn_lanes = AW;
    k->attn_dec_f32 = attn_dec_f32;
    k->attn_dec_f16 = attn_dec_f16;
    k->silu_mul = silu_mul;
}

const pq_kernels *pq_kernels_avx2(void) {
    pthread_once(&once, init);
    return &table;
}

#else /* not x86 */

const pq_kernels *pq_kernels_avx2(void) { return NULL; }

#endif
