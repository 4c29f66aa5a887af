/* model.h: the internal layout of pq_model and pq_ctx, shared by model.c
 * (building and validating a model) and forward.c (sessions and the forward
 * pass). Not part of the public API (that is pq.h).
 */
#ifndef PQ_MODEL_H
#define PQ_MODEL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "pq.h"
#include "threadpool.h"

/* A borrowed weight matrix (rows, cols) = (ne1, ne0); data == NULL: unset. */
typedef struct {
    int type;
    const void *data;
    int64_t rows, cols;
    size_t row_bytes;       /* bytes between consecutive rows */
} pq_tensor;

typedef struct {
    pq_tensor attn_norm;    /* (dim) f32 */
    pq_tensor wq, wk, wv;   /* (n_heads*head_dim | n_kv_heads*head_dim, dim) */
    pq_tensor wo;           /* (dim, n_heads*head_dim) */
    pq_tensor ffn_norm;     /* (dim) f32 */
    pq_tensor gate, up;     /* (ffn_dim, dim) */
    pq_tensor down;         /* (dim, ffn_dim) */
} pq_layer;

struct pq_model {
    pq_hparams hp;
    pq_tensor tok_embd;     /* (n_vocab, dim), any supported type */
    pq_tensor output_norm;  /* (dim) f32 */
    pq_tensor output;       /* (n_vocab, dim); after finalize never unset */
    pq_tensor rope_freqs;   /* (rope_dim/2) f32 divisors, optional */
    pq_layer *layers;       /* n_layers */
    double *rope_inv_freq;  /* (rope_dim/2): base^(-2i/rope_dim) / freq factor */
    size_t max_act_bytes;   /* largest quantized activation row of any matmul */
    int finalized;
    pq_pool *pool;
    pthread_mutex_t eval_lock; /* one evaluation at a time per model */
};

/* A session's KV cache as state.c sees it (filled by forward.c, which owns
 * struct pq_ctx): caches are (n_layers, n_ctx, kv_dim) rows of kv_elem-byte
 * elements, keys stored after RoPE. */
typedef struct {
    const pq_model *m;
    int32_t n_ctx;
    int kv_type;              /* PQ_TYPE_F32 or PQ_TYPE_F16 */
    size_t kv_elem;           /* 4 or 2 bytes */
    void *k_cache, *v_cache;
} pq_kv_view;
void pq_ctx_kv_view(const pq_ctx *c, pq_kv_view *v);

#endif /* PQ_MODEL_H */
