/* state.c: a session's KV cache as data: save/restore and context shift.
 *
 * What it is: copying the used rows of the K/V caches out and in (the
 * Python side wraps them in a versioned, checksummed file format, see
 * pyllama_q/state.py), and the context shift that drops old positions and
 * re-rotates the kept keys. What it is not: the forward pass (forward.c owns
 * struct pq_ctx and hands us its cache through pq_ctx_kv_view).
 *
 * Why re-rotation is exact: RoPE turns each pair (k[2i], k[2i+1]) by the
 * angle p * theta_i, and rotations compose, so turning a key cached at
 * position p by -d * theta_i gives the key of the same input at p - d (Su et
 * al. 2021, https://arxiv.org/abs/2104.09864). Only rounding differs: one
 * more f32 rotation, and an f16 re-rounding for an f16 cache.
 */
#include <math.h>
#include <string.h>

#include "model.h"
#include "quants.h"

static size_t kv_dim_of(const pq_model *m) {
    return (size_t)m->hp.n_kv_heads * m->hp.head_dim;
}

int pq_ctx_kv_type(const pq_ctx *c) {
    if (!c) return -1;
    pq_kv_view v;
    pq_ctx_kv_view(c, &v);
    return v.kv_type;
}

int32_t pq_ctx_n_ctx(const pq_ctx *c) {
    if (!c) return 0;
    pq_kv_view v;
    pq_ctx_kv_view(c, &v);
    return v.n_ctx;
}

size_t pq_ctx_kv_state_bytes(const pq_ctx *c, int32_t n_pos) {
    if (!c) return 0;
    pq_kv_view v;
    pq_ctx_kv_view(c, &v);
    if (n_pos < 0 || n_pos > v.n_ctx) return 0;
    return 2 * (size_t)v.m->hp.n_layers * (size_t)n_pos * kv_dim_of(v.m) * v.kv_elem;
}

/* Copy positions [0, n_pos) of every layer between the caches and a flat
 * buffer (layer-major, K then V); out = 1 copies cache -> buffer. */
static int copy_rows(const pq_ctx *c, int32_t n_pos, void *buf, size_t bytes, int out) {
    if (!c || (!buf && bytes)) return PQ_ERR_ARG;
    pq_kv_view v;
    pq_ctx_kv_view(c, &v);
    if (n_pos < 0 || n_pos > v.n_ctx) return PQ_ERR_STATE;
    if (bytes != pq_ctx_kv_state_bytes(c, n_pos)) return PQ_ERR_STATE;
    size_t row = kv_dim_of(v.m) * v.kv_elem;
    size_t layer = (size_t)v.n_ctx * row, used = (size_t)n_pos * row;
    char *b = buf;
    for (int l = 0; l < v.m->hp.n_layers; l++) {
        char *kc = (char *)v.k_cache + l * layer, *vc = (char *)v.v_cache + l * layer;
        if (out) {
            memcpy(b, kc, used);
            memcpy(b + used, vc, used);
        } else {
            memcpy(kc, b, used);
            memcpy(vc, b + used, used);
        }
        b += 2 * used;
    }
    return PQ_OK;
}

int pq_ctx_kv_save(const pq_ctx *c, int32_t n_pos, void *dst, size_t bytes) {
    return copy_rows(c, n_pos, dst, bytes, 1);
}

int pq_ctx_kv_load(pq_ctx *c, int32_t n_pos, const void *src, size_t bytes) {
    return copy_rows(c, n_pos, (void *)src, bytes, 0);
}

/* Rotate the first 2*half entries of a head (pairs (2i, 2i+1), GGUF llama
 * layout) by the angles whose cos/sin are given; f32 or f16 storage. */
static void rotate_head(void *h, int kv_type, const float *cs, const float *sn, int half) {
    for (int i = 0; i < half; i++) {
        float x0, x1;
        if (kv_type == PQ_TYPE_F32) {
            x0 = ((float *)h)[2 * i];
            x1 = ((float *)h)[2 * i + 1];
        } else {
            x0 = pq_fp16_to_fp32(((pq_half *)h)[2 * i]);
            x1 = pq_fp16_to_fp32(((pq_half *)h)[2 * i + 1]);
        }
        float y0 = x0 * cs[i] - x1 * sn[i], y1 = x0 * sn[i] + x1 * cs[i];
        if (kv_type == PQ_TYPE_F32) {
            ((float *)h)[2 * i] = y0;
            ((float *)h)[2 * i + 1] = y1;
        } else {
            ((pq_half *)h)[2 * i] = pq_fp32_to_fp16(y0);
            ((pq_half *)h)[2 * i + 1] = pq_fp32_to_fp16(y1);
        }
    }
}

int pq_ctx_kv_shift(pq_ctx *c, int32_t n_keep, int32_t n_discard, int32_t n_used) {
    if (!c) return PQ_ERR_ARG;
    pq_kv_view v;
    pq_ctx_kv_view(c, &v);
    if (n_keep < 0 || n_discard < 0 || n_used > v.n_ctx || (int64_t)n_keep + n_discard > n_used)
        return PQ_ERR_ARG;
    if (n_discard == 0) return PQ_OK;
    const pq_hparams *hp = &v.m->hp;
    const int half = hp->rope_dim / 2, hd = hp->head_dim;
    enum { MAX_HALF = 1024 };
    if (half > MAX_HALF) return PQ_ERR_UNSUPPORTED;
    /* Angles -n_discard * theta_i, in double like the forward pass. */
    float cs[MAX_HALF], sn[MAX_HALF];
    for (int i = 0; i < half; i++) {
        double th = -(double)n_discard * v.m->rope_inv_freq[i];
        cs[i] = (float)cos(th);
        sn[i] = (float)sin(th);
    }
    size_t row = kv_dim_of(v.m) * v.kv_elem, layer = (size_t)v.n_ctx * row;
    int32_t n_move = n_used - n_keep - n_discard;
    for (int l = 0; l < hp->n_layers; l++) {
        char *kc = (char *)v.k_cache + l * layer, *vc = (char *)v.v_cache + l * layer;
        memmove(kc + n_keep * row, kc + (size_t)(n_keep + n_discard) * row, n_move * row);
        memmove(vc + n_keep * row, vc + (size_t)(n_keep + n_discard) * row, n_move * row);
        for (int32_t p = n_keep; p < n_keep + n_move; p++)
            for (int h = 0; h < hp->n_kv_heads; h++)
                rotate_head(kc + p * row + (size_t)h * hd * v.kv_elem, v.kv_type, cs, sn, half);
    }
    return PQ_OK;
}

int pq_ctx_kv_get(const pq_ctx *c, int32_t layer, int32_t pos, float *k, float *v_out) {
    if (!c) return PQ_ERR_ARG;
    pq_kv_view v;
    pq_ctx_kv_view(c, &v);
    if (layer < 0 || layer >= v.m->hp.n_layers || pos < 0 || pos >= v.n_ctx) return PQ_ERR_ARG;
    size_t kd = kv_dim_of(v.m), row = kd * v.kv_elem;
    size_t at = ((size_t)layer * v.n_ctx + pos) * row;
    const char *src[2] = {(const char *)v.k_cache + at, (const char *)v.v_cache + at};
    float *dst[2] = {k, v_out};
    for (int j = 0; j < 2; j++) {
        if (!dst[j]) continue;
        for (size_t i = 0; i < kd; i++)
            dst[j][i] = v.kv_type == PQ_TYPE_F32 ? ((const float *)src[j])[i]
                                                 : pq_fp16_to_fp32(((const pq_half *)src[j])[i]);
    }
    return PQ_OK;
}
