/* x86_avx2_prefill.c: the prompt-batch (many tokens) quantized GEMM of the
 * "avx2" table (AVX2 + FMA + F16C), for Q4_0, Q4_1 and Q8_0 weights.
 *
 * What it is: the AVX2 form of x86_avx512_prefill.c (read that file's
 * comment first): 8 weight rows in the 8 int32 lanes of one register, so a
 * block's dot products for 8 rows take 8 maddubs against 4 broadcast
 * activation bytes each, summed in int16, one madd, one cvt, one mul and one
 * fma, with no horizontal sum. Each tile of 8 rows x KB blocks is interleaved
 * on the fly into a small buffer (9-10 KiB, L1); the stored weights are not
 * copied as a whole.
 * Q8_0 (w + 128 would saturate maddubs) keeps |w| in the tile and w's signs
 * beside it, and moves the signs onto the activation bytes: 8 more ops per
 * (token, block) than Q4, about 1.7x the older tiles rather than 3x.
 * What it is not: the decode path, or a whole gemm: x86_avx2.c's gemm_q
 * calls pq_prefill_avx2() for n_tok >= PQ_PREFILL_MIN_TOK and finishes the
 * rows from the one it returns.
 *
 * Interleaved tile, per block (288 bytes; Q4_1 320; Q8_0 544):
 *   g[k] (k = 0..7, 32 bytes): byte 4r+i = element 4k+i of row r (Q4: the
 *        nibble 0..15; Q8_0: |w|), then for Q8_0 g[8+k] = w (the signs)
 *   d[8] f32 row scales, then (Q4_1) m[8] f32 row minima.
 * Overflow: each int16 lane of the summed maddubs results is a sum of 16
 * products |q*x| <= 15*128, at most 30720 < 2^15.
 */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "quants.h"
#include "x86_common.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#endif

#define AI static inline __attribute__((always_inline))

enum { K_Q4_0, K_Q4_1, K_Q8_0 };

/* Tile sizes (-D overrides for experiments). 16 ymm registers: 8 weight
 * groups, the scales, TT accumulators and the temporaries; TT 2/3/4/6
 * measured 166/170/183/190 GFLOP/s (Q4_0 2048x2048, n_tok 512, noisy):
 * 4 spills little and loses little. */
#ifndef PQ_PF2_TT
#define PQ_PF2_TT 4
#endif
enum {
    RT = 8,         /* rows per tile: one per int32 lane */
    KB = 32,        /* blocks per interleaved chunk: KB * 288-544 bytes, in L1 */
    TT = PQ_PF2_TT, /* tokens per register tile, <= 8 */
};

#include "x86_prefill.h" /* block sizes, pack_x: compiled for this file's target */

AI size_t tile_block_bytes(const int kind) { return kind == K_Q4_1 ? 320 : kind == K_Q8_0 ? 544 : 288; }
AI size_t tile_scale_offset(const int kind) { return kind == K_Q8_0 ? 512 : 256; }

/* 8 rows' 16 bytes at p + r*ws -> out[j] holding dword j of row r in lane r:
 * rows r and r+4 share a register (one per 128-bit lane), then a 4x4 dword
 * transpose inside each lane. */
AI void transpose_8x4(const char *p, size_t ws, __m256i out[4]) {
    __m256i v[4];
    for (int q = 0; q < 4; q++)
        v[q] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(p + q * ws))),
                                       _mm_loadu_si128((const __m128i *)(p + (q + 4) * ws)), 1);
    const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    out[0] = _mm256_unpacklo_epi64(t0, t2);
    out[1] = _mm256_unpackhi_epi64(t0, t2);
    out[2] = _mm256_unpacklo_epi64(t1, t3);
    out[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* Interleave kb blocks of 8 rows (w: row 0 at the chunk's first block) into
 * buf, in the layout above. */
AI void pack_tile(const int kind, const char *w, size_t ws, int64_t kb, char *buf) {
    const size_t wbs = w_block_bytes(kind), pb = tile_block_bytes(kind);
    const __m256i lo4 = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < kb; b++) {
        const char *wb = w + b * wbs;
        __m256i *g = (__m256i *)(buf + b * pb);
        __m256i t[4];
        if (kind == K_Q8_0) { /* g[k] = |w|, g[8 + k] = w (its signs) */
            for (int h = 0; h < 2; h++) {
                transpose_8x4(wb + 2 + 16 * h, ws, t);
                for (int j = 0; j < 4; j++) {
                    g[4 * h + j] = _mm256_abs_epi8(t[j]);
                    g[8 + 4 * h + j] = t[j];
                }
            }
        } else {
            /* byte i of qs holds element i (low nibble) and i+16 (high) */
            transpose_8x4(wb + (kind == K_Q4_1 ? 4 : 2), ws, t);
            for (int j = 0; j < 4; j++) {
                g[j] = _mm256_and_si256(t[j], lo4);
                g[4 + j] = _mm256_and_si256(_mm256_srli_epi16(t[j], 4), lo4);
            }
        }
        uint16_t d[RT], m[RT];
        for (int r = 0; r < RT; r++) {
            memcpy(&d[r], wb + r * ws, 2);
            if (kind == K_Q4_1) memcpy(&m[r], wb + r * ws + 2, 2);
        }
        _mm256_store_ps((float *)(buf + b * pb + tile_scale_offset(kind)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d)));
        if (kind == K_Q4_1)
            _mm256_store_ps((float *)(buf + b * pb + 288), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)m)));
    }
}

/* int32 lanes r: acc + sum over k of dot(g[k] lane r, the 4 bytes x[4k..4k+3]):
 * 8 maddubs summed in int16 (see the overflow note), one madd.
 * Q8_0: x takes w's signs (sgn, from the tile) so maddubs sees |w| <= 128
 * against |x| <= 127: one int16 pair sum is at most 32512, so each maddubs
 * is widened by its own madd. */
AI __m256i block_dot(const int kind, __m256i acc, const __m256i g[8], const char *sgn, const char *x) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (kind == K_Q8_0) {
        for (int k = 0; k < 8; k++) {
            int32_t v;
            memcpy(&v, x + 4 * k, 4);
            const __m256i xs = _mm256_sign_epi8(_mm256_set1_epi32(v), _mm256_load_si256((const __m256i *)(sgn + 32 * k)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(g[k], xs), ones));
        }
        return acc;
    }
    __m256i p[8];
    for (int k = 0; k < 8; k++) {
        int32_t v;
        memcpy(&v, x + 4 * k, 4);
        p[k] = _mm256_maddubs_epi16(g[k], _mm256_set1_epi32(v));
    }
    const __m256i s = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(p[0], p[1]), _mm256_add_epi16(p[2], p[3])),
                                       _mm256_add_epi16(_mm256_add_epi16(p[4], p[5]), _mm256_add_epi16(p[6], p[7])));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(s, ones));
}

/* Y[j*ldy + 0..7] (+)= the chunk's dot products of the tile's 8 rows with T
 * tokens; xp: the token group's packed activations at the chunk's first
 * block. first: the chunk starts the row, so store instead of add. */
AI void tile_tokens(const int kind, const int T, int64_t kb, const char *buf, const char *xp,
                    float *y, int64_t ldy, int first) {
    const size_t pb = tile_block_bytes(kind), pbx = xpack_block_bytes();
    __m256 acc[8];
    for (int j = 0; j < T; j++) acc[j] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(y + j * ldy);
    for (int64_t b = 0; b < kb; b++, buf += pb, xp += pbx) {
        __m256i g[8];
        for (int k = 0; k < 8; k++) g[k] = _mm256_load_si256((const __m256i *)(buf + 32 * k));
        const __m256 wd = _mm256_load_ps((const float *)(buf + tile_scale_offset(kind)));
        for (int j = 0; j < T; j++) {
            const char *cj = xp + 36 * TT + 4 * j;
            int32_t cv;
            memcpy(&cv, cj, 4);
            /* Q8_0 here is signed x signed: no offset to correct */
            const __m256i c0 = kind == K_Q4_0 ? _mm256_set1_epi32(cv) : _mm256_setzero_si256();
            const __m256i dot = block_dot(kind, c0, g, buf + 256, xp + 32 * j);
            const __m256 dx = _mm256_broadcast_ss((const float *)(xp + 32 * TT + 4 * j));
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(wd, dx), acc[j]);
            if (kind == K_Q4_1)
                acc[j] = _mm256_fmadd_ps(_mm256_load_ps((const float *)(buf + 288)),
                                         _mm256_broadcast_ss((const float *)cj), acc[j]);
        }
    }
    for (int j = 0; j < T; j++) _mm256_storeu_ps(y + j * ldy, acc[j]);
}

AI void tile_tokens_n(const int kind, int T, int64_t kb, const char *buf, const char *xp, float *y,
                      int64_t ldy, int first) {
    switch (T) {
#define CASE(n) case n: if (n <= TT) tile_tokens(kind, n, kb, buf, xp, y, ldy, first); break;
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
    }
}

AI int64_t gemm_tiles(const int kind, int64_t cols, const char *W, size_t ws, const char *X,
                      size_t xs, int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nb = cols / 32, ntiles = (r1 - r0) / RT;
    const size_t wbs = w_block_bytes(kind), pb = tile_block_bytes(kind);
    if (ntiles == 0 || nb == 0) return r0;
    const size_t tile_bytes = (size_t)KB * pb;
    const int64_t tpass = token_pass(nb, n_tok), ngroups = (tpass + TT - 1) / TT;
    const size_t bytes = tile_bytes + (size_t)ngroups * nb * xpack_block_bytes();
    size_t have;
    char *mem = pq_gemm_scratch_get(&have); /* the eval's, 64-byte aligned */
    const int own = !mem || have < bytes;
    if (own) mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63); /* C11: a multiple of the alignment */
    if (!mem) return r0; /* the caller's own tiles do the rows */
    char *buf = mem, *xpk = mem + tile_bytes;
    for (int64_t t0 = 0; t0 < n_tok; t0 += tpass) {
        const int64_t tn = n_tok - t0 < tpass ? n_tok - t0 : tpass;
        pack_x(kind, nb, X + t0 * xs, xs, tn, xpk);
        for (int64_t i = 0; i < ntiles; i++) {
            const int64_t r = r0 + i * RT;
            for (int64_t b0 = 0; b0 < nb; b0 += KB) {
                const int64_t kb = nb - b0 < KB ? nb - b0 : KB;
                pack_tile(kind, W + r * ws + b0 * wbs, ws, kb, buf);
                for (int64_t t = 0; t < tn; t += TT)
                    tile_tokens_n(kind, (int)(tn - t < TT ? tn - t : TT), kb, buf,
                                  xpk + ((t / TT) * nb + b0) * xpack_block_bytes(), Y + (t0 + t) * ldy + r,
                                  ldy, b0 == 0);
            }
        }
    }
    if (own) free(mem);
    return r0 + ntiles * RT;
}

int64_t pq_prefill_avx2(int wtype, int64_t cols, const void *W, size_t ws, const void *X,
                        size_t xs, int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    if (n_tok < PQ_PREFILL_MIN_TOK) return r0;
    if (wtype == PQ_TYPE_Q4_0) return gemm_tiles(K_Q4_0, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
    if (wtype == PQ_TYPE_Q4_1) return gemm_tiles(K_Q4_1, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
    if (wtype == PQ_TYPE_Q8_0) return gemm_tiles(K_Q8_0, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);
    return r0;
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif /* x86 */
