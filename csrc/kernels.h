/* kernels.h: the internal kernel table shared by the forward pass and the
 * per-ISA kernel files. Not part of the public API (that is pq.h).
 *
 * Every entry has a scalar reference twin in quants.c; SIMD variants
 * (x86_avx2.c, x86_avx512.c, arm_neon.c) fill the same table with the same
 * signatures, and dispatch.c picks one table once at start-up.
 */
#ifndef PQ_KERNELS_H
#define PQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "pq.h"

#define PQ_TYPE_COUNT 32 /* table size, indexed by GGML type id */

/* Quantize n floats (n a multiple of the partner block size) into the
 * activation format that pairs with a weight type (see pq_act_type). */
typedef void (*pq_quantize_fn)(const float *x, void *y, int64_t n);

/* Y[t*ldy + r] = dot(W row r, X row t) for r in [r0, r1), t in [0, n_tok).
 * W rows are w_stride bytes apart, X rows (already in the partner format)
 * x_stride bytes apart; cols is the logical row length in elements.
 * Shape: W (rows, cols) @ X (n_tok, cols)^T -> Y (n_tok, rows). */
typedef void (*pq_gemm_fn)(int64_t cols, const void *W, size_t w_stride,
                           const void *X, size_t x_stride, int64_t n_tok,
                           float *Y, int64_t ldy, int64_t r0, int64_t r1);

/* Causal attention of a block of query rows against one kv head.
 * Rows ("lanes") j in [0, n_tok*g): token t = j / g, head i = j % g, the query
 * Q + t*q_ld + i*hd (floats), output O + t*o_ld + i*hd. Lane j sees the keys
 * and values of positions 0 .. n_past + t (rows of K and V, kv_ld elements
 * apart, f32 or f16 as the cache holds them):
 *   s_p = scale * dot(q, K_p); w = softmax(s) in f32, max subtracted;
 *   o = sum_p w_p V_p.
 * Shapes: Q (n_tok, g, hd) @ K (n_past+n_tok, hd)^T -> (n_tok*g, n_past+n_tok)
 * scores, @ V (n_past+n_tok, hd) -> O (n_tok, g, hd).
 * scratch holds at least pq_attn_scratch_floats(n_past + n_tok, hd) floats,
 * 64-byte aligned. SIMD variants pass over the keys once per group of up to
 * PQ_ATTN_LANES_MAX lanes, in register-wide chunks of pq_kernels.attn_lanes. */
typedef void (*pq_attn_fn)(int64_t hd, const float *Q, int64_t q_ld, int g, int64_t n_tok,
                           int64_t n_past, const void *K, const void *V, int64_t kv_ld,
                           float scale, float *O, int64_t o_ld, float *scratch);

enum { PQ_ATTN_LANES_MAX = 64, PQ_ATTN_KEY_CHUNK = 64 };

/* Scores (n_keys, lanes), Q^T and O^T (hd, lanes), max and sum (lanes), and
 * one chunk of keys or values converted to f32 (PQ_ATTN_KEY_CHUNK, hd). */
static inline size_t pq_attn_scratch_floats(int64_t n_keys, int64_t hd) {
    return (size_t)(n_keys + 2 * hd + 2) * PQ_ATTN_LANES_MAX + (size_t)PQ_ATTN_KEY_CHUNK * hd;
}

typedef struct pq_kernels {
    const char *name;                          /* "scalar", "avx2", ... */
    pq_quantize_fn quantize_act[PQ_TYPE_COUNT]; /* by weight type */
    pq_gemm_fn gemm[PQ_TYPE_COUNT];             /* by weight type */
    /* Vector helpers over KV-cache rows, f32 or f16 storage (the forward
     * pass now uses the attention kernels below instead). */
    float (*dot_f32)(const float *a, const float *b, int64_t n);
    void (*axpy_f32)(float a, const float *x, float *y, int64_t n); /* y += a*x */
    float (*dot_f16)(const uint16_t *a, const float *b, int64_t n);
    void (*axpy_f16)(float a, const uint16_t *x, float *y, int64_t n);
    /* Blocked causal attention (prefill), by cache type, and the lanes one
     * SIMD pass covers (1 for the scalar twin). */
    pq_attn_fn attn_f32, attn_f16;
    int attn_lanes;
    /* The same attention for a few query rows (decode): lanes over
     * head_dim, a key/value row read once for the heads of a call. */
    pq_attn_fn attn_dec_f32, attn_dec_f16;
    /* SwiGLU's elementwise step: g[i] = silu(g[i]) * up[i], silu(x) = x / (1 + exp(-x)). */
    void (*silu_mul)(float *g, const float *up, int64_t n);
} pq_kernels;

/* Per-thread scratch for kernels that re-lay their operands (the x86
 * interleaved prompt GEMMs). forward.c hands each pool worker a buffer of
 * pq_gemm_scratch_bytes(widest row, n_batch) for the duration of an eval, so
 * evaluation allocates nothing; a kernel that finds none, or one too small
 * (the test hooks), allocates its own for the call and frees it.
 * The bound: a weight tile of at most 64 KiB plus packed activations of at
 * most PQ_GEMM_XBUDGET bytes (a share of L3, see x86_prefill.h) plus one
 * group of up to 16 tokens, at 40 bytes per token per 32-column block. */
#define PQ_GEMM_XBUDGET (4u << 20)
static inline size_t pq_gemm_scratch_bytes(int64_t max_cols, int64_t n_batch) {
    const size_t per_tok = (size_t)(max_cols / 32 + 1) * 40;
    size_t x = (size_t)n_batch * per_tok;
    if (x > PQ_GEMM_XBUDGET) x = PQ_GEMM_XBUDGET;
    return (64u << 10) + x + 16 * per_tok + 64;
}
void pq_gemm_scratch_set(void *p, size_t bytes); /* this thread's; NULL: none */
void *pq_gemm_scratch_get(size_t *bytes);

/* The active table; set by dispatch before any model is built. */
const pq_kernels *pq_kernels_get(void);

/* The partner activation type of a weight type (Q8_0 for Q4_0 and Q8_0,
 * Q8_1 for Q4_1, F32 for F32/F16/BF16), and the bytes of one activation row
 * of cols elements in it. -1 / 0 for an unsupported weight type. */
int pq_act_type(int wtype);
size_t pq_act_row_bytes(int wtype, int64_t cols);

/* Bytes of one row of n elements of type t (0 if n is not a whole number of
 * blocks or t is unknown). */
size_t pq_row_bytes(int type, int64_t n);

/* The tables each ISA file provides (NULL-returning stubs when not built). */
const pq_kernels *pq_kernels_scalar(void);
const pq_kernels *pq_kernels_avx2(void);
const pq_kernels *pq_kernels_avx512(void);
const pq_kernels *pq_kernels_avx512vnni(void);
const pq_kernels *pq_kernels_neon(void);

#endif /* PQ_KERNELS_H */
