/* tmp_kernels.c: TEMPORARY scalar stand-in for the kernel layer, so the
 * forward pass can be built and tested before branch `kernels` lands on main.
 * DELETE THIS FILE (and restore nothing) once main has quants.c/dispatch.c:
 * it defines pq_kernels_get, pq_act_type, pq_act_row_bytes, pq_row_bytes and
 * pq_dequantize, which the real kernel layer owns. Plain loops, no speed.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "quants.h"

size_t pq_row_bytes(int type, int64_t n) {
    if (n < 0) return 0;
    switch (type) {
    case PQ_TYPE_F32: return (size_t)n * 4;
    case PQ_TYPE_F16:
    case PQ_TYPE_BF16: return (size_t)n * 2;
    case PQ_TYPE_Q4_0: return n % QK4_0 ? 0 : (size_t)n / QK4_0 * sizeof(block_q4_0);
    case PQ_TYPE_Q4_1: return n % QK4_1 ? 0 : (size_t)n / QK4_1 * sizeof(block_q4_1);
    case PQ_TYPE_Q8_0: return n % QK8_0 ? 0 : (size_t)n / QK8_0 * sizeof(block_q8_0);
    case PQ_TYPE_Q8_1: return n % QK8_1 ? 0 : (size_t)n / QK8_1 * sizeof(block_q8_1);
    default: return 0;
    }
}

int pq_act_type(int wtype) {
    switch (wtype) {
    case PQ_TYPE_F32: case PQ_TYPE_F16: return PQ_TYPE_F32;
    case PQ_TYPE_Q4_0: case PQ_TYPE_Q8_0: return PQ_TYPE_Q8_0;
    case PQ_TYPE_Q4_1: return PQ_TYPE_Q8_1;
    default: return -1;
    }
}

size_t pq_act_row_bytes(int wtype, int64_t cols) {
    int a = pq_act_type(wtype);
    return a < 0 ? 0 : pq_row_bytes(a, cols);
}

static void tmp_quant_f32(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * 4); }

static void tmp_quant_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        float amax = 0;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[b * QK8_0 + j]));
        float d = amax / 127, id = d ? 1 / d : 0;
        y[b].d = pq_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) y[b].qs[j] = (int8_t)roundf(x[b * QK8_0 + j] * id);
    }
}

static void tmp_quant_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t b = 0; b < n / QK8_1; b++) {
        float amax = 0;
        for (int j = 0; j < QK8_1; j++) amax = fmaxf(amax, fabsf(x[b * QK8_1 + j]));
        float d = amax / 127, id = d ? 1 / d : 0;
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[b].qs[j] = (int8_t)roundf(x[b * QK8_1 + j] * id);
            sum += y[b].qs[j];
        }
        y[b].d = pq_fp32_to_fp16(d);
        y[b].s = pq_fp32_to_fp16(d * sum);
    }
}

static float row_dot(int wtype, const void *w, const void *x, int64_t cols) {
    float acc = 0;
    if (wtype == PQ_TYPE_F32) {
        const float *a = w, *b = x;
        for (int64_t i = 0; i < cols; i++) acc += a[i] * b[i];
    } else if (wtype == PQ_TYPE_F16) {
        const uint16_t *a = w;
        const float *b = x;
        for (int64_t i = 0; i < cols; i++) acc += pq_fp16_to_fp32(a[i]) * b[i];
    } else if (wtype == PQ_TYPE_Q8_0) {
        const block_q8_0 *a = w, *b = x;
        for (int64_t k = 0; k < cols / 32; k++) {
            int s = 0;
            for (int j = 0; j < 32; j++) s += a[k].qs[j] * b[k].qs[j];
            acc += pq_fp16_to_fp32(a[k].d) * pq_fp16_to_fp32(b[k].d) * s;
        }
    } else if (wtype == PQ_TYPE_Q4_0) {
        const block_q4_0 *a = w;
        const block_q8_0 *b = x;
        for (int64_t k = 0; k < cols / 32; k++) {
            int s = 0;
            for (int j = 0; j < 16; j++)
                s += ((a[k].qs[j] & 15) - 8) * b[k].qs[j] + ((a[k].qs[j] >> 4) - 8) * b[k].qs[j + 16];
            acc += pq_fp16_to_fp32(a[k].d) * pq_fp16_to_fp32(b[k].d) * s;
        }
    } else if (wtype == PQ_TYPE_Q4_1) {
        const block_q4_1 *a = w;
        const block_q8_1 *b = x;
        for (int64_t k = 0; k < cols / 32; k++) {
            int s = 0;
            for (int j = 0; j < 16; j++)
                s += (a[k].qs[j] & 15) * b[k].qs[j] + (a[k].qs[j] >> 4) * b[k].qs[j + 16];
            acc += pq_fp16_to_fp32(a[k].d) * pq_fp16_to_fp32(b[k].d) * s +
                   pq_fp16_to_fp32(a[k].m) * pq_fp16_to_fp32(b[k].s);
        }
    }
    return acc;
}

#define TMP_GEMM(name, wt)                                                              \
    static void name(int64_t cols, const void *W, size_t ws, const void *X, size_t xs, \
                     int64_t n_tok, float *Y, int64_t ldy, int64_t r0, int64_t r1) {   \
        for (int64_t t = 0; t < n_tok; t++)                                            \
            for (int64_t r = r0; r < r1; r++)                                          \
                Y[t * ldy + r] = row_dot(wt, (const char *)W + r * ws,                 \
                                         (const char *)X + t * xs, cols);              \
    }
TMP_GEMM(tmp_gemm_f32, PQ_TYPE_F32)
TMP_GEMM(tmp_gemm_f16, PQ_TYPE_F16)
TMP_GEMM(tmp_gemm_q8_0, PQ_TYPE_Q8_0)
TMP_GEMM(tmp_gemm_q4_0, PQ_TYPE_Q4_0)
TMP_GEMM(tmp_gemm_q4_1, PQ_TYPE_Q4_1)

static float tmp_dot_f32(const float *a, const float *b, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static void tmp_axpy_f32(float a, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}
static float tmp_dot_f16(const uint16_t *a, const float *b, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += pq_fp16_to_fp32(a[i]) * b[i];
    return s;
}
static void tmp_axpy_f16(float a, const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * pq_fp16_to_fp32(x[i]);
}

static const pq_kernels tmp_table = {
    .name = "tmp-scalar",
    .quantize_act = {[PQ_TYPE_F32] = tmp_quant_f32, [PQ_TYPE_F16] = tmp_quant_f32,
                     [PQ_TYPE_Q8_0] = tmp_quant_q8_0, [PQ_TYPE_Q4_0] = tmp_quant_q8_0,
                     [PQ_TYPE_Q4_1] = tmp_quant_q8_1},
    .gemm = {[PQ_TYPE_F32] = tmp_gemm_f32, [PQ_TYPE_F16] = tmp_gemm_f16,
             [PQ_TYPE_Q8_0] = tmp_gemm_q8_0, [PQ_TYPE_Q4_0] = tmp_gemm_q4_0,
             [PQ_TYPE_Q4_1] = tmp_gemm_q4_1},
    .dot_f32 = tmp_dot_f32, .axpy_f32 = tmp_axpy_f32,
    .dot_f16 = tmp_dot_f16, .axpy_f16 = tmp_axpy_f16,
};

const pq_kernels *pq_kernels_get(void) { return &tmp_table; }

int pq_dequantize(int type, const void *src, float *dst, int64_t n_rows, int64_t n_cols) {
    size_t rb = pq_row_bytes(type, n_cols);
    if (!rb || pq_act_type(type) < 0) return PQ_ERR_TYPE;
    for (int64_t r = 0; r < n_rows; r++) {
        const char *row = (const char *)src + r * rb;
        float *y = dst + r * n_cols;
        for (int64_t b = 0; b < (type <= PQ_TYPE_F16 ? n_cols : n_cols / 32); b++) {
            if (type == PQ_TYPE_F32) y[b] = ((const float *)row)[b];
            else if (type == PQ_TYPE_F16) y[b] = pq_fp16_to_fp32(((const uint16_t *)row)[b]);
            else if (type == PQ_TYPE_Q8_0) {
                const block_q8_0 *q = (const block_q8_0 *)row + b;
                for (int j = 0; j < 32; j++) y[b * 32 + j] = pq_fp16_to_fp32(q->d) * q->qs[j];
            } else if (type == PQ_TYPE_Q4_0) {
                const block_q4_0 *q = (const block_q4_0 *)row + b;
                float d = pq_fp16_to_fp32(q->d);
                for (int j = 0; j < 16; j++) {
                    y[b * 32 + j] = d * ((q->qs[j] & 15) - 8);
                    y[b * 32 + j + 16] = d * ((q->qs[j] >> 4) - 8);
                }
            } else {
                const block_q4_1 *q = (const block_q4_1 *)row + b;
                float d = pq_fp16_to_fp32(q->d), m = pq_fp16_to_fp32(q->m);
                for (int j = 0; j < 16; j++) {
                    y[b * 32 + j] = d * (q->qs[j] & 15) + m;
                    y[b * 32 + j + 16] = d * (q->qs[j] >> 4) + m;
                }
            }
        }
    }
    return PQ_OK;
}
