/* x86_common.h: ISA-neutral helpers shared by the x86 kernel files. */
#ifndef PQ_X86_COMMON_H
#define PQ_X86_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Tokens per pass over the weights in a prompt batch: as many activation rows
 * as fit in about 256 KiB (a share of L2), a multiple of 4, at least 4, so
 * the rows of one chunk stay cached while every weight tile meets them. */
static inline int64_t pq_token_chunk(size_t x_stride, int64_t n_tok) {
    int64_t c = (int64_t)((256u << 10) / (x_stride ? x_stride : 1)) & ~(int64_t)3;
    if (c < 4) c = 4;
    return c < n_tok ? c : (n_tok > 0 ? n_tok : 1);
}

/* A decode software-prefetch distance of `ahead` bytes rounded up to a whole
 * number of tiles of R rows of ws bytes, so that w + r*ws + distance is row r
 * of a later tile at the same column (rows are contiguous). */
static inline size_t pq_prefetch_tiles(int R, size_t ws, size_t ahead) {
    const size_t tile = (size_t)R * ws;
    return tile ? (ahead + tile - 1) / tile * tile : ahead;
}

/* The distance every decode kernel uses: about 16 KiB ahead, never past the
 * end of the call's rows. In a decode step the matrices are used in an order
 * unlike the file's (llama GGUFs sort tensors by name: down, gate, up, k,
 * output, q, v), so the lines past a matrix's end are rarely the next ones
 * used, and with two or more workers they are another worker's rows; a long
 * distance also leaves more of each matrix's start to demand misses.
 * Measured on Zen 4: 1 thread, 576-1536-column Q4_0 matrices called in a
 * scattered order, 64 KiB unclamped 9-21 GB/s, clamped 10-22, clamped at 16
 * KiB 14-26 (SmolLM2-135M Q4_0 decode ~10 % faster); SmolLM2 Q8_0 decode at
 * 2 threads 13-17 % faster clamped at 16 KiB than 64 KiB unclamped (the last
 * kernels to change, session 5). */
static inline size_t pq_prefetch_ahead_clamped(int R, size_t ws) {
    return pq_prefetch_tiles(R, ws, 16u << 10);
}

/* Prompt-batch GEMMs with row-interleaved weight tiles built on the fly
 * (x86_avx512_prefill.c, x86_avx2_prefill.c). Each does rows [r0, r0 + k*R)
 * (R = 16 rows on AVX-512, 8 on AVX2) of a quantized gemm, same arguments as
 * a pq_gemm_fn, when n_tok >= PQ_PREFILL_MIN_TOK, and returns the first row
 * it did not do: r0 if it declines (a type it lacks, no memory). vnni selects
 * the VNNI (1) or AVX-512BW (0) form. */
/* Break-even measured at 2-3 tokens (2048x2048, and 16384x4096 read from
 * DRAM, 1 thread, Zen 4); at 4 tokens the interleaved path was already 1.1x
 * (Q8_0) to 2x (Q4_0 on avx2) the older 4x4 tiles. */
#ifndef PQ_PREFILL_MIN_TOK
#define PQ_PREFILL_MIN_TOK 4
#endif
int64_t pq_prefill_avx512(int wtype, int vnni, int64_t cols, const void *W, size_t ws,
                          const void *X, size_t xs, int64_t n_tok, float *Y, int64_t ldy,
                          int64_t r0, int64_t r1);
int64_t pq_prefill_avx2(int wtype, int64_t cols, const void *W, size_t ws, const void *X,
                        size_t xs, int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1);

#endif /* PQ_X86_COMMON_H */
