/* model.c: building a pq_model from borrowed weight pointers.
 *
 * What it is: pq_model_init / set_tensor / finalize / free / n_threads, with
 * every check a tensor must pass before the forward pass trusts it (role,
 * layer, type, shape against the hyperparameters, presence). What it is not:
 * a file reader (pyllama_q/model.py maps the GGUF and passes pointers in) or
 * the forward pass (forward.c).
 *
 * Weight memory is borrowed: the caller keeps it alive until pq_model_free.
 * Evaluations of different sessions of one model are serialised by
 * eval_lock, so sessions of one model may be used from several threads and
 * simply queue.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model.h"

int pq_model_init(pq_model **out, const pq_hparams *hp, int n_threads) {
    if (!out) return PQ_ERR_ARG;
    *out = NULL;
    if (!hp || hp->n_vocab <= 0 || hp->dim <= 0 || hp->n_layers <= 0 || hp->n_heads <= 0 ||
        hp->n_kv_heads <= 0 || hp->head_dim <= 0 || hp->ffn_dim <= 0 ||
        hp->n_heads % hp->n_kv_heads != 0 || hp->rope_dim <= 0 || hp->rope_dim % 2 != 0 ||
        hp->rope_dim > hp->head_dim || !(hp->rope_base > 0) || !(hp->rms_eps >= 0))
        return PQ_ERR_ARG;
    pq_model *m = calloc(1, sizeof *m);
    if (!m) return PQ_ERR_NOMEM;
    m->hp = *hp;
    pthread_mutex_init(&m->eval_lock, NULL);
    m->layers = calloc((size_t)hp->n_layers, sizeof *m->layers);
    m->rope_inv_freq = malloc(sizeof(double) * (size_t)(hp->rope_dim / 2));
    if (!m->layers || !m->rope_inv_freq) {
        pq_model_free(m);
        return PQ_ERR_NOMEM;
    }
    int st = pq_pool_init(&m->pool, n_threads);
    if (st != PQ_OK) {
        pq_model_free(m);
        return st;
    }
    *out = m;
    return PQ_OK;
}

/* The slot a (role, layer) pair names, or NULL if the pair is invalid. */
static pq_tensor *slot(pq_model *m, int role, int layer) {
    if (role <= PQ_T_ROPE_FREQS) {
        if (layer != -1) return NULL;
        switch (role) {
        case PQ_T_TOK_EMBD: return &m->tok_embd;
        case PQ_T_OUTPUT_NORM: return &m->output_norm;
        case PQ_T_OUTPUT: return &m->output;
        default: return &m->rope_freqs;
        }
    }
    if (layer < 0 || layer >= m->hp.n_layers) return NULL;
    pq_layer *L = &m->layers[layer];
    switch (role) {
    case PQ_T_ATTN_NORM: return &L->attn_norm;
    case PQ_T_WQ: return &L->wq;
    case PQ_T_WK: return &L->wk;
    case PQ_T_WV: return &L->wv;
    case PQ_T_WO: return &L->wo;
    case PQ_T_FFN_NORM: return &L->ffn_norm;
    case PQ_T_FFN_GATE: return &L->gate;
    case PQ_T_FFN_UP: return &L->up;
    case PQ_T_FFN_DOWN: return &L->down;
    default: return NULL;
    }
}

/* Expected (rows, cols) of a role; 1-D tensors have rows = 1. */
static void expected_shape(const pq_hparams *hp, int role, int64_t *rows, int64_t *cols) {
    int64_t q_dim = (int64_t)hp->n_heads * hp->head_dim;
    int64_t kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;
    *rows = 1;
    switch (role) {
    case PQ_T_TOK_EMBD: case PQ_T_OUTPUT: *rows = hp->n_vocab; *cols = hp->dim; break;
    case PQ_T_OUTPUT_NORM: case PQ_T_ATTN_NORM: case PQ_T_FFN_NORM: *cols = hp->dim; break;
    case PQ_T_ROPE_FREQS: *cols = hp->rope_dim / 2; break;
    case PQ_T_WQ: *rows = q_dim; *cols = hp->dim; break;
    case PQ_T_WK: case PQ_T_WV: *rows = kv_dim; *cols = hp->dim; break;
    case PQ_T_WO: *rows = hp->dim; *cols = q_dim; break;
    case PQ_T_FFN_GATE: case PQ_T_FFN_UP: *rows = hp->ffn_dim; *cols = hp->dim; break;
    default: *rows = hp->dim; *cols = hp->ffn_dim; break; /* PQ_T_FFN_DOWN */
    }
}

static int is_vector_role(int role) {
    return role == PQ_T_OUTPUT_NORM || role == PQ_T_ATTN_NORM || role == PQ_T_FFN_NORM ||
           role == PQ_T_ROPE_FREQS;
}

int pq_model_set_tensor(pq_model *m, int role, int layer, int type, const void *data,
                        int64_t ne0, int64_t ne1) {
    if (!m || !data || m->finalized) return PQ_ERR_ARG;
    pq_tensor *t = slot(m, role, layer);
    if (!t) return PQ_ERR_ARG;
    /* Norms and rope factors are read as plain floats; matrices go through
     * the kernel table, which must have a gemm for their type. */
    if (is_vector_role(role)) {
        if (type != PQ_TYPE_F32) return PQ_ERR_TYPE;
    } else {
        const pq_kernels *k = pq_kernels_get();
        if (type < 0 || type >= PQ_TYPE_COUNT || pq_act_type(type) < 0 || !k->gemm[type] ||
            !k->quantize_act[type])
            return PQ_ERR_TYPE;
    }
    int64_t rows, cols;
    expected_shape(&m->hp, role, &rows, &cols);
    if (ne0 != cols || ne1 != rows) return PQ_ERR_SHAPE;
    size_t rb = pq_row_bytes(type, cols);
    if (!rb) return PQ_ERR_SHAPE; /* cols not a whole number of blocks */
    t->type = type;
    t->data = data;
    t->rows = rows;
    t->cols = cols;
    t->row_bytes = rb;
    return PQ_OK;
}

static size_t act_bytes(const pq_tensor *t) { return pq_act_row_bytes(t->type, t->cols); }

int pq_model_finalize(pq_model *m) {
    if (!m) return PQ_ERR_ARG;
    if (m->finalized) return PQ_OK;
    const pq_hparams *hp = &m->hp;
    if (!m->tok_embd.data || !m->output_norm.data) return PQ_ERR_MISSING;
    for (int l = 0; l < hp->n_layers; l++) {
        const pq_layer *L = &m->layers[l];
        const pq_tensor *all[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo,
                                  &L->ffn_norm, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            if (!all[i]->data) return PQ_ERR_MISSING;
    }
    if (!m->output.data) m->output = m->tok_embd; /* tied embeddings */

    /* Quantized activation rows are staged in buffers sized for the widest. */
    size_t mx = act_bytes(&m->output);
    for (int l = 0; l < hp->n_layers; l++) {
        const pq_layer *L = &m->layers[l];
        const pq_tensor *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
            if (act_bytes(mats[i]) > mx) mx = act_bytes(mats[i]);
    }
    m->max_act_bytes = mx;

    /* RoPE inverse frequencies, theta_i = base^(-2i/rope_dim) / factor_i,
     * computed in double once. */
    const float *ff = m->rope_freqs.data;
    for (int i = 0; i < hp->rope_dim / 2; i++) {
        double f = pow((double)hp->rope_base, -2.0 * i / hp->rope_dim);
        if (ff) f /= ff[i];
        m->rope_inv_freq[i] = f;
    }
    m->finalized = 1;
    return PQ_OK;
}

int pq_model_n_threads(const pq_model *m) { return m && m->pool ? pq_pool_size(m->pool) : 0; }

void pq_model_free(pq_model *m) {
    if (!m) return;
    pq_pool_free(m->pool);
    pthread_mutex_destroy(&m->eval_lock);
    free(m->layers);
    free(m->rope_inv_freq);
    free(m);
}
