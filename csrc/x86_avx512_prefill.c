/* x86_avx512_prefill.c: the prompt-batch (many tokens) quantized GEMM of the
 * "avx512" and "avx512vnni" tables, for Q4_0, Q4_1 and Q8_0 weights.
 *
 * What it is: a GEMM that keeps 16 weight rows in the 16 int32 lanes of one
 * register, so the dot products of one block with 16 rows come out of 8
 * vpdpbusd (each against 4 activation bytes broadcast to every lane) with no
 * horizontal sum, and one convert + one fma per (token, block) scale them.
 * The stored weights are not changed or copied as a whole (they stay
 * memory-mapped): each tile of 16 rows x KB blocks is interleaved on the fly
 * into a small buffer that stays in L1 while every token of the batch meets
 * it, so the shuffle is paid once per tile and used n_tok times.
 * What it is not: the decode path, or a whole gemm. x86_avx512.c's gemm_q
 * calls pq_prefill_avx512() for n_tok >= PQ_PREFILL_MIN_TOK; it returns the
 * first row it did not do (whole tiles of 16 rows from r0; r0 itself if it
 * declines: no memory for its buffers) and gemm_q finishes the rest with its
 * own tiles.
 *
 * Interleaved tile, per block (576 bytes; Q4_1 640; Q8_0 on BW 1088):
 *   g[k] (k = 0..7, 64 bytes): byte 4r+i = element 4k+i of row r, as u8
 *        (Q4: the nibble 0..15; Q8_0: w ^ 0x80 = w + 128 with VNNI, |w| on
 *        BW, followed there by g[8+k] = w for its signs)
 *   d[16] f32 row scales, then (Q4_1) m[16] f32 row minima.
 * Offsets are undone exactly in int32: dot(q - 8, x) = dot(q, x) - 8*sum(x)
 * (Q4_0) and dot(w + 128, x) - 128*sum(x) (Q8_0); sum(x) per (token, block)
 * is computed once per call, when the activations are copied into groups of
 * TT tokens (pack_x), with the f32 scales (and Q8_1's s = d*sum(q) for Q4_1's
 * m*s term), so the inner loop addresses everything from two pointers.
 * Measured bound (Zen 4): per (token, block) 8 vpdpbusd + mul + fma share the
 * two 512-bit-capable FP pipes, about 10 cycles for 16 rows x 32 MACs.
 * Overflow: vpdpbusd accumulates in int32 (|dot| < 2^21). The AVX-512BW form
 * adds the eight int16 maddubs results of a block before widening: for Q4
 * each int16 lane is a sum of 16 products |q*x| <= 15*128, at most 30720.
 */
#include "kernels.h"

#if defined(__x86_64__)

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "quants.h"
#include "x86_common.h"

/* Same target as x86_avx512.c: VNNI stays inline asm, so the plain avx512
 * table can never execute it. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), apply_to = function)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#endif

#define AI static inline __attribute__((always_inline))

enum { K_Q4_0, K_Q4_1, K_Q8_0 };

/* Tile sizes; -D overrides them for experiments. KB 16/24/32/48 and TT
 * 8/12/16 measured within noise of each other (Zen 4, 1 thread); TT 8 keeps
 * 8 accumulators + 8 weight registers + the scales well inside 32 zmm. */
#ifndef PQ_PF_KB
#define PQ_PF_KB 32
#endif
#ifndef PQ_PF_TT
#define PQ_PF_TT 8
#endif
enum {
    RT = 16,       /* rows per tile: one per int32 lane */
    KB = PQ_PF_KB, /* blocks per interleaved chunk: 18-20 KiB (L1), BW Q8_0 34 KiB */
    TT = PQ_PF_TT, /* tokens per register tile (TT f32 accumulators), <= 16 */
};

#include "x86_prefill.h" /* block sizes, pack_x: compiled for this file's target */

/* Q8_0 on AVX-512BW (no VNNI): |w| in g[0..7], w (its signs) in g[8..15] */
AI int bw_q8(const int kind, const int vnni) { return kind == K_Q8_0 && !vnni; }
AI size_t tile_block_bytes(const int kind, const int vnni) {
    return kind == K_Q4_1 ? 640 : bw_q8(kind, vnni) ? 1088 : 576;
}
AI size_t tile_scale_offset(const int kind, const int vnni) { return bw_q8(kind, vnni) ? 1024 : 512; }

/* 4 rows' 16 bytes at p + i*ws -> one register, row i in 128-bit lane i. */
AI __m512i load_4x16(const char *p, size_t ws) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + ws)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + 2 * ws)), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + 3 * ws)), 3);
}

/* 16 rows' 16 bytes at p + r*ws -> out[j] holding dword j of row r in lane r:
 * a 4x4 dword transpose inside each register, then a 4x4 transpose of
 * 128-bit lanes across the four. */
AI void transpose_16x4(const char *p, size_t ws, __m512i out[4]) {
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512i v[4];
    for (int q = 0; q < 4; q++) v[q] = _mm512_permutexvar_epi32(idx, load_4x16(p + 4 * q * ws, ws));
    /* v[q] lane j: dword j of rows 4q..4q+3 */
    const __m512i a = _mm512_shuffle_i32x4(v[0], v[1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i b = _mm512_shuffle_i32x4(v[0], v[1], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i c = _mm512_shuffle_i32x4(v[2], v[3], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i d = _mm512_shuffle_i32x4(v[2], v[3], _MM_SHUFFLE(3, 2, 3, 2));
    out[0] = _mm512_shuffle_i32x4(a, c, _MM_SHUFFLE(2, 0, 2, 0));
    out[1] = _mm512_shuffle_i32x4(a, c, _MM_SHUFFLE(3, 1, 3, 1));
    out[2] = _mm512_shuffle_i32x4(b, d, _MM_SHUFFLE(2, 0, 2, 0));
    out[3] = _mm512_shuffle_i32x4(b, d, _MM_SHUFFLE(3, 1, 3, 1));
}

/* Interleave kb blocks of 16 rows (w: row 0 at the chunk's first block) into
 * buf, in the layout above. rowoff[r] = r * ws (for the scale gather). */
AI void pack_tile(const int kind, const int vnni, const char *w, size_t ws, int64_t kb,
                  __m512i rowoff, char *buf) {
    const size_t wbs = w_block_bytes(kind), pb = tile_block_bytes(kind, vnni);
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < kb; b++) {
        const char *wb = w + b * wbs;
        __m512i *g = (__m512i *)(buf + b * pb);
        __m512i t[4];
        if (kind == K_Q8_0) {
            for (int h = 0; h < 2; h++) { /* elements 0..15, then 16..31 */
                transpose_16x4(wb + 2 + 16 * h, ws, t);
                for (int j = 0; j < 4; j++) {
                    if (vnni) {
                        g[4 * h + j] = _mm512_xor_si512(t[j], _mm512_set1_epi8((char)0x80));
                    } else {
                        g[4 * h + j] = _mm512_abs_epi8(t[j]);
                        g[8 + 4 * h + j] = t[j];
                    }
                }
            }
        } else {
            /* byte i of qs holds element i (low nibble) and i+16 (high) */
            transpose_16x4(wb + (kind == K_Q4_1 ? 4 : 2), ws, t);
            for (int j = 0; j < 4; j++) {
                g[j] = _mm512_and_si512(t[j], lo4);
                g[4 + j] = _mm512_and_si512(_mm512_srli_epi16(t[j], 4), lo4);
            }
        }
        /* the first 4 bytes of each row's block: d (and Q4_1's m) as fp16 */
        const __m512i dm = _mm512_i32gather_epi32(rowoff, wb, 1);
        _mm512_store_ps((float *)(buf + b * pb + tile_scale_offset(kind, vnni)), _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)));
        if (kind == K_Q4_1)
            _mm512_store_ps((float *)(buf + b * pb + 576), _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))));
    }
}

/* int32 lanes r: acc + sum over k of dot(g[k] lane r, the 4 bytes x[4k..4k+3]).
 * VNNI: 8 vpdpbusd with the 4 activation bytes broadcast from memory.
 * BW, Q4: 8 maddubs summed in int16 (see the overflow note), one madd.
 * BW, Q8_0: x takes w's signs (sgn: g[8..15] in the tile) so maddubs sees
 * |w| <= 128 against |x| <= 127, at most 32512 per int16 pair sum, so each
 * maddubs gets its own madd. */
AI __m512i block_dot(const int kind, const int vnni, __m512i acc, const __m512i g[8], const char *sgn,
                     const char *x) {
    if (bw_q8(kind, vnni)) {
        for (int k = 0; k < 8; k++) {
            int32_t v;
            memcpy(&v, x + 4 * k, 4);
            const __m512i xb = _mm512_set1_epi32(v);
            const __mmask64 neg = _mm512_movepi8_mask(_mm512_load_si512((const void *)(sgn + 64 * k)));
            const __m512i xs = _mm512_mask_sub_epi8(xb, neg, _mm512_setzero_si512(), xb);
            acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(g[k], xs), _mm512_set1_epi16(1)));
        }
        return acc;
    }
    if (vnni) {
        for (int k = 0; k < 8; k++)
            __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(g[k]), "m"(*(const int32_t *)(x + 4 * k)));
        return acc;
    }
    __m512i p[8];
    for (int k = 0; k < 8; k++) {
        int32_t v;
        memcpy(&v, x + 4 * k, 4);
        p[k] = _mm512_maddubs_epi16(g[k], _mm512_set1_epi32(v));
    }
    const __m512i s = _mm512_add_epi16(_mm512_add_epi16(_mm512_add_epi16(p[0], p[1]), _mm512_add_epi16(p[2], p[3])),
                                       _mm512_add_epi16(_mm512_add_epi16(p[4], p[5]), _mm512_add_epi16(p[6], p[7])));
    return _mm512_add_epi32(acc, _mm512_madd_epi16(s, _mm512_set1_epi16(1)));
}

/* Y[j*ldy + 0..15] (+)= the chunk's dot products of the tile's 16 rows with T
 * tokens; xp: the token group's packed activations at the chunk's first
 * block. first: the chunk starts the row, so store instead of add. */
AI void tile_tokens(const int kind, const int vnni, const int T, int64_t kb, const char *buf,
                    const char *xp, float *y, int64_t ldy, int first) {
    const size_t pb = tile_block_bytes(kind, vnni), pbx = xpack_block_bytes();
    __m512 acc[16];
    for (int j = 0; j < T; j++) acc[j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + j * ldy);
    for (int64_t b = 0; b < kb; b++, buf += pb, xp += pbx) {
        __m512i g[8];
        for (int k = 0; k < 8; k++) g[k] = _mm512_load_si512((const void *)(buf + 64 * k));
        const __m512 wd = _mm512_load_ps((const float *)(buf + tile_scale_offset(kind, vnni)));
        for (int j = 0; j < T; j++) {
            const char *cj = xp + 36 * TT + 4 * j;
            int32_t cv;
            memcpy(&cv, cj, 4);
            /* offsets: Q4_0's 8, VNNI Q8_0's 128 (BW Q8_0 is signed x signed) */
            const __m512i c0 = kind == K_Q4_0 || (kind == K_Q8_0 && vnni) ? _mm512_set1_epi32(cv)
                                                                          : _mm512_setzero_si512();
            const __m512i dot = block_dot(kind, vnni, c0, g, buf + 512, xp + 32 * j);
            const __m512 dx = _mm512_set1_ps(*(const float *)(xp + 32 * TT + 4 * j));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(wd, dx), acc[j]);
            if (kind == K_Q4_1)
                acc[j] = _mm512_fmadd_ps(_mm512_load_ps((const float *)(buf + 576)),
                                         _mm512_set1_ps(*(const float *)cj), acc[j]);
        }
    }
    for (int j = 0; j < T; j++) _mm512_storeu_ps(y + j * ldy, acc[j]);
}

AI void tile_tokens_n(const int kind, const int vnni, int T, int64_t kb, const char *buf,
                      const char *xp, float *y, int64_t ldy, int first) {
    switch (T) {
#define CASE(n) case n: if (n <= TT) tile_tokens(kind, vnni, n, kb, buf, xp, y, ldy, first); break;
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
        CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15)
#undef CASE
    default: tile_tokens(kind, vnni, TT, kb, buf, xp, y, ldy, first); break;
    }
}

AI int64_t gemm_tiles(const int kind, const int vnni, int64_t cols, const char *W, size_t ws,
                      const char *X, size_t xs, int64_t n_tok, float *Y, int64_t ldy,
                      int64_t r0, int64_t r1) {
    const int64_t nb = cols / 32, ntiles = (r1 - r0) / RT;
    const size_t wbs = w_block_bytes(kind), pb = tile_block_bytes(kind, vnni);
    if (ntiles == 0 || nb == 0 || ws > (size_t)INT32_MAX / RT) return r0;
    const size_t tile_bytes = (size_t)KB * pb;
    const int64_t tpass = token_pass(nb, n_tok), ngroups = (tpass + TT - 1) / TT;
    const size_t x_bytes = (size_t)ngroups * nb * xpack_block_bytes();
    size_t have;
    char *mem = pq_gemm_scratch_get(&have); /* the eval's, 64-byte aligned */
    const int own = !mem || have < tile_bytes + x_bytes;
    if (own) mem = aligned_alloc(64, (tile_bytes + x_bytes + 63) & ~(size_t)63); /* C11: a multiple of 64 */
    if (!mem) return r0; /* the caller's own tiles do the rows */
    char *buf = mem, *xpk = mem + tile_bytes;
    const __m512i rowoff = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                              _mm512_set1_epi32((int)ws));
    for (int64_t t0 = 0; t0 < n_tok; t0 += tpass) {
        const int64_t tn = n_tok - t0 < tpass ? n_tok - t0 : tpass;
        pack_x(kind, nb, X + t0 * xs, xs, tn, xpk);
        for (int64_t i = 0; i < ntiles; i++) {
            const int64_t r = r0 + i * RT;
            for (int64_t b0 = 0; b0 < nb; b0 += KB) {
                const int64_t kb = nb - b0 < KB ? nb - b0 : KB;
                pack_tile(kind, vnni, W + r * ws + b0 * wbs, ws, kb, rowoff, buf);
                for (int64_t t = 0; t < tn; t += TT)
                    tile_tokens_n(kind, vnni, (int)(tn - t < TT ? tn - t : TT), kb, buf,
                                  xpk + ((t / TT) * nb + b0) * xpack_block_bytes(), Y + (t0 + t) * ldy + r,
                                  ldy, b0 == 0);
            }
        }
    }
    if (own) free(mem);
    return r0 + ntiles * RT;
}

int64_t pq_prefill_avx512(int wtype, int vnni, int64_t cols, const void *W, size_t ws,
                          const void *X, size_t xs, int64_t n_tok, float *Y, int64_t ldy,
                          int64_t r0, int64_t r1) {
    const char *w = W, *x = X;
    if (n_tok < PQ_PREFILL_MIN_TOK) return r0;
    if (wtype == PQ_TYPE_Q4_0)
        return vnni ? gemm_tiles(K_Q4_0, 1, cols, w, ws, x, xs, n_tok, Y, ldy, r0, r1)
                    : gemm_tiles(K_Q4_0, 0, cols, w, ws, x, xs, n_tok, Y, ldy, r0, r1);
    if (wtype == PQ_TYPE_Q4_1)
        return vnni ? gemm_tiles(K_Q4_1, 1, cols, w, ws, x, xs, n_tok, Y, ldy, r0, r1)
                    : gemm_tiles(K_Q4_1, 0, cols, w, ws, x, xs, n_tok, Y, ldy, r0, r1);
    if (wtype == PQ_TYPE_Q8_0)
        return vnni ? gemm_tiles(K_Q8_0, 1, cols, w, ws, x, xs, n_tok, Y, ldy, r0, r1)
                    : gemm_tiles(K_Q8_0, 0, cols, w, ws, x, xs, n_tok, Y, ldy, r0, r1);
    return r0;
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif /* __x86_64__ */
