/* x86_avx512.c: the "avx512" (F/BW/VL/DQ) and "avx512vnni" kernel tables,
 * for Intel Skylake-SP / Ice Lake and later and AMD Zen 4 and later.
 *
 * What it is: gemm kernels that take two 32-element blocks per 512-bit
 * register; the two tables share one body and differ in the int8 dot product
 * (maddubs+madd on AVX-512BW, one vpdpbusd with VNNI) and in how Q8_0's
 * signed weights meet it. The activation quantizers come from the avx2 table
 * (every AVX-512 CPU has AVX2); the float gemms and dot/axpy are redone here
 * at 16 lanes with masked tails.
 * What it is not: a choice of variant (dispatch.c). On non-x86 builds both
 * table functions return NULL.
 *
 * Block-pair trick: the two blocks of a Q4 pair are contiguous (36 or 40
 * bytes), so one masked load brings both, and one vpermw per row gathers the
 * nibbles and another the two fp16 scales, laid out to match the int32 lanes
 * of the dot product. Masked loads never fault on masked-out bytes, so the
 * last block of a matrix is read safely. Q4 decode (n_tok == 1) steps four
 * blocks per row instead, against activations re-laid once per call, and
 * folds row pairs before the float work (gemv_q4); float decode is gemv_f.
 * Attention: the vector primitives and the decode tile are here; the
 * drivers are in attn_common.h (shared with x86_avx2.c and arm_neon.c).
 * Intel intrinsics guide: https://www.intel.com/content/www/us/en/docs/intrinsics-guide/
 */
#include "kernels.h"

#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "quants.h"
#include "x86_common.h"

/* Every function below is compiled for this ISA (the VNNI instruction is
 * inline asm, see dot_u8s8); no FMA contraction except where written. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), apply_to = function)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#endif

#define AI static inline __attribute__((always_inline))

/* acc (16 x int32) += sum of 4 adjacent u8*s8 products. The VNNI form is one
 * instruction (inline asm, so this file needs no VNNI target and the plain
 * table can never execute it); the BW form widens through int16, safe here
 * because every caller keeps |u8 * s8 pair sums| < 2^15. */
AI __m512i dot_u8s8(const int vnni, __m512i acc, __m512i u8, __m512i s8) {
    if (vnni) {
        __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
        return acc;
    }
    const __m512i p16 = _mm512_maddubs_epi16(u8, s8);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(p16, _mm512_set1_epi16(1)));
}

/* One fp16 value at p -> f32 (F16C). */
AI float f16_load(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ---- quantized gemm ------------------------------------------------------------- */

enum { K_Q4_0, K_Q4_1, K_Q8_0 };

/* Weight-side data of one block pair of one row. */
typedef struct {
    __m512i q;  /* u8 operand of the dot product */
    __m512i sm; /* Q8_0 on BW: mask trick needs w's signs (as a vector of w) */
    __m512 d;   /* fp32 scales per int32 lane */
    __m512i z;  /* the loaded words (Q4_1: the minima are words 1 and 11) */
} wpair;

/* vpermw word indices (fp16 scales, nibble bytes) into a loaded block pair,
 * so that each int32 lane of the dot product meets its own block's scales:
 * Q4 layout [b0 lo | b1 lo | b0 hi | b1 hi] (128-bit lanes), Q8_0 [b0 | b1]. */
#define IDX static const short __attribute__((aligned(64)))
IDX IDX_Q4_0_QS[32] = {1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17,
                       1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17};
IDX IDX_Q4_0_D[32] = {0, 0, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0, 9, 9, 9, 9};
IDX IDX_Q4_1_QS[32] = {2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19,
                       2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19};
IDX IDX_Q4_1_D[32] = {0, 0, 0, 0, 10, 10, 10, 10, 0, 0, 0, 0, 10, 10, 10, 10};
/* Q4_1 minima (W words 1, 11) and Q8_1 sums (X words 1, 19) of a pair, to be
 * written into word slots 2k, 2k+1 under a mask */
IDX IDX_Q4_1_M[32] = {1, 11, 1, 11, 1, 11, 1, 11, 1, 11, 1, 11, 1, 11, 1, 11,
                      1, 11, 1, 11, 1, 11, 1, 11, 1, 11, 1, 11, 1, 11, 1, 11};
IDX IDX_Q8_0_D[32] = {0, 0, 0, 0, 0, 0, 0, 0, 17, 17, 17, 17, 17, 17, 17, 17};
IDX IDX_X80_Q4_D[32] = {0, 0, 0, 0, 17, 17, 17, 17, 0, 0, 0, 0, 17, 17, 17, 17};
IDX IDX_X81_D[32] = {0, 0, 0, 0, 18, 18, 18, 18, 0, 0, 0, 0, 18, 18, 18, 18};
IDX IDX_X81_S[32] = {1, 19, 1, 19, 1, 19, 1, 19, 1, 19, 1, 19, 1, 19, 1, 19,
                     1, 19, 1, 19, 1, 19, 1, 19, 1, 19, 1, 19, 1, 19, 1, 19};
#undef IDX

AI __m512i idx_load(const short *p) { return _mm512_load_si512((const void *)p); }

/* 16 fp16 values chosen by idx from the words of z -> 16 floats. */
AI __m512 gather_f16(const short *idx, __m512i z) {
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx_load(idx), z)));
}

/* The weight side of one block pair (two = 0: only the first block, the
 * second half zero). */
AI wpair load_w(const int kind, const int vnni, const int two, const char *wb) {
    wpair p;
    p.sm = _mm512_setzero_si512();
    p.z = _mm512_setzero_si512();
    if (kind == K_Q4_0 || kind == K_Q4_1) {
        const int bb = kind == K_Q4_0 ? 18 : 20; /* block bytes */
        const __mmask64 mk = ~0ULL >> (64 - (two ? 2 * bb : bb));
        const __m512i z = _mm512_maskz_loadu_epi8(mk, wb);
        /* the high 256 bits get the high nibbles: shift their words by 4 */
        const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
        const __m512i qi = idx_load(kind == K_Q4_0 ? IDX_Q4_0_QS : IDX_Q4_1_QS);
        const __m512i q = _mm512_srlv_epi16(_mm512_permutexvar_epi16(qi, z), shift);
        p.q = _mm512_and_si512(q, _mm512_set1_epi8(0x0f));
        p.d = gather_f16(kind == K_Q4_0 ? IDX_Q4_0_D : IDX_Q4_1_D, z);
        p.z = z;
    } else { /* Q8_0 */
        const __m256i q0 = _mm256_loadu_si256((const __m256i *)(wb + 2));
        const __m256i q1 = two ? _mm256_loadu_si256((const __m256i *)(wb + 36)) : _mm256_setzero_si256();
        const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
        p.d = gather_f16(IDX_Q8_0_D, _mm512_maskz_loadu_epi16(two ? 0x3ffff : 0x1ffff, wb));
        /* VNNI: w+128 is unsigned, corrected by -128*sum(x) per token.
         * BW: |w| against x with w's sign (maddubs would saturate on w+128). */
        if (vnni) p.q = _mm512_xor_si512(q, _mm512_set1_epi8((char)0x80));
        else { p.q = _mm512_abs_epi8(q); p.sm = q; }
    }
    return p;
}

/* Activation-side data of one block pair of one token. */
typedef struct {
    __m512i q;    /* s8 operand */
    __m512i corr; /* int32 lanes to start the dot from (offset correction) */
    __m512 d;     /* fp32 scales per int32 lane */
    __m512i z;    /* the loaded scale words (Q8_1: the sums s are words 1 and 19) */
} xpair;

AI xpair load_x(const int kind, const int vnni, const int two, const char *xb) {
    xpair p;
    const int bb = kind == K_Q4_1 ? 36 : 34, off = kind == K_Q4_1 ? 4 : 2, nw = bb / 2;
    const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb + off));
    const __m256i x1 = two ? _mm256_loadu_si256((const __m256i *)(xb + bb + off)) : _mm256_setzero_si256();
    __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1);
    /* Q4 weights: [b0 lo | b0 hi | b1 lo | b1 hi] -> [b0 lo | b1 lo | b0 hi | b1 hi] */
    if (kind != K_Q8_0) q = _mm512_shuffle_i64x2(q, q, _MM_SHUFFLE(3, 1, 2, 0));
    p.q = q;
    /* scales (and Q8_1 sums) only: block 1 starts at word nw, its d at nw, s at nw+1 */
    const __m512i z = _mm512_maskz_loadu_epi16(~0U >> (32 - (two ? nw + 2 : nw)), xb);
    p.d = gather_f16(kind == K_Q4_0 ? IDX_X80_Q4_D : kind == K_Q4_1 ? IDX_X81_D : IDX_Q8_0_D, z);
    p.z = z;
    /* dot(w - c, x) = dot(w, x) - c*sum(x): start the accumulation at -c*sum(x)
     * (c = 8 for Q4_0; 128 for Q8_0 under VNNI, whose weights were shifted) */
    p.corr = _mm512_setzero_si512();
    if (kind == K_Q4_0 || (kind == K_Q8_0 && vnni)) {
        const __m512i c = _mm512_set1_epi8(kind == K_Q4_0 ? 8 : (char)0x80);
        p.corr = _mm512_sub_epi32(_mm512_setzero_si512(), dot_u8s8(vnni, _mm512_setzero_si512(), c, q));
    }
    return p;
}

/* One (row, token) pair of one block pair: acc += scale * dot (Q4_1's m*s
 * terms are collected apart, see pair_step). */
AI __m512 step(const int kind, const int vnni, __m512 acc, const wpair *w, const xpair *x) {
    __m512i dot;
    if (kind == K_Q8_0 && !vnni) {
        /* x with w's sign: negate the bytes where w < 0 */
        const __mmask64 neg = _mm512_movepi8_mask(w->sm);
        const __m512i xs = _mm512_mask_sub_epi8(x->q, neg, _mm512_setzero_si512(), x->q);
        dot = dot_u8s8(0, _mm512_setzero_si512(), w->q, xs);
    } else {
        dot = dot_u8s8(vnni, x->corr, w->q, x->q);
    }
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(w->d, x->d), acc);
}

/* One block pair (two = 0: a lone last block) for an R x T tile; w and x point
 * at the pair in row 0 / token 0. Q4_1: the pair's two minima (per row) and
 * sums s (per token) go, still fp16, into word slots 2*slot, 2*slot+1 of mw /
 * sx; flush_ms turns 16 pairs of them into fmas, instead of an fma per pair. */
AI void pair_step(const int kind, const int vnni, const int R, const int T, const int two,
                  const char *w, size_t ws, const char *x, size_t xs, int slot, size_t pf,
                  const char *end, __m512 acc[4][4], __m512i mw[4], __m512i sx[4]) {
    const __mmask32 sm = 3u << (2 * slot);
    if (T == 1) { /* decode: no weight reuse, so keep each row's data short-lived */
        const xpair xp = load_x(kind, vnni, two, x);
        if (kind == K_Q4_1) sx[0] = _mm512_mask_permutexvar_epi16(sx[0], sm, idx_load(IDX_X81_S), xp.z);
        for (int r = 0; r < R; r++) {
            /* Software prefetch into L2, pf bytes (whole tiles: rows are
             * contiguous, so this is row r of a later tile at the same
             * column) ahead of the block pair in use, never past the call's
             * rows (x86_common.h, pq_prefetch_ahead_clamped). The hardware
             * prefetcher alone kept a 30 MB Q8_0 matvec with 612-byte rows at
             * ~6 GB/s; with this ~11 GB/s (1 thread, CPU time, loaded box).
             * Unclamped 64 KiB ahead, SmolLM2-135M Q8_0 at 2 threads decoded
             * 13-17 % slower (in-process A/B, 3 runs): each worker's share
             * of a matrix there is ~100-500 KiB, so 64 KiB past its end was
             * a large share of extra reads. TinyLlama-shape: no difference. */
            const char *pa = w + r * ws + pf;
            if (pa < end) _mm_prefetch(pa, _MM_HINT_T1);
            /* a Q8_0 pair is 68 bytes: one prefetch per pair would skip a
             * line now and then, which measured as half the bandwidth */
            if (kind == K_Q8_0 && pa + 64 < end) _mm_prefetch(pa + 64, _MM_HINT_T1);
            const wpair wp = load_w(kind, vnni, two, w + r * ws);
            acc[r][0] = step(kind, vnni, acc[r][0], &wp, &xp);
            if (kind == K_Q4_1) mw[r] = _mm512_mask_permutexvar_epi16(mw[r], sm, idx_load(IDX_Q4_1_M), wp.z);
        }
        return;
    }
    wpair wp[4];
    for (int r = 0; r < R; r++) {
        wp[r] = load_w(kind, vnni, two, w + r * ws);
        if (kind == K_Q4_1) mw[r] = _mm512_mask_permutexvar_epi16(mw[r], sm, idx_load(IDX_Q4_1_M), wp[r].z);
    }
    for (int t = 0; t < T; t++) {
        const xpair xp = load_x(kind, vnni, two, x + t * xs);
        if (kind == K_Q4_1) sx[t] = _mm512_mask_permutexvar_epi16(sx[t], sm, idx_load(IDX_X81_S), xp.z);
        for (int r = 0; r < R; r++) acc[r][t] = step(kind, vnni, acc[r][t], &wp[r], &xp);
    }
}

/* acc[r][t] += sum over collected slots of m * s; clears the slots. */
AI void flush_ms(const int R, const int T, __m512 acc[4][4], __m512i mw[4], __m512i sx[4]) {
    __m512 slo[4], shi[4];
    for (int t = 0; t < T; t++) {
        slo[t] = _mm512_cvtph_ps(_mm512_castsi512_si256(sx[t]));
        shi[t] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(sx[t], 1));
        sx[t] = _mm512_setzero_si512();
    }
    for (int r = 0; r < R; r++) {
        const __m512 mlo = _mm512_cvtph_ps(_mm512_castsi512_si256(mw[r]));
        const __m512 mhi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(mw[r], 1));
        mw[r] = _mm512_setzero_si512();
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm512_fmadd_ps(mhi, shi[t], _mm512_fmadd_ps(mlo, slo[t], acc[r][t]));
    }
}

/* Y[t*ldy + r] for an R x T tile over nb blocks; W (R, nb*32) @ X (T, nb*32)^T.
 * One token (decode): software prefetches stop at end. */
AI void tile_q(const int kind, const int vnni, const int R, const int T, int64_t nb,
               const char *w, size_t ws, const char *x, size_t xs, float *y, int64_t ldy,
               const char *end) {
    const size_t pf = pq_prefetch_ahead_clamped(R, ws);
    const size_t wbs = kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : 34;
    const size_t xbs = kind == K_Q4_1 ? 36 : 34;
    __m512 acc[4][4];
    __m512i mw[4], sx[4]; /* Q4_1 only */
    for (int r = 0; r < R; r++) {
        mw[r] = _mm512_setzero_si512();
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    }
    for (int t = 0; t < T; t++) sx[t] = _mm512_setzero_si512();
    int slot = 0;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        pair_step(kind, vnni, R, T, 1, w + b * wbs, ws, x + b * xbs, xs, slot, pf, end, acc, mw, sx);
        if (kind == K_Q4_1 && ++slot == 16) {
            flush_ms(R, T, acc, mw, sx);
            slot = 0;
        }
    }
    if (b < nb) { /* odd block count: the last block alone, the pair's second half zero */
        pair_step(kind, vnni, R, T, 0, w + b * wbs, ws, x + b * xbs, xs, slot, pf, end, acc, mw, sx);
        slot++;
    }
    if (kind == K_Q4_1 && slot > 0) flush_ms(R, T, acc, mw, sx);
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

AI void tile_q_tokens(const int kind, const int vnni, const int R, int T, int64_t nb,
                      const char *w, size_t ws, const char *x, size_t xs, float *y, int64_t ldy,
                      const char *end) {
    switch (T) {
    case 1: tile_q(kind, vnni, R, 1, nb, w, ws, x, xs, y, ldy, end); break;
    case 2: tile_q(kind, vnni, R, 2, nb, w, ws, x, xs, y, ldy, end); break;
    case 3: tile_q(kind, vnni, R, 3, nb, w, ws, x, xs, y, ldy, end); break;
    default: tile_q(kind, vnni, R, 4, nb, w, ws, x, xs, y, ldy, end); break;
    }
}

/* ---- Q4 decode (n_tok == 1): four blocks per row per step ------------------------ */

/* A decode matvec reads every weight once, so its cost is instructions per
 * weight. Here a row's four consecutive blocks (Q4_0 72 bytes, Q4_1 80) take
 * a 64-byte and an 8/16-byte load and one vpermt2w to gather their 64 quant
 * bytes, and / shift / and to split the nibbles and two dot products against
 * activations re-laid once per call (xquad), so no per-row activation shuffle
 * is left. Two rows' dot products then fold into one vector, and the scale
 * gather (one vpermt2w for both rows), cvtph, cvtdq, mul and fma run once per
 * row pair. On Zen 4 most of these zmm instructions issue one per cycle; with
 * one L1-resident row (the compute ceiling) this runs ~7.7 cycles per row and
 * four blocks (Q4_0 33 GB/s at ~3.6 GHz), the block-pair kernel above ~13.5
 * (19 GB/s). */

/* Activations of four blocks, matching the weight layout below: lanes (int32
 * or f32) 4i..4i+3 and bytes 16i..16i+15 belong to block i of the four. */
typedef struct {
    __m512i lo; /* elements 0..15 of each block (meet the low nibbles) */
    __m512i hi; /* elements 16..31 (meet the high nibbles) */
    __m512i c;  /* Q4_0: int32 -8*sum(x) of block i, VNNI: the start of each
                 * row's dot, spread over lanes 4i..4i+3; BW: added after the
                 * row-pair fold, in lanes 4i and 4i+1 (one per row of a pair).
                 * Q4_1: f32 s of block i in lanes 4i and 4i+1, 0 elsewhere */
    __m512 d;   /* f32 activation scale of block i in lanes 4i..4i+3 */
} xquad;        /* 256 bytes */

/* Columns re-laid per pass: 64 quads = 8192 columns = 16 KiB of stack; longer
 * rows go in several passes over the rows, each adding into Y. */
enum { QUAD_CHUNK = 64 };

/* Word indices into a quad's two loads (a = bytes 0..63, b = the 8 (Q4_0) or
 * 16 (Q4_1) bytes after them; vpermt2w index 32+k is word k of b, word 32+k
 * of the quad): the four blocks' 16 quant bytes each. Then the scales of a
 * row pair (a of row 0, a of row 1 as 32+k) in the layout of the folded dot
 * products (quad_rows): block i's row-0 scale in words 4i and 4i+2, row-1's
 * in 4i+1 and 4i+3; Q4_1's minima likewise in words 16 and up. */
#define IDX static const short __attribute__((aligned(64)))
IDX IDX4_Q4_0_QS[32] = {1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17,
                        19, 20, 21, 22, 23, 24, 25, 26, 28, 29, 30, 31, 32, 33, 34, 35};
IDX IDX4_Q4_1_QS[32] = {2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19,
                        22, 23, 24, 25, 26, 27, 28, 29, 32, 33, 34, 35, 36, 37, 38, 39};
IDX IDX4_Q4_0_D2[32] = {0, 32, 0, 32, 9, 41, 9, 41, 18, 50, 18, 50, 27, 59, 27, 59};
IDX IDX4_Q4_1_DM2[32] = {0, 32, 0, 32, 10, 42, 10, 42, 20, 52, 20, 52, 30, 62, 30, 62,
                         1, 33, 1, 33, 11, 43, 11, 43, 21, 53, 21, 53, 31, 63, 31, 63};
#undef IDX

/* Activation blocks 4g .. 4g+3 (those < nb; the rest zero) -> one xquad. */
AI void quad_x(const int kind, const int vnni, const char *x, int64_t nb, int64_t g, xquad *out) {
    const size_t xbs = kind == K_Q4_1 ? 36 : 34, off = kind == K_Q4_1 ? 4 : 2;
    __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512(), s = _mm512_setzero_si512();
    __m512 d = _mm512_setzero_ps();
    for (int i = 0; i < 4 && 4 * g + i < nb; i++) {
        const char *xb = x + (4 * g + i) * xbs;
        const __mmask16 lanes = (__mmask16)(0xF << (4 * i));
        lo = _mm512_mask_broadcast_i32x4(lo, lanes, _mm_loadu_si128((const __m128i *)(xb + off)));
        hi = _mm512_mask_broadcast_i32x4(hi, lanes, _mm_loadu_si128((const __m128i *)(xb + off + 16)));
        d = _mm512_mask_mov_ps(d, lanes, _mm512_set1_ps(f16_load(xb)));
        if (kind == K_Q4_1)
            s = _mm512_mask_mov_epi32(s, (__mmask16)(3u << (4 * i)),
                                      _mm512_castps_si512(_mm512_set1_ps(f16_load(xb + 2))));
    }
    out->lo = lo;
    out->hi = hi;
    out->d = d;
    if (kind == K_Q4_0) { /* dot(q - 8, x) = dot(q, x) - 8*sum(x) */
        const __m512i e = _mm512_set1_epi8(8);
        const __m512i sum8 = dot_u8s8(vnni, dot_u8s8(vnni, _mm512_setzero_si512(), e, lo), e, hi);
        __m512i c = _mm512_sub_epi32(_mm512_setzero_si512(), sum8);
        if (!vnni) { /* added after the row-pair fold: the block's total in lanes 4i, 4i+1 */
            c = _mm512_add_epi32(c, _mm512_shuffle_epi32(c, _MM_PERM_BADC));
            c = _mm512_maskz_mov_epi32(0x3333, _mm512_add_epi32(c, _mm512_shuffle_epi32(c, _MM_PERM_CDAB)));
        }
        out->c = c;
    } else {
        out->c = s;
    }
}

/* One row's four blocks at wg: the dot products, 4 lanes per block (VNNI:
 * int32 with Q4_0's offset; BW: int16 pairs, at most 4 * 15 * 128 = 7680,
 * offset left for after the fold) and the first load (it holds the scales).
 * bytes: 0 for a whole quad, else the bytes of its first 1..3 blocks, read
 * with masked loads (never past a row's last block). */
AI __m512i quad_dot(const int kind, const int vnni, const xquad *xg, size_t bytes, const char *wg,
                    __m512i qi, __m512i *a_out) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i a, b; /* bytes 0..63 and 64..71 (Q4_0) / 64..79 (Q4_1) */
    if (bytes) {
        a = _mm512_maskz_loadu_epi8(~0ULL >> (64 - (bytes < 64 ? bytes : 64)), wg);
        b = _mm512_maskz_loadu_epi8(bytes > 64 ? ~0ULL >> (128 - bytes) : 0, wg + 64);
    } else {
        a = _mm512_loadu_si512((const void *)wg);
        b = kind == K_Q4_0 ? _mm512_zextsi128_si512(_mm_loadl_epi64((const __m128i *)(wg + 64)))
                           : _mm512_zextsi128_si512(_mm_loadu_si128((const __m128i *)(wg + 64)));
    }
    /* keep a in a register: the compiler would rather load it again for the
     * scale gather, a third 64-byte (line-crossing) load per row */
    __asm__("" : "+v"(a));
    const __m512i q = _mm512_permutex2var_epi16(a, qi, b);
    const __m512i lo = _mm512_and_si512(q, m4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
    *a_out = a;
    if (!vnni) /* maddubs pairs of lo and hi add up in int16; one madd per row pair later */
        return _mm512_add_epi16(_mm512_maddubs_epi16(lo, xg->lo), _mm512_maddubs_epi16(hi, xg->hi));
    const __m512i dot = dot_u8s8(vnni, kind == K_Q4_0 ? xg->c : _mm512_setzero_si512(), lo, xg->lo);
    return dot_u8s8(vnni, dot, hi, xg->hi);
}

/* One quad of R rows (R even, or 1: row 0 then also stands in for the absent
 * row 1, whose lanes the caller drops), in pairs: the two rows' dot products
 * fold into one vector (unpack lo + hi: each 128-bit lane stays one block,
 * even lanes row 0, odd lanes row 1), so the scale gather, the conversions
 * and the fma are done once per pair, not per row.
 * acc[p] (+ accm[p], Q4_1's m*s) += pair p. */
AI void quad_rows(const int kind, const int vnni, const int R, const xquad *xg, size_t bytes,
                  const char *const wr[8], size_t o, size_t pf, const char *end, __m512 acc[4],
                  __m512 accm[4]) {
    const __m512i qi = idx_load(kind == K_Q4_0 ? IDX4_Q4_0_QS : IDX4_Q4_1_QS);
    const __m512i di = idx_load(kind == K_Q4_0 ? IDX4_Q4_0_D2 : IDX4_Q4_1_DM2);
    for (int p = 0; p < (R + 1) / 2; p++) {
        __m512i a0, a1;
        /* L2 prefetch (x86_common.h): both lines a quad can start in, not
         * past the call's rows (pq_prefetch_ahead_clamped says why) */
        for (int k = 0; k < (R > 1 ? 2 : 1); k++) {
            const char *pa = wr[2 * p + k] + pf + o;
            if (pa < end) {
                _mm_prefetch(pa, _MM_HINT_T1);
                _mm_prefetch(pa + 64, _MM_HINT_T1);
            }
        }
        const __m512i i0 = quad_dot(kind, vnni, xg, bytes, wr[2 * p] + o, qi, &a0);
        const __m512i i1 = quad_dot(kind, vnni, xg, bytes, wr[R > 1 ? 2 * p + 1 : 0] + o, qi, &a1);
        __m512i i01;
        if (vnni) {
            i01 = _mm512_add_epi32(_mm512_unpacklo_epi32(i0, i1), _mm512_unpackhi_epi32(i0, i1));
        } else { /* the same fold on int16 pairs (<= 15360), then one madd for both rows */
            i01 = _mm512_add_epi16(_mm512_unpacklo_epi32(i0, i1), _mm512_unpackhi_epi32(i0, i1));
            i01 = _mm512_madd_epi16(i01, _mm512_set1_epi16(1));
            if (kind == K_Q4_0) i01 = _mm512_add_epi32(i01, xg->c);
        }
        const __m512i dm = _mm512_permutex2var_epi16(a0, di, a1);
        const __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(dm));
        acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i01), _mm512_mul_ps(dw, xg->d), acc[p]);
        if (kind == K_Q4_1) /* + m * s (s in lanes 4i, 4i+1 only) */
            accm[p] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(dm, 1)),
                                      _mm512_castsi512_ps(xg->c), accm[p]);
    }
}

/* y[r] (add = 0) or y[r] += (add = 1) for an R-row tile (R = 8, 4, 2 or 1):
 * quads [0, nq) of xq, the last one holding only `tail` blocks if tail != 0. */
AI void tile_q4_dec(const int kind, const int vnni, const int R, const xquad *xq, int64_t nq,
                    int tail, const char *w, size_t ws, const char *end, float *y, int add) {
    const size_t qb = kind == K_Q4_0 ? 72 : 80; /* bytes of 4 weight blocks */
    const size_t pf = pq_prefetch_ahead_clamped(R, ws);
    __m512 acc[4], accm[4];
    const char *wr[8]; /* one pointer per row, one offset for all (keeps GPRs free) */
    for (int r = 0; r < R; r++) wr[r] = w + r * ws;
    for (int p = 0; p < (R + 1) / 2; p++) {
        acc[p] = _mm512_setzero_ps();
        accm[p] = _mm512_setzero_ps();
    }
    const int64_t nfull = tail ? nq - 1 : nq;
    for (int64_t g = 0; g < nfull; g++) quad_rows(kind, vnni, R, xq + g, 0, wr, g * qb, pf, end, acc, accm);
    if (tail) quad_rows(kind, vnni, R, xq + nfull, (size_t)tail * (qb / 4), wr, nfull * qb, pf, end,
                        acc, accm);
    for (int r = 0; r < R; r++) {
        const __m512 v = kind == K_Q4_1 ? _mm512_add_ps(acc[r / 2], accm[r / 2]) : acc[r / 2];
        const float f = _mm512_mask_reduce_add_ps(r & 1 ? 0xAAAA : 0x5555, v);
        y[r] = add ? y[r] + f : f;
    }
}

/* y[r] = dot(W row r, x) for r in [r0, r1): W (rows, cols) @ x (cols). */
AI void gemv_q4(const int kind, const int vnni, int64_t cols, const char *W, size_t ws,
                           const char *x, float *y, int64_t r0, int64_t r1) {
    const size_t xbs = kind == K_Q4_1 ? 36 : 34, wbs = kind == K_Q4_0 ? 18 : 20;
    const int64_t nb = cols / 32;
    xquad xq[QUAD_CHUNK];
    if (nb <= 0) /* no columns: empty dot products (the passes below would not run) */
        for (int64_t r = r0; r < r1; r++) y[r] = 0.0f;
    for (int64_t b0 = 0; b0 < nb; b0 += 4 * QUAD_CHUNK) {
        const int64_t nbc = nb - b0 < 4 * QUAD_CHUNK ? nb - b0 : 4 * QUAD_CHUNK;
        const int64_t nq = (nbc + 3) / 4;
        const int tail = (int)(nbc % 4);
        const char *xc = x + b0 * xbs, *wc = W + b0 * wbs;
        for (int64_t g = 0; g < nq; g++) quad_x(kind, vnni, xc, nbc, g, &xq[g]);
        const int add = b0 > 0;
        const char *end = W + r1 * ws; /* prefetches stop here */
        int64_t r = r0;
        for (; r + 8 <= r1; r += 8) tile_q4_dec(kind, vnni, 8, xq, nq, tail, wc + r * ws, ws, end, y + r, add);
        for (; r + 4 <= r1; r += 4) tile_q4_dec(kind, vnni, 4, xq, nq, tail, wc + r * ws, ws, end, y + r, add);
        for (; r + 2 <= r1; r += 2) tile_q4_dec(kind, vnni, 2, xq, nq, tail, wc + r * ws, ws, end, y + r, add);
        for (; r < r1; r++) tile_q4_dec(kind, vnni, 1, xq, nq, tail, wc + r * ws, ws, end, y + r, add);
    }
}

/* Rows in tiles of 4 (then 1), tokens in tiles of TT = 4 within L2-sized
 * chunks (Q4_1 spills a little at 4x4 but measured faster than 4x2). Q8_0
 * decode (one token) takes the same 4-row tiles: 8-row ones, which share
 * each activation load among more rows, measured 2-7 % slower in the model
 * (SmolLM2-135M and TinyLlama-shape Q8_0, 1 and 2 threads, in-process A/B;
 * fewer concurrent row streams suit the prefetchers, see gemv_f). */
AI void gemm_q(const int kind, const int vnni, int64_t cols, const void *W, size_t ws,
               const void *X, size_t xs, int64_t n_tok, float *Y, int64_t ldy, int64_t r0,
               int64_t r1) {
    /* prompt batches: whole 16-row tiles in x86_avx512_prefill.c, the rest here */
    if (n_tok >= PQ_PREFILL_MIN_TOK) {
        const int wt = kind == K_Q4_0 ? PQ_TYPE_Q4_0 : kind == K_Q4_1 ? PQ_TYPE_Q4_1 : PQ_TYPE_Q8_0;
        r0 = pq_prefill_avx512(wt, vnni, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
    }
    const int TT = 4;
    const int64_t nb = cols / 32;
    if (n_tok == 1 && kind != K_Q8_0) { /* decode: the four-block kernel above */
        gemv_q4(kind, vnni, cols, (const char *)W, ws, (const char *)X, Y, r0, r1);
        return;
    }
    const int64_t chunk = pq_token_chunk(xs, n_tok);
    const char *end = (const char *)W + r1 * ws; /* decode prefetches stop here */
    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        const int64_t tn = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        const char *x = (const char *)X + t0 * xs;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4)
            for (int64_t t = 0; t < tn; t += TT)
                tile_q_tokens(kind, vnni, 4, (int)(tn - t < TT ? tn - t : TT), nb,
                              (const char *)W + r * ws, ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy,
                              end);
        for (; r < r1; r++)
            for (int64_t t = 0; t < tn; t += TT)
                tile_q_tokens(kind, vnni, 1, (int)(tn - t < TT ? tn - t : TT), nb,
                              (const char *)W + r * ws, ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy,
                              end);
    }
}

#define GEMM_ARGS int64_t cols, const void *W, size_t ws, const void *X, size_t xs, \
                  int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1
#define GEMM_PASS cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1
static void gemm_q4_0_bw(GEMM_ARGS) { gemm_q(K_Q4_0, 0, GEMM_PASS); }
static void gemm_q4_1_bw(GEMM_ARGS) { gemm_q(K_Q4_1, 0, GEMM_PASS); }
static void gemm_q8_0_bw(GEMM_ARGS) { gemm_q(K_Q8_0, 0, GEMM_PASS); }
static void gemm_q4_0_vnni(GEMM_ARGS) { gemm_q(K_Q4_0, 1, GEMM_PASS); }
static void gemm_q4_1_vnni(GEMM_ARGS) { gemm_q(K_Q4_1, 1, GEMM_PASS); }
static void gemm_q8_0_vnni(GEMM_ARGS) { gemm_q(K_Q8_0, 1, GEMM_PASS); }

/* ---- float-weight gemm (activations f32), 16 lanes, masked tails ---------------- */

enum { K_F32, K_F16, K_BF16 };

/* n (<= 16) weights at element i of row w, as f32; lanes >= n are 0. */
AI __m512 load_w16(const int kind, const char *w, int64_t i, __mmask16 m) {
    if (kind == K_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i);
    if (kind == K_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* bf16 */
}

AI __m512 hsum16(__m512 v[4][4]) {
    __m512 p[8], q[4], r[2];
    for (int i = 0; i < 8; i++) {
        const __m512 a = v[i / 2][(i % 2) * 2], b = v[i / 2][(i % 2) * 2 + 1];
        p[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    for (int j = 0; j < 4; j++) {
        const __m512d a = _mm512_castps_pd(p[2 * j]), b = _mm512_castps_pd(p[2 * j + 1]);
        q[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    for (int k = 0; k < 2; k++)
        r[k] = _mm512_add_ps(_mm512_shuffle_f32x4(q[2 * k], q[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(q[2 * k], q[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(r[0], r[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(r[0], r[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 16 columns (those in m) of an R x T tile. */
AI void tile_f_step(const int kind, const int R, const int T, const char *w, size_t ws,
                    const char *x, size_t xs, int64_t i, __mmask16 m, __m512 acc[4][4]) {
    __m512 wv[4];
    for (int r = 0; r < R; r++) wv[r] = load_w16(kind, w + r * ws, i, m);
    for (int t = 0; t < T; t++) {
        const __m512 xv = _mm512_maskz_loadu_ps(m, (const float *)(x + t * xs) + i);
        for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
}

AI void tile_f(const int kind, const int R, const int T, int64_t cols, const char *w,
               size_t ws, const char *x, size_t xs, float *y, int64_t ldy) {
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= cols; i += 16) tile_f_step(kind, R, T, w, ws, x, xs, i, 0xffff, acc);
    if (i < cols) tile_f_step(kind, R, T, w, ws, x, xs, i, (__mmask16)((1u << (cols - i)) - 1), acc);
    if (R == 4 && T == 4) {
        float s[16];
        _mm512_storeu_ps(s, hsum16(acc));
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < 4; t++) y[t * ldy + r] = s[4 * r + t];
        return;
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
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

/* Decode (n_tok == 1): y[r] = dot(W row r, x) for r in [r0, r1), one row at a
 * time. Memory-bound, so what matters is how the weights stream in: one row
 * after the other is one sequential stream, which the hardware prefetcher
 * follows well, plus a software prefetch ~16 KiB ahead, one line per 64
 * bytes, never past the call's rows (x86_common.h,
 * pq_prefetch_ahead_clamped). Measured on Zen 4, SmolLM2-135M F16 decode,
 * in-process A/B: 1-row against the former 4-row tiles (four streams 1152
 * bytes apart, one activation load per 4 rows) 0.87-0.89x time at 1 thread
 * and 0.93-0.97x at 2, with the file mapped in 2 MiB pages and in 4 KiB
 * pages alike; 2-row tiles were 8-10 % slower than 1-row. One accumulator,
 * although its FMA chain caps a core near 8 bytes per cycle: with two the
 * same model decoded 16 % slower at 1 thread (3 % at 2), with four a C
 * harness read no faster from DRAM. Running ahead of the prefetches does
 * not pay. (The AVX2 kernel keeps its 4-row tiles: one 8-lane chain per row
 * would cap it at half that, and a C harness read 11-18 GB/s against 16-27.) */
AI void gemv_f_row(const int kind, int64_t cols, const char *w, const float *x, size_t pf,
                   const char *end, float *y) {
    const size_t es = kind == K_F32 ? 4 : 2; /* bytes per weight */
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= cols; i += 16) {
        const char *pa = w + pf + i * es;
        if ((kind == K_F32 || (i & 31) == 0) && pa < end) _mm_prefetch(pa, _MM_HINT_T1);
        acc = _mm512_fmadd_ps(load_w16(kind, w, i, 0xffff), _mm512_loadu_ps(x + i), acc);
    }
    if (i < cols) {
        const __mmask16 m = (__mmask16)((1u << (cols - i)) - 1);
        acc = _mm512_fmadd_ps(load_w16(kind, w, i, m), _mm512_maskz_loadu_ps(m, x + i), acc);
    }
    *y = _mm512_reduce_add_ps(acc);
}

AI void gemv_f(const int kind, int64_t cols, const char *W, size_t ws, const float *x, float *y,
               int64_t r0, int64_t r1) {
    const char *end = W + r1 * ws;
    const size_t pf = pq_prefetch_ahead_clamped(1, ws);
    for (int64_t r = r0; r < r1; r++) gemv_f_row(kind, cols, W + r * ws, x, pf, end, y + r);
}

AI void gemm_f(const int kind, GEMM_ARGS) {
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
        for (; r + 4 <= r1; r += 4)
            for (int64_t t = 0; t < tn; t += 4)
                tile_f_tokens(kind, 4, (int)(tn - t < 4 ? tn - t : 4), cols, (const char *)W + r * ws,
                              ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy);
        for (; r < r1; r++)
            for (int64_t t = 0; t < tn; t += 4)
                tile_f_tokens(kind, 1, (int)(tn - t < 4 ? tn - t : 4), cols, (const char *)W + r * ws,
                              ws, x + t * xs, xs, Y + (t0 + t) * ldy + r, ldy);
    }
}

static void gemm_f32(GEMM_ARGS) { gemm_f(K_F32, GEMM_PASS); }
static void gemm_f16(GEMM_ARGS) { gemm_f(K_F16, GEMM_PASS); }
static void gemm_bf16(GEMM_ARGS) { gemm_f(K_BF16, GEMM_PASS); }

/* ---- attention helpers ------------------------------------------------------------ */

static float dot_f32(const float *a, const float *b, int64_t n) {
    __m512 s = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s);
    }
    return _mm512_reduce_add_ps(s);
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
    const __m512 av = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 r = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

static float dot_f16(const uint16_t *a, const float *b, int64_t n) {
    __m512 s = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        s = _mm512_fmadd_ps(load_w16(K_F16, (const char *)a, i, m), _mm512_maskz_loadu_ps(m, b + i), s);
    }
    return _mm512_reduce_add_ps(s);
}

static void axpy_f16(float a, const uint16_t *x, float *y, int64_t n) {
    const __m512 av = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 r = _mm512_fmadd_ps(av, load_w16(K_F16, (const char *)x, i, m),
                                         _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

/* ---- attention primitives (drivers: attn_common.h) ---------------------------------- */

/* Blocked (prefill): 16 query rows a register. A key or value element enters
 * as a broadcast f32 (an FMA memory operand). */
enum { AW = 16, VT = 16 };

/* exp(x) for x <= 0 (-inf gives 0), 16 lanes, within 2 ulp of expf:
 * x = n ln2 + r with |r| <= ln2/2 (ln2 in two parts, so r is exact to
 * about 2^-32), exp(r) by its degree-7 Taylor polynomial (truncation
 * |r|^8/8! < 6e-9, a tenth of an ulp), times 2^n by vscalefps (which also
 * gives the subnormals and 0 below -103). */
AI __m512 attn_exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* One f16 cache row -> hd f32, 16 at a time, masked tail. */
AI void attn_row_f16(const uint16_t *x, int64_t hd, float *out) {
    for (int64_t d = 0; d < hd; d += 16) {
        const __mmask16 m = hd - d >= 16 ? 0xffff : (__mmask16)((1u << (hd - d)) - 1);
        _mm512_mask_storeu_ps(out + d, m, load_w16(K_F16, (const char *)x, d, m));
    }
}

/* S[i] (16 lanes) = sum_d Q^T[d] * k_i[d] for P keys k_i = k + i*kld. */
AI void attn_score_tile(const int P, int64_t hd, const float *qt, const float *k, int64_t kld,
                        float *s) {
    __m512 acc[16];
    for (int i = 0; i < P; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t d = 0; d < hd; d++) {
        const __m512 q = _mm512_loadu_ps(qt + d * AW);
        for (int i = 0; i < P; i++) acc[i] = _mm512_fmadd_ps(q, _mm512_set1_ps(k[i * kld + d]), acc[i]);
    }
    for (int i = 0; i < P; i++) _mm512_storeu_ps(s + i * AW, acc[i]);
}

/* O^T[i] (16 lanes) += sum_p W[p] * v_p[i] over kn values, for D columns i. */
AI void attn_value_tile(const int D, int64_t kn, const float *w, const float *v, int64_t vld,
                        float *ot) {
    __m512 acc[16];
    for (int i = 0; i < D; i++) acc[i] = _mm512_loadu_ps(ot + i * AW);
    for (int64_t p = 0; p < kn; p++) {
        const __m512 wp = _mm512_loadu_ps(w + p * AW);
        for (int i = 0; i < D; i++) acc[i] = _mm512_fmadd_ps(wp, _mm512_set1_ps(v[p * vld + i]), acc[i]);
    }
    for (int i = 0; i < D; i++) _mm512_storeu_ps(ot + i * AW, acc[i]);
}

/* One lane chunk, s (nk, 16): scale; keys after a lane's last (only from
 * diag on) to -inf; s = exp(s - max) in place; the 16 lane sums to sum. */
AI void attn_softmax_lanes(float *s, int64_t nk, int64_t diag, const int32_t *last, float scale,
                           float *sum_out) {
    const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
    const __m512i lastv = _mm512_loadu_si512(last);
    __m512 mx = ninf, sum = _mm512_setzero_ps();
    for (int64_t p = 0; p < nk; p++) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s + p * AW), sc);
        if (p >= diag)
            v = _mm512_mask_blend_ps(_mm512_cmple_epi32_mask(_mm512_set1_epi32((int32_t)p), lastv), ninf, v);
        _mm512_storeu_ps(s + p * AW, v);
        mx = _mm512_max_ps(mx, v);
    }
    for (int64_t p = 0; p < nk; p++) {
        const __m512 e = attn_exp16(_mm512_sub_ps(_mm512_loadu_ps(s + p * AW), mx));
        _mm512_storeu_ps(s + p * AW, e);
        sum = _mm512_add_ps(sum, e);
    }
    _mm512_storeu_ps(sum_out, sum);
}

/* O^T (hd, 16) /= the 16 lane sums. */
AI void attn_div_lanes(float *o, int64_t hd, const float *sum) {
    const __m512 sumv = _mm512_loadu_ps(sum);
    for (int64_t d = 0; d < hd; d++) _mm512_storeu_ps(o + d * AW, _mm512_div_ps(_mm512_loadu_ps(o + d * AW), sumv));
}

/* Decode: lanes over head_dim (64 or 128: 4 or 8 registers a row): each key
 * and value row is loaded and converted once for the H query heads of a tile
 * (H * row registers <= 16), the queries and outputs stay in registers, and
 * each score costs one horizontal sum. Other head sizes go to the blocked
 * kernel. Scratch: scores (H, n_keys). */
#define ATTN_OWN_DEC_TILE

AI __m512 dec_row16(const int f16, const void *X, int64_t i) {
    if (f16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)X + i)));
    return _mm512_loadu_ps((const float *)X + i);
}

/* Heads q + h*hd (h < H) of one token against keys/values 0..n_keys-1. */
AI void dec_tile(const int f16, const int NCH, const int H, int64_t n_keys, const float *q,
                 const void *K, const void *V, int64_t kv_ld, float scale, float *o, float *s) {
    const int64_t hd = NCH * 16;
    const size_t es = f16 ? 2 : 4;
    __m512 qv[4][8], ov[4][8], rv[8];
    for (int h = 0; h < H; h++)
        for (int c = 0; c < NCH; c++) qv[h][c] = _mm512_loadu_ps(q + h * hd + c * 16);
    for (int64_t p = 0; p < n_keys; p++) {
        const char *k = (const char *)K + p * kv_ld * es;
        for (int c = 0; c < NCH; c++) rv[c] = dec_row16(f16, k, c * 16);
        for (int h = 0; h < H; h++) {
            __m512 acc = _mm512_mul_ps(qv[h][0], rv[0]);
            for (int c = 1; c < NCH; c++) acc = _mm512_fmadd_ps(qv[h][c], rv[c], acc);
            s[h * n_keys + p] = _mm512_reduce_add_ps(acc) * scale;
        }
    }
    float sum[4];
    for (int h = 0; h < H; h++) {
        float *sh = s + h * n_keys;
        __m512 mx = _mm512_set1_ps(-INFINITY), sv = _mm512_setzero_ps();
        for (int64_t p = 0; p < n_keys; p += 16) {
            const __mmask16 m = n_keys - p >= 16 ? 0xffff : (__mmask16)((1u << (n_keys - p)) - 1);
            mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, m, sh + p));
        }
        mx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        for (int64_t p = 0; p < n_keys; p += 16) {
            const __mmask16 m = n_keys - p >= 16 ? 0xffff : (__mmask16)((1u << (n_keys - p)) - 1);
            const __m512 e = _mm512_maskz_mov_ps(m, attn_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sh + p), mx)));
            _mm512_mask_storeu_ps(sh + p, m, e);
            sv = _mm512_add_ps(sv, e);
        }
        sum[h] = _mm512_reduce_add_ps(sv);
        for (int c = 0; c < NCH; c++) ov[h][c] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < n_keys; p++) {
        const char *v = (const char *)V + p * kv_ld * es;
        for (int c = 0; c < NCH; c++) rv[c] = dec_row16(f16, v, c * 16);
        for (int h = 0; h < H; h++) {
            const __m512 w = _mm512_set1_ps(s[h * n_keys + p]);
            for (int c = 0; c < NCH; c++) ov[h][c] = _mm512_fmadd_ps(w, rv[c], ov[h][c]);
        }
    }
    for (int h = 0; h < H; h++) {
        const __m512 sv = _mm512_set1_ps(sum[h]);
        for (int c = 0; c < NCH; c++) _mm512_storeu_ps(o + h * hd + c * 16, _mm512_div_ps(ov[h][c], sv));
    }
}

AI int dec_hmax(int64_t hd) { return hd == 64 ? 4 : hd == 128 ? 2 : 0; }

/* H <= dec_hmax(hd) heads of one token (hd 64 or 128). */
AI void dec_heads(const int f16, int H, int64_t hd, int64_t n_keys, const float *q, const void *K,
                  const void *V, int64_t kv_ld, float scale, float *o, float *s) {
    if (hd == 64) {
        switch (H) {
        case 1: dec_tile(f16, 4, 1, n_keys, q, K, V, kv_ld, scale, o, s); break;
        case 2: dec_tile(f16, 4, 2, n_keys, q, K, V, kv_ld, scale, o, s); break;
        case 3: dec_tile(f16, 4, 3, n_keys, q, K, V, kv_ld, scale, o, s); break;
        default: dec_tile(f16, 4, 4, n_keys, q, K, V, kv_ld, scale, o, s); break;
        }
    } else if (H == 1) {
        dec_tile(f16, 8, 1, n_keys, q, K, V, kv_ld, scale, o, s);
    } else {
        dec_tile(f16, 8, 2, n_keys, q, K, V, kv_ld, scale, o, s);
    }
}

#include "attn_common.h"

/* ---- SwiGLU ------------------------------------------------------------------------ */

/* g = silu(g) * up, 16 lanes, masked tail. silu(x) = x * s with
 * s = 1 / (1 + e) for x >= 0 and e / (1 + e) below, e = exp(-|x|) <= 1, so
 * the exponential never overflows (attn_exp16 is for arguments <= 0). */
static void silu_mul(float *g, const float *up, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 e = attn_exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
        const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
        const __m512 s = _mm512_div_ps(_mm512_mask_mov_ps(one, neg, e), _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(_mm512_mul_ps(x, s), _mm512_maskz_loadu_ps(m, up + i)));
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

/* ---- the tables ------------------------------------------------------------------------ */

static pq_kernels t512, t512vnni;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void) {
    const pq_kernels *base = pq_kernels_avx2(); /* activation quantizers */
    t512 = *base;
    t512.name = "avx512";
    t512.gemm[PQ_TYPE_F32] = gemm_f32;
    t512.gemm[PQ_TYPE_F16] = gemm_f16;
    t512.gemm[PQ_TYPE_BF16] = gemm_bf16;
    t512.gemm[PQ_TYPE_Q4_0] = gemm_q4_0_bw;
    t512.gemm[PQ_TYPE_Q4_1] = gemm_q4_1_bw;
    t512.gemm[PQ_TYPE_Q8_0] = gemm_q8_0_bw;
    t512.dot_f32 = dot_f32;
    t512.axpy_f32 = axpy_f32;
    t512.dot_f16 = dot_f16;
    t512.axpy_f16 = axpy_f16;
    t512.attn_f32 = attn_f32;
    t512.attn_f16 = attn_f16;
    t512.attn_lanes = AW;
    t512.attn_dec_f32 = attn_dec_f32;
    t512.attn_dec_f16 = attn_dec_f16;
    t512.silu_mul = silu_mul;
    t512vnni = t512;
    t512vnni.name = "avx512vnni";
    t512vnni.gemm[PQ_TYPE_Q4_0] = gemm_q4_0_vnni;
    t512vnni.gemm[PQ_TYPE_Q4_1] = gemm_q4_1_vnni;
    t512vnni.gemm[PQ_TYPE_Q8_0] = gemm_q8_0_vnni;
}

const pq_kernels *pq_kernels_avx512(void) {
    pthread_once(&once, init);
    return &t512;
}

const pq_kernels *pq_kernels_avx512vnni(void) {
    pthread_once(&once, init);
    return &t512vnni;
}

#else /* not x86-64 */

const pq_kernels *pq_kernels_avx512(void) { return NULL; }
const pq_kernels *pq_kernels_avx512vnni(void) { return NULL; }

#endif
