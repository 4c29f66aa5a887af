/* quants.c: GGML block formats in plain C, the scalar twin of every kernel.
 *
 * What it is: the reference quantizers (bit-exact with ggml's
 * quantize_row_*_ref), the dequantizers, the activation quantizers, the
 * scalar gemm / dot / axpy kernels and the "scalar" kernel table; also the
 * type helpers of pq.h and kernels.h.
 * What it is not: fast. SIMD variants live in x86_*.c / arm_neon.c and are
 * tested against the functions here.
 *
 * Bit-exactness note: the encoders compute x*id and (x*id + c) as two
 * separately rounded float operations, like ggml's reference C and the gguf
 * package's numpy twin. Contraction into an FMA (GCC's default in gnu mode on
 * targets that have FMA, e.g. aarch64) would change rounding at the .5
 * boundaries, so this file turns it off.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "quants.h"
#include "quants_ref.h"

/* ---- type helpers -------------------------------------------------------- */

int64_t pq_type_block_size(int type) {
    switch (type) {
    case PQ_TYPE_F32: case PQ_TYPE_F16: case PQ_TYPE_BF16: return 1;
    case PQ_TYPE_Q4_0: return QK4_0;
    case PQ_TYPE_Q4_1: return QK4_1;
    case PQ_TYPE_Q8_0: return QK8_0;
    case PQ_TYPE_Q8_1: return QK8_1;
    default: return 0;
    }
}

size_t pq_type_block_bytes(int type) {
    switch (type) {
    case PQ_TYPE_F32: return 4;
    case PQ_TYPE_F16: case PQ_TYPE_BF16: return 2;
    case PQ_TYPE_Q4_0: return sizeof(block_q4_0);
    case PQ_TYPE_Q4_1: return sizeof(block_q4_1);
    case PQ_TYPE_Q8_0: return sizeof(block_q8_0);
    case PQ_TYPE_Q8_1: return sizeof(block_q8_1);
    default: return 0;
    }
}

/* Weight types with a gemm in every kernel table (Q8_1 is activations only). */
int pq_type_supported(int type) {
    switch (type) {
    case PQ_TYPE_F32: case PQ_TYPE_F16: case PQ_TYPE_BF16:
    case PQ_TYPE_Q4_0: case PQ_TYPE_Q4_1: case PQ_TYPE_Q8_0: return 1;
    default: return 0;
    }
}

size_t pq_row_bytes(int type, int64_t n) {
    int64_t bs = pq_type_block_size(type);
    if (bs <= 0 || n < 0 || n % bs != 0) return 0;
    return (size_t)(n / bs) * pq_type_block_bytes(type);
}

int pq_act_type(int wtype) {
    switch (wtype) {
    case PQ_TYPE_F32: case PQ_TYPE_F16: case PQ_TYPE_BF16: return PQ_TYPE_F32;
    case PQ_TYPE_Q4_0: case PQ_TYPE_Q8_0: return PQ_TYPE_Q8_0;
    case PQ_TYPE_Q4_1: return PQ_TYPE_Q8_1;
    default: return -1;
    }
}

size_t pq_act_row_bytes(int wtype, int64_t cols) {
    int at = pq_act_type(wtype);
    return at < 0 ? 0 : pq_row_bytes(at, cols);
}

/* ---- reference encoders (one row of n floats, n % 32 == 0) --------------- */

/* Q4_0: d = (the signed value of largest magnitude) / -8, q = trunc(x/d + 8.5)
 * clamped to 15, so the extreme maps to 0 and zero maps to 8. */
void pq_quantize_row_q4_0(const float *x, void *vy, int64_t n) {
    block_q4_0 *y = vy;
    for (int64_t b = 0; b < n / QK4_0; b++, x += QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = pq_fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            const float x0 = x[j] * id, x1 = x[QK4_0 / 2 + j] * id;
            int q0 = (int8_t)(x0 + 8.5f), q1 = (int8_t)(x1 + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* Q4_1: d = (max - min) / 15, m = min, q = trunc((x - min)/d + 0.5). */
void pq_quantize_row_q4_1(const float *x, void *vy, int64_t n) {
    block_q4_1 *y = vy;
    for (int64_t b = 0; b < n / QK4_1; b++, x += QK4_1) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK4_1; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = pq_fp32_to_fp16(d);
        y[b].m = pq_fp32_to_fp16(min);
        for (int j = 0; j < QK4_1 / 2; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[QK4_1 / 2 + j] - min) * id;
            int q0 = (int8_t)(x0 + 0.5f), q1 = (int8_t)(x1 + 0.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* Q8_0: d = amax / 127, q = roundf(x / d) (ties away from zero). */
void pq_quantize_row_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = pq_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) y[b].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* Q8_1: as Q8_0, plus s = d * sum(q) (both stored as fp16), the term that
 * carries Q4_1's minimum through the dot product. */
void pq_quantize_row_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t b = 0; b < n / QK8_1; b++, x += QK8_1) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_1; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[b].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[b].qs[j];
        }
        y[b].d = pq_fp32_to_fp16(d);
        y[b].s = pq_fp32_to_fp16((float)sum * d);
    }
}

/* Activations for float weights stay f32: a copy. */
static void copy_row_f32(const float *x, void *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

static void quantize_row_f16(const float *x, void *vy, int64_t n) {
    pq_half *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = pq_fp32_to_fp16(x[i]);
}

/* Round to nearest even, NaN kept quiet (ggml_compute_fp32_to_bf16). */
static void quantize_row_bf16(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            y[i] = (uint16_t)((u >> 16) | 64);
        } else {
            y[i] = (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
        }
    }
}

/* ---- decoders (one row of n values) -------------------------------------- */

static void dequantize_row(int type, const void *vx, float *y, int64_t n) {
    switch (type) {
    case PQ_TYPE_F32:
        memcpy(y, vx, (size_t)n * sizeof(float));
        break;
    case PQ_TYPE_F16: {
        const pq_half *x = vx;
        for (int64_t i = 0; i < n; i++) y[i] = pq_fp16_to_fp32(x[i]);
        break;
    }
    case PQ_TYPE_BF16: {
        const uint16_t *x = vx;
        for (int64_t i = 0; i < n; i++) y[i] = pq_bf16_to_fp32(x[i]);
        break;
    }
    case PQ_TYPE_Q4_0: { /* y = d * (q - 8) */
        const block_q4_0 *x = vx;
        for (int64_t b = 0; b < n / QK4_0; b++, y += QK4_0) {
            const float d = pq_fp16_to_fp32(x[b].d);
            for (int j = 0; j < QK4_0 / 2; j++) {
                y[j] = d * (float)((x[b].qs[j] & 0x0f) - 8);
                y[j + QK4_0 / 2] = d * (float)((x[b].qs[j] >> 4) - 8);
            }
        }
        break;
    }
    case PQ_TYPE_Q4_1: { /* y = d * q + m */
        const block_q4_1 *x = vx;
        for (int64_t b = 0; b < n / QK4_1; b++, y += QK4_1) {
            const float d = pq_fp16_to_fp32(x[b].d), m = pq_fp16_to_fp32(x[b].m);
            for (int j = 0; j < QK4_1 / 2; j++) {
                y[j] = d * (float)(x[b].qs[j] & 0x0f) + m;
                y[j + QK4_1 / 2] = d * (float)(x[b].qs[j] >> 4) + m;
            }
        }
        break;
    }
    case PQ_TYPE_Q8_0: { /* y = d * q */
        const block_q8_0 *x = vx;
        for (int64_t b = 0; b < n / QK8_0; b++, y += QK8_0) {
            const float d = pq_fp16_to_fp32(x[b].d);
            for (int j = 0; j < QK8_0; j++) y[j] = d * (float)x[b].qs[j];
        }
        break;
    }
    case PQ_TYPE_Q8_1: { /* y = d * q (s is derived data) */
        const block_q8_1 *x = vx;
        for (int64_t b = 0; b < n / QK8_1; b++, y += QK8_1) {
            const float d = pq_fp16_to_fp32(x[b].d);
            for (int j = 0; j < QK8_1; j++) y[j] = d * (float)x[b].qs[j];
        }
        break;
    }
    default:
        break;
    }
}

/* ---- pq.h entry points ------------------------------------------------------ */

int pq_quantize(int type, const float *src, void *dst, int64_t n_rows, int64_t n_cols) {
    if (!src || !dst || n_rows < 0 || n_cols < 0) return PQ_ERR_ARG;
    if (pq_type_block_size(type) == 0) return PQ_ERR_TYPE;
    const size_t rb = pq_row_bytes(type, n_cols);
    if (rb == 0 && n_cols != 0) return PQ_ERR_SHAPE;
    pq_quantize_fn f;
    switch (type) {
    case PQ_TYPE_F32: f = copy_row_f32; break;
    case PQ_TYPE_F16: f = quantize_row_f16; break;
    case PQ_TYPE_BF16: f = quantize_row_bf16; break;
    case PQ_TYPE_Q4_0: f = pq_quantize_row_q4_0; break;
    case PQ_TYPE_Q4_1: f = pq_quantize_row_q4_1; break;
    case PQ_TYPE_Q8_0: f = pq_quantize_row_q8_0; break;
    default: f = pq_quantize_row_q8_1; break;
    }
    for (int64_t r = 0; r < n_rows; r++) f(src + r * n_cols, (char *)dst + r * rb, n_cols);
    return PQ_OK;
}

int pq_dequantize(int type, const void *src, float *dst, int64_t n_rows, int64_t n_cols) {
    if (!src || !dst || n_rows < 0 || n_cols < 0) return PQ_ERR_ARG;
    if (pq_type_block_size(type) == 0) return PQ_ERR_TYPE;
    const size_t rb = pq_row_bytes(type, n_cols);
    if (rb == 0 && n_cols != 0) return PQ_ERR_SHAPE;
    for (int64_t r = 0; r < n_rows; r++)
        dequantize_row(type, (const char *)src + r * rb, dst + r * n_cols, n_cols);
    return PQ_OK;
}

/* ---- scalar gemm: W (rows, cols) @ X (n_tok, cols)^T -> Y (n_tok, rows) ---- */

/* Each gemm below computes one dot per (row r in [r0,r1), token t) with a
 * per-row helper; the helpers are the definitions the SIMD code must match. */

static float dot_row_f32(const void *w, const void *x, int64_t n) {
    const float *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static float dot_row_f16(const void *w, const void *x, int64_t n) {
    const pq_half *a = w;
    const float *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += pq_fp16_to_fp32(a[i]) * b[i];
    return s;
}

static float dot_row_bf16(const void *w, const void *x, int64_t n) {
    const uint16_t *a = w;
    const float *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += pq_bf16_to_fp32(a[i]) * b[i];
    return s;
}

/* Q4_0 x Q8_0: sum over blocks of dw * dx * sum_j (q4_j - 8) * q8_j. */
static float dot_row_q4_0(const void *vw, const void *vx, int64_t n) {
    const block_q4_0 *w = vw;
    const block_q8_0 *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / QK4_0; b++) {
        int sumi = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            sumi += ((w[b].qs[j] & 0x0f) - 8) * x[b].qs[j];
            sumi += ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + QK4_0 / 2];
        }
        s += (float)sumi * (pq_fp16_to_fp32(w[b].d) * pq_fp16_to_fp32(x[b].d));
    }
    return s;
}

/* Q4_1 x Q8_1: sum over blocks of dw * dx * sum_j q4_j * q8_j + m * s,
 * where s = dx * sum_j q8_j carries the minimum m through. */
static float dot_row_q4_1(const void *vw, const void *vx, int64_t n) {
    const block_q4_1 *w = vw;
    const block_q8_1 *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / QK4_1; b++) {
        int sumi = 0;
        for (int j = 0; j < QK4_1 / 2; j++) {
            sumi += (w[b].qs[j] & 0x0f) * x[b].qs[j];
            sumi += (w[b].qs[j] >> 4) * x[b].qs[j + QK4_1 / 2];
        }
        s += (float)sumi * (pq_fp16_to_fp32(w[b].d) * pq_fp16_to_fp32(x[b].d)) +
             pq_fp16_to_fp32(w[b].m) * pq_fp16_to_fp32(x[b].s);
    }
    return s;
}

/* Q8_0 x Q8_0: sum over blocks of dw * dx * sum_j qw_j * qx_j. */
static float dot_row_q8_0(const void *vw, const void *vx, int64_t n) {
    const block_q8_0 *w = vw;
    const block_q8_0 *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += w[b].qs[j] * x[b].qs[j];
        s += (float)sumi * (pq_fp16_to_fp32(w[b].d) * pq_fp16_to_fp32(x[b].d));
    }
    return s;
}

typedef float (*dot_row_fn)(const void *w, const void *x, int64_t n);

/* Y[t*ldy + r] = dot(W row r, X row t) for r in [r0, r1), t in [0, n_tok). */
static void gemm_rows(dot_row_fn dot, int64_t cols, const void *W, size_t w_stride,
                      const void *X, size_t x_stride, int64_t n_tok, float *Y,
                      int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const char *w = (const char *)W + r * w_stride;
        for (int64_t t = 0; t < n_tok; t++)
            Y[t * ldy + r] = dot(w, (const char *)X + t * x_stride, cols);
    }
}

#define SCALAR_GEMM(name, dot)                                                         \
    static void name(int64_t cols, const void *W, size_t ws, const void *X, size_t xs, \
                     int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {   \
        gemm_rows(dot, cols, W, ws, X, xs, n_tok, Y, ldy, r0, r1);                     \
    }
SCALAR_GEMM(gemm_f32, dot_row_f32)
SCALAR_GEMM(gemm_f16, dot_row_f16)
SCALAR_GEMM(gemm_bf16, dot_row_bf16)
SCALAR_GEMM(gemm_q4_0, dot_row_q4_0)
SCALAR_GEMM(gemm_q4_1, dot_row_q4_1)
SCALAR_GEMM(gemm_q8_0, dot_row_q8_0)
#undef SCALAR_GEMM

/* ---- attention helpers over the KV cache --------------------------------- */

static float dot_f32(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static float dot_f16(const uint16_t *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += pq_fp16_to_fp32(a[i]) * b[i];
    return s;
}

static void axpy_f16(float a, const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * pq_fp16_to_fp32(x[i]);
}

/* Causal attention for one kv head, lane by lane (see pq_attn_fn):
 * s_p = scale * q.K_p for p <= n_past + t; w = exp(s - max) / sum;
 * o = (sum_p exp(s_p - max) V_p) / sum. kind 0: f32 cache, 1: f16. */
static void attn_rows(int kind, int64_t hd, const float *Q, int64_t q_ld, int g,
                      int64_t n_tok, int64_t n_past, const void *K, const void *V,
                      int64_t kv_ld, float scale, float *O, int64_t o_ld, float *scratch) {
    for (int64_t j = 0; j < n_tok * g; j++) {
        const int64_t t = j / g, n_keys = n_past + t + 1;
        const float *q = Q + t * q_ld + (j % g) * hd;
        float *o = O + t * o_ld + (j % g) * hd, *s = scratch, *acc = scratch + n_keys;
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t p = 0; p < n_keys; p++) {
            s[p] = scale * (kind ? dot_f16((const uint16_t *)K + p * kv_ld, q, hd)
                                 : dot_f32((const float *)K + p * kv_ld, q, hd));
            if (s[p] > mx) mx = s[p];
        }
        for (int64_t d = 0; d < hd; d++) acc[d] = 0.0f;
        for (int64_t p = 0; p < n_keys; p++) {
            s[p] = expf(s[p] - mx);
            sum += s[p];
            if (kind) axpy_f16(s[p], (const uint16_t *)V + p * kv_ld, acc, hd);
            else axpy_f32(s[p], (const float *)V + p * kv_ld, acc, hd);
        }
        for (int64_t d = 0; d < hd; d++) o[d] = acc[d] / sum;
    }
}

static void attn_f32(int64_t hd, const float *Q, int64_t q_ld, int g, int64_t n_tok,
                     int64_t n_past, const void *K, const void *V, int64_t kv_ld, float scale,
                     float *O, int64_t o_ld, float *scratch) {
    attn_rows(0, hd, Q, q_ld, g, n_tok, n_past, K, V, kv_ld, scale, O, o_ld, scratch);
}

static void attn_f16(int64_t hd, const float *Q, int64_t q_ld, int g, int64_t n_tok,
                     int64_t n_past, const void *K, const void *V, int64_t kv_ld, float scale,
                     float *O, int64_t o_ld, float *scratch) {
    attn_rows(1, hd, Q, q_ld, g, n_tok, n_past, K, V, kv_ld, scale, O, o_ld, scratch);
}

/* ---- the scalar table -------------------------------------------------------- */

static pq_kernels scalar_table;
static pthread_once_t scalar_once = PTHREAD_ONCE_INIT;

/* g[i] = silu(g[i]) * up[i]: the reference the SIMD variants are held to. */
static void silu_mul(float *g, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * up[i];
}

static void scalar_init(void) {
    pq_kernels *k = &scalar_table;
    k->name = "scalar";
    k->quantize_act[PQ_TYPE_F32] = copy_row_f32;
    k->quantize_act[PQ_TYPE_F16] = copy_row_f32;
    k->quantize_act[PQ_TYPE_BF16] = copy_row_f32;
    k->quantize_act[PQ_TYPE_Q4_0] = pq_quantize_row_q8_0;
    k->quantize_act[PQ_TYPE_Q8_0] = pq_quantize_row_q8_0;
    k->quantize_act[PQ_TYPE_Q4_1] = pq_quantize_row_q8_1;
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
    k->attn_lanes = 1;
    k->attn_dec_f32 = attn_f32;
    k->attn_dec_f16 = attn_f16;
    k->silu_mul = silu_mul;
}

const pq_kernels *pq_kernels_scalar(void) {
    pthread_once(&scalar_once, scalar_init);
    return &scalar_table;
}
