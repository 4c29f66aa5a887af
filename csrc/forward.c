/* forward.c: sessions (KV cache + scratch) and the LLaMA forward pass.
 *
 * What it is: pq_ctx_init / free / eval / cancel / kv_bytes. One call to
 * pq_ctx_eval is one dispatch to the model's thread pool; every worker runs
 * forward_worker(), which walks the layers top to bottom and separates the
 * phases with the pool's barrier. Matmul rows, attention items (token block,
 * kv head, query heads) and per-token elementwise work are split across the
 * workers: in fixed shares, except the large phases of a decode step, whose
 * rows are handed out in shrinking pieces (rows_begin).
 * What it is not: a kernel file. Block formats and SIMD live behind the
 * kernel table (kernels.h): here it is "quantize activations; matmul".
 *
 * Reference for the architecture: Touvron et al., "LLaMA" (2023),
 * https://arxiv.org/abs/2302.13971; RoPE: Su et al. (2021),
 * https://arxiv.org/abs/2104.09864; grouped-query attention: Ainslie et al.
 * (2023), https://arxiv.org/abs/2305.13245.
 *
 * All memory is allocated in pq_ctx_init; evaluation allocates nothing.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model.h"
#include "quants.h"

enum { N_XQ = 3 }; /* quantized-input buffers: one per distinct partner type of Q/K/V */

/* A work-sharing counter of one decode phase, alone on its cache line. */
typedef struct {
    atomic_long next;
    char pad[64 - sizeof(atomic_long)];
} pq_ticket;

/* A worker's own staging area for decode (fewer tokens than workers). */
typedef struct {
    float *xb;                /* (n_priv, max(dim, q_dim, ffn_dim)) rmsnorm output */
    void *xq[N_XQ];           /* (n_priv, max_act_bytes) quantized matmul inputs */
    void *gemm_scratch;       /* pq_gemm_scratch_bytes(wide, n_batch), see kernels.h */
} pq_priv;

struct pq_ctx {
    pq_model *m;
    int32_t n_ctx, n_batch;
    int kv_type;              /* PQ_TYPE_F32 or PQ_TYPE_F16 */
    size_t kv_elem;           /* 4 or 2 bytes */
    void *k_cache, *v_cache;  /* (n_layers, n_ctx, kv_dim), post-RoPE keys */

    /* Scratch, n_batch tokens each (row-major, one row per token). */
    float *x;                 /* (n_batch, dim) the residual stream */
    float *xb;                /* (n_batch, max(dim, q_dim, ffn_dim)) rmsnorm output */
    void *xq[N_XQ];           /* (n_batch, max_act_bytes) quantized matmul inputs */
    float *q, *k, *v;         /* (n_batch, q_dim), (n_batch, kv_dim) x 2 */
    float *att_out;           /* (n_batch, q_dim) attention output, heads concatenated */
    float *tmp;               /* (n_batch, dim) Wo / down output before the residual */
    float *hb, *hb2;          /* (n_batch, ffn_dim) gate (then silu*up), up */
    float *att;               /* (n_threads, att_stride) attention scratch per worker */
    size_t att_stride;        /* floats: pq_attn_scratch_floats(n_ctx, head_dim), rounded */
    float *rope_cos, *rope_sin; /* (n_batch, rope_dim/2) per token of the batch */
    pq_priv *priv;            /* (n_threads) */
    size_t gemm_scratch_bytes; /* of each priv[i].gemm_scratch */
    int n_threads;

    atomic_int cancel;        /* set by pq_ctx_cancel, cleared by the eval that sees it */

    /* The evaluation in flight (read by every worker). */
    const int32_t *tokens;
    int32_t n, pos;
    float *logits;
    int all_logits;
    int stop;                 /* worker 0 publishes "cancelled" before a barrier */

    /* Decode work sharing (see rows_begin): one counter per phase of an
     * evaluation, reset before each, and the size from which a phase is shared. */
    pq_ticket *tickets;
    int n_tickets;
    size_t dyn_min_bytes;     /* of weights per worker */
};

/* ---- small helpers ------------------------------------------------------ */

/* [*a, *b): worker ith's share of total items, in chunks of align. */
static void split(int64_t total, int ith, int nth, int64_t align, int64_t *a, int64_t *b) {
    int64_t units = (total + align - 1) / align;
    int64_t u0 = units * ith / nth, u1 = units * (ith + 1) / nth;
    *a = u0 * align < total ? u0 * align : total;
    *b = u1 * align < total ? u1 * align : total;
}

/* The rows of one phase for one worker: one static share, or pieces from a
 * counter (see rows_begin). */
typedef struct {
    atomic_long *ctr; /* NULL: one static share */
    int64_t total, align, min_piece;
    int ith, nth, done;
} rows_it;

/* Large decode phases (fewer tokens than workers, at least dyn_min_bytes of
 * weights per worker) hand rows out by guided self-scheduling: a worker takes
 * what is left / (2 x workers) rows, at least ~32 KiB of weights, from the
 * phase's counter, so the first pieces are long (prefetch streams run on) and
 * the last short, and a worker that runs ahead takes more instead of waiting
 * at the next barrier. Measured on the 7B shape, 2 threads, A/B in one
 * process: static halves left the workers waiting (CPU share 0.93-0.95) and
 * the guided split's median time ratio over 8-12 pairs was 0.81-1.01 in six
 * runs (median of runs ~0.88; piece sizes 32-256 KiB; the machine's bandwidth
 * drifts by more than that). Small phases stay static: with SmolLM2-135M's
 * 10-50 us phases the pieces cost 18 % (a new prefetch stream and activation
 * layout per piece), and TinyLlama-1.1B came out even either way. Prompt
 * batches stay static too: their kernels pack activations per call.
 * A row's result does not depend on who computes it (pieces are whole
 * 16-row tiles), so neither do the logits on the split. */
static rows_it rows_begin(pq_ctx *c, int *ph, int ith, int nth, int64_t total, int64_t align,
                          size_t item_bytes) {
    rows_it it = {NULL, total, align, align, ith, nth, 0};
    if (c->n < nth && nth > 1 && *ph < c->n_tickets &&
        (size_t)total * item_bytes >= c->dyn_min_bytes * (size_t)nth) {
        it.ctr = &c->tickets[(*ph)++].next;
        /* pieces of >= 32 KiB of weights (less if the threshold is lower:
         * tests set it to 0 to get many pieces out of a tiny model) */
        size_t piece = c->dyn_min_bytes < (32u << 10) ? c->dyn_min_bytes : (32u << 10);
        int64_t mp = (int64_t)(piece / (item_bytes ? item_bytes : 1));
        mp = (mp + align - 1) / align * align;
        it.min_piece = mp > align ? mp : align;
    }
    return it;
}

/* The worker's next rows [*a, *b), never empty; 0 when the phase has none left for it. */
static int rows_next(rows_it *it, int64_t *a, int64_t *b) {
    if (!it->ctr) {
        if (it->done) return 0;
        it->done = 1;
        split(it->total, it->ith, it->nth, it->align, a, b);
        return *a < *b;
    }
    long cur = atomic_load_explicit(it->ctr, memory_order_relaxed), take;
    do {
        if (cur >= it->total) return 0;
        take = (it->total - cur) / (2 * it->nth);
        take = (take + it->align - 1) / it->align * it->align;
        if (take < it->min_piece) take = it->min_piece;
    } while (!atomic_compare_exchange_weak_explicit(it->ctr, &cur, cur + take, memory_order_relaxed,
                                                    memory_order_relaxed));
    *a = cur;
    *b = cur + take < it->total ? cur + take : it->total;
    return 1;
}

/* Weights per worker from which a decode phase is shared dynamically:
 * PQ_DECODE_SHARE_KB (KiB; tests set 0 to exercise the path on tiny models),
 * else 4 MiB. */
static size_t dyn_min_bytes(void) {
    const char *env = getenv("PQ_DECODE_SHARE_KB");
    if (env && *env) {
        char *end;
        long long kb = strtoll(env, &end, 10);
        if (*end == 0 && kb >= 0 && kb < (1LL << 40)) return (size_t)kb << 10;
    }
    return (size_t)4 << 20;
}

static void *aligned_calloc(size_t bytes) {
    void *p = NULL;
    bytes = (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    memset(p, 0, bytes ? bytes : 64);
    return p;
}

/* Optional rmsnorm with gain g (NULL: none), then quantization of the rows
 * src (n, cols) for every matrix of a group reading them; matrices with the
 * same partner type share a buffer. xq_of[i] gets the rows matrix i reads
 * (stride max_act_bytes). Returns 1 if the caller must pass a barrier
 * before the matmuls.
 * With at least one token per worker (prefill) rows are split by token into
 * shared buffers. With fewer (decode), every worker stages all rows into its
 * own buffers: normalizing and quantizing a row twice costs far less than a
 * barrier, which on a busy machine can cost a scheduler time slice. */
static int stage(pq_ctx *c, const float *src, int64_t cols, const float *g, int n,
                 const pq_tensor *const *ws, int nw, int ith, int nth, const void **xq_of) {
    const pq_kernels *K = pq_kernels_get();
    const pq_model *m = c->m;
    const size_t xs = m->max_act_bytes;
    int shared = n >= nth;
    void *const *bufs = shared ? c->xq : c->priv[ith].xq;
    float *xb = shared ? c->xb : c->priv[ith].xb;
    int slot[N_XQ];
    for (int i = 0; i < nw; i++) {
        slot[i] = i;
        for (int j = 0; j < i; j++)
            if (pq_act_type(ws[j]->type) == pq_act_type(ws[i]->type)) {
                slot[i] = j;
                break;
            }
        xq_of[i] = bufs[slot[i]];
    }
    for (int t = shared ? ith : 0; t < n; t += shared ? nth : 1) {
        const float *in = src + (int64_t)t * cols;
        if (g) {
            double ss = 0; /* double: a sum of 1e3..1e4 squares */
            for (int64_t i = 0; i < cols; i++) ss += (double)in[i] * in[i];
            float inv = (float)(1.0 / sqrt(ss / cols + m->hp.rms_eps));
            float *out = xb + (int64_t)t * cols;
            for (int64_t i = 0; i < cols; i++) out[i] = in[i] * inv * g[i];
            in = out;
        }
        for (int i = 0; i < nw; i++)
            if (slot[i] == i)
                K->quantize_act[ws[i]->type](in, (char *)bufs[i] + (size_t)t * xs, cols);
    }
    return shared;
}

/* Y = W @ X for rows [r0, r1) of W and all n tokens; Y is (n, ldy). */
static void matmul(const pq_tensor *w, const void *xq, size_t xs, int n, float *y, int64_t ldy,
                   int64_t r0, int64_t r1) {
    if (r0 >= r1) return;
    pq_kernels_get()->gemm[w->type](w->cols, w->data, w->row_bytes, xq, xs, n, y, ldy, r0, r1);
}

/* Rotate consecutive pairs (v[2i], v[2i+1]) of the first rope_dim entries
 * by the angle whose cos/sin are given: GGUF's llama layout (the converter
 * permuted Q/K rows so that pairs are adjacent). */
static void rope(float *v, const float *cs, const float *sn, int half) {
    for (int i = 0; i < half; i++) {
        float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * cs[i] - x1 * sn[i];
        v[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
    }
}

static void store_kv(void *dst, const float *src, int64_t n, int kv_type) {
    if (kv_type == PQ_TYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = pq_fp32_to_fp16(src[i]);
    }
}

/* Rows [a, b) of the residual stream of every token of the evaluation:
 * x += W xq (W's output rows go through c->tmp). */
static void add_matmul(pq_ctx *c, const pq_tensor *W, const void *xq, size_t xs, int64_t a,
                       int64_t b) {
    const int n = c->n, dim = c->m->hp.dim;
    matmul(W, xq, xs, n, c->tmp, dim, a, b);
    for (int t = 0; t < n; t++)
        for (int64_t r = a; r < b; r++) c->x[(int64_t)t * dim + r] += c->tmp[(int64_t)t * dim + r];
}

/* ---- the forward pass --------------------------------------------------- */

/* Every worker runs this once per pq_ctx_eval. Phases that read what other
 * workers wrote are separated by pq_pool_barrier: five per layer in decode,
 * up to eight in prefill (where staging the inputs is shared). */
static void forward_body(void *arg, int ith, int nth) {
    pq_ctx *c = arg;
    const pq_model *m = c->m;
    const pq_hparams *hp = &m->hp;
    const pq_kernels *K = pq_kernels_get();
    pq_pool *pool = m->pool;
    const int n = c->n, pos = c->pos;
    const int dim = hp->dim, hd = hp->head_dim, ffn = hp->ffn_dim;
    const int n_heads = hp->n_heads, n_kv = hp->n_kv_heads;
    const int q_dim = n_heads * hd, kv_dim = n_kv * hd, half = hp->rope_dim / 2;
    const int group = n_heads / n_kv; /* query heads per kv head */
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t xs = m->max_act_bytes;
    const void *xq[N_XQ];
    int64_t a, b;
    int ph = 0; /* this evaluation's next work-sharing counter */

    /* Embedding lookup: dequantize token rows into the residual stream, and
     * the RoPE angles of each position, theta_i = p * base^(-2i/rope_dim)
     * (divided by the rope_freqs factor when the model has one). */
    for (int t = ith; t < n; t += nth) {
        const pq_tensor *E = &m->tok_embd;
        pq_dequantize(E->type, (const char *)E->data + (size_t)c->tokens[t] * E->row_bytes,
                      c->x + (int64_t)t * dim, 1, dim);
        for (int i = 0; i < half; i++) {
            double th = (double)(pos + t) * m->rope_inv_freq[i];
            c->rope_cos[t * half + i] = (float)cos(th);
            c->rope_sin[t * half + i] = (float)sin(th);
        }
    }
    pq_pool_barrier(pool);

    for (int l = 0; l < hp->n_layers; l++) {
        const pq_layer *L = &m->layers[l];
        char *kc = (char *)c->k_cache + (size_t)l * c->n_ctx * kv_dim * c->kv_elem;
        char *vc = (char *)c->v_cache + (size_t)l * c->n_ctx * kv_dim * c->kv_elem;
        const pq_tensor *qkv[3] = {&L->wq, &L->wk, &L->wv};
        const pq_tensor *gate_up[2] = {&L->gate, &L->up};

        /* Attention rmsnorm, quantized once for Q, K and V. */
        if (stage(c, c->x, dim, L->attn_norm.data, n, qkv, 3, ith, nth, xq))
            pq_pool_barrier(pool);

        /* q = Wq x, k = Wk x, v = Wv x: (n, q_dim), (n, kv_dim), (n, kv_dim);
         * RoPE on q and k; k and v into the cache at positions pos..pos+n-1.
         * Work items are 16-row units of the three matrices stacked k | q |
         * v, not whole heads. Measured per worker, 2 threads: by heads,
         * SmolLM2's 15 split 8/7; by units of q | k | v, one worker still had
         * three matmul calls (each starting its prefetch stream cold) and all
         * the K/V stores against the other's one call, 18 % (SmolLM2 F16) and
         * 14 % (TinyLlama Q4_0) longer in this phase; k | q | v gives each
         * two calls and one of K, V, within 7 % and 1 %. A unit boundary is
         * even, and RoPE turns adjacent pairs, so a worker rotates and stores
         * exactly the rows it computed, even part of a head. */
        rows_it it = rows_begin(c, &ph, ith, nth, q_dim + 2 * kv_dim, 16, L->wq.row_bytes);
        while (rows_next(&it, &a, &b)) /* rows [a, b) of k | q | v */
        for (int j = 0, u0 = 0; j < 3; u0 += j == 1 ? q_dim : kv_dim, j++) {
            const int i = j == 0 ? 1 : j == 1 ? 0 : 2; /* 0 q, 1 k, 2 v */
            const int cnt = i == 0 ? q_dim : kv_dim;
            const int r0 = a - u0 > 0 ? (int)(a - u0) : 0, r1 = b - u0 < cnt ? (int)(b - u0) : cnt;
            if (r0 >= r1) continue;
            float *y = i == 0 ? c->q : i == 1 ? c->k : c->v;
            const int ld = i == 0 ? q_dim : kv_dim;
            matmul(qkv[i], xq[i], xs, n, y, ld, r0, r1);
            for (int t = 0; t < n; t++) {
                const float *cs = c->rope_cos + t * half, *sn = c->rope_sin + t * half;
                float *yt = y + (int64_t)t * ld;
                if (i < 2) /* each head's part in [r0, r1): pairs o/2 .. e/2 of its rope_dim */
                    for (int h = r0 / hd; h * hd < r1; h++) {
                        const int o = r0 > h * hd ? r0 - h * hd : 0;
                        int e = r1 - h * hd < hd ? r1 - h * hd : hd;
                        if (e > 2 * half) e = 2 * half;
                        if (e > o) rope(yt + h * hd + o, cs + o / 2, sn + o / 2, (e - o) / 2);
                    }
                if (i > 0)
                    store_kv((i == 1 ? kc : vc) + ((size_t)(pos + t) * kv_dim + r0) * c->kv_elem,
                             yt + r0, r1 - r0, c->kv_type);
            }
        }
        pq_pool_barrier(pool);

        /* Causal attention, query head h reading kv head h / group: scores
         * q.k / sqrt(head_dim) over positions 0..pos+t, softmax (f32, max
         * subtracted), then the weighted sum of values.
         * Work items are (block of bt tokens, kv head, piece of its group
         * query heads), each one kernel call that reads a key or value row
         * once for all the query rows of the item. The group is cut into
         * pieces only when there are too few items for the workers (decode).
         * Items go round-robin, kv head fastest, which evens out the causal
         * triangle. The blocked kernel puts query rows in SIMD lanes; with
         * fewer rows per block than half its lanes (decode of models with
         * small groups) the decode kernel (lanes over head_dim) runs instead.
         * A row's result does not depend on the other rows of its call, so
         * neither does it on the thread count. */
        float *att = c->att + (size_t)ith * c->att_stride;
        const int bt = group < PQ_ATTN_LANES_MAX ? PQ_ATTN_LANES_MAX / group : 1;
        const int n_blk = (n + bt - 1) / bt;
        int pieces = 1;
        while (n_blk * n_kv * pieces < 2 * nth && pieces < group) pieces++;
        const int gs = (group + pieces - 1) / pieces; /* query heads per item */
        const int blocked = (n < bt ? n : bt) * group * 2 >= K->attn_lanes;
        const int f32 = c->kv_type == PQ_TYPE_F32;
        const pq_attn_fn attn = blocked ? (f32 ? K->attn_f32 : K->attn_f16)
                                        : (f32 ? K->attn_dec_f32 : K->attn_dec_f16);
        for (int u = ith; u < n_blk * n_kv * pieces; u += nth) {
            const int t0 = u / (n_kv * pieces) * bt, kvh = u / pieces % n_kv, i0 = u % pieces * gs;
            const int tn = n - t0 < bt ? n - t0 : bt, gn = group - i0 < gs ? group - i0 : gs;
            if (gn <= 0) continue;
            const size_t off = (size_t)kvh * hd * c->kv_elem;
            const int64_t qo = (int64_t)t0 * q_dim + (int64_t)(kvh * group + i0) * hd;
            attn(hd, c->q + qo, q_dim, gn, tn, pos + t0, kc + off, vc + off, kv_dim, scale,
                 c->att_out + qo, q_dim, att);
        }
        pq_pool_barrier(pool);

        /* Output projection and residual: x += Wo att_out. Each worker adds
         * the rows it computed, so the residual needs no barrier of its own. */
        if (stage(c, c->att_out, q_dim, NULL, n, (const pq_tensor *[]){&L->wo}, 1, ith, nth, xq))
            pq_pool_barrier(pool);
        it = rows_begin(c, &ph, ith, nth, dim, 16, L->wo.row_bytes);
        while (rows_next(&it, &a, &b)) add_matmul(c, &L->wo, xq[0], xs, a, b);
        pq_pool_barrier(pool);

        /* FFN rmsnorm, quantized once for gate and up. */
        if (stage(c, c->x, dim, L->ffn_norm.data, n, gate_up, 2, ith, nth, xq))
            pq_pool_barrier(pool);

        /* SwiGLU: hb = silu(W_gate x) * (W_up x), each worker on the same
         * row range of both so the product needs no barrier. */
        it = rows_begin(c, &ph, ith, nth, ffn, 16, L->gate.row_bytes + L->up.row_bytes);
        while (rows_next(&it, &a, &b)) {
            matmul(&L->gate, xq[0], xs, n, c->hb, ffn, a, b);
            matmul(&L->up, xq[1], xs, n, c->hb2, ffn, a, b);
            for (int t = 0; t < n; t++) {
                float *g = c->hb + (int64_t)t * ffn, *up = c->hb2 + (int64_t)t * ffn;
                K->silu_mul(g + a, up + a, b - a);
            }
        }
        pq_pool_barrier(pool);

        /* Down projection and residual: x += W_down hb. */
        if (stage(c, c->hb, ffn, NULL, n, (const pq_tensor *[]){&L->down}, 1, ith, nth, xq))
            pq_pool_barrier(pool);
        it = rows_begin(c, &ph, ith, nth, dim, 16, L->down.row_bytes);
        while (rows_next(&it, &a, &b)) add_matmul(c, &L->down, xq[0], xs, a, b);

        /* Cancellation point: worker 0 reads the flag, the barrier publishes
         * its verdict, everyone leaves together. */
        if (ith == 0 && atomic_load(&c->cancel)) c->stop = 1;
        pq_pool_barrier(pool);
        if (c->stop) return;
    }

    /* Final rmsnorm and logits = W_out x for the last token (or all). */
    if (!c->logits) return;
    int n_out = c->all_logits ? n : 1;
    const float *last = c->x + (int64_t)(n - n_out) * dim;
    if (stage(c, last, dim, m->output_norm.data, n_out, (const pq_tensor *[]){&m->output}, 1,
              ith, nth, xq))
        pq_pool_barrier(pool);
    rows_it it = rows_begin(c, &ph, ith, nth, hp->n_vocab, 16, m->output.row_bytes);
    while (rows_next(&it, &a, &b)) matmul(&m->output, xq[0], xs, n_out, c->logits, hp->n_vocab, a, b);
}

/* The pool job: forward_body with this worker's GEMM scratch installed for
 * the kernels (and removed again: the context may be freed next). */
static void forward_worker(void *arg, int ith, int nth) {
    pq_ctx *c = arg;
    pq_gemm_scratch_set(c->priv[ith].gemm_scratch, c->gemm_scratch_bytes);
    forward_body(arg, ith, nth);
    pq_gemm_scratch_set(NULL, 0);
}

int pq_ctx_eval(pq_ctx *c, const int32_t *tokens, int32_t n, int32_t pos, float *logits,
                int all_logits) {
    if (!c || !tokens || n <= 0 || n > c->n_batch || pos < 0) return PQ_ERR_ARG;
    if ((int64_t)pos + n > c->n_ctx) return PQ_ERR_CTX_FULL;
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->m->hp.n_vocab) return PQ_ERR_ARG;
    pq_model *m = c->m;
    pthread_mutex_lock(&m->eval_lock);
    c->tokens = tokens;
    c->n = n;
    c->pos = pos;
    c->logits = logits;
    c->all_logits = all_logits;
    c->stop = 0;
    for (int i = 0; i < c->n_tickets; i++) atomic_store_explicit(&c->tickets[i].next, 0, memory_order_relaxed);
    pq_pool_run(m->pool, forward_worker, c);
    int st = PQ_OK;
    if (c->stop) {
        atomic_store(&c->cancel, 0);
        st = PQ_ERR_CANCELLED;
    }
    pthread_mutex_unlock(&m->eval_lock);
    return st;
}

void pq_ctx_cancel(pq_ctx *c) {
    if (c) atomic_store(&c->cancel, 1);
}

/* ---- sessions ------------------------------------------------------------ */

size_t pq_ctx_kv_bytes(const pq_ctx *c) {
    if (!c) return 0;
    const pq_hparams *hp = &c->m->hp;
    return 2 * (size_t)hp->n_layers * c->n_ctx * hp->n_kv_heads * hp->head_dim * c->kv_elem;
}

int pq_ctx_init(pq_ctx **out, pq_model *m, int32_t n_ctx, int32_t n_batch, int kv_type) {
    if (!out) return PQ_ERR_ARG;
    *out = NULL;
    if (!m || !m->finalized || n_ctx <= 0 || n_batch <= 0) return PQ_ERR_ARG;
    if (kv_type != PQ_TYPE_F32 && kv_type != PQ_TYPE_F16) return PQ_ERR_TYPE;
    if (n_batch > n_ctx) n_batch = n_ctx;
    const pq_hparams *hp = &m->hp;
    pq_ctx *c = calloc(1, sizeof *c);
    if (!c) return PQ_ERR_NOMEM;
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->kv_type = kv_type;
    c->kv_elem = kv_type == PQ_TYPE_F32 ? 4 : 2;
    atomic_init(&c->cancel, 0);

    size_t nb = (size_t)n_batch, f = sizeof(float);
    size_t q_dim = (size_t)hp->n_heads * hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * hp->head_dim;
    size_t wide = (size_t)hp->dim;
    if (q_dim > wide) wide = q_dim;
    if ((size_t)hp->ffn_dim > wide) wide = hp->ffn_dim;
    size_t kv_half = pq_ctx_kv_bytes(c) / 2;
    int ok = 1;
    ok &= (c->k_cache = aligned_calloc(kv_half)) != NULL;
    ok &= (c->v_cache = aligned_calloc(kv_half)) != NULL;
    ok &= (c->x = aligned_calloc(nb * hp->dim * f)) != NULL;
    ok &= (c->xb = aligned_calloc(nb * wide * f)) != NULL;
    for (int i = 0; i < N_XQ; i++) ok &= (c->xq[i] = aligned_calloc(nb * m->max_act_bytes)) != NULL;
    ok &= (c->q = aligned_calloc(nb * q_dim * f)) != NULL;
    ok &= (c->k = aligned_calloc(nb * kv_dim * f)) != NULL;
    ok &= (c->v = aligned_calloc(nb * kv_dim * f)) != NULL;
    ok &= (c->att_out = aligned_calloc(nb * q_dim * f)) != NULL;
    ok &= (c->tmp = aligned_calloc(nb * hp->dim * f)) != NULL;
    ok &= (c->hb = aligned_calloc(nb * hp->ffn_dim * f)) != NULL;
    ok &= (c->hb2 = aligned_calloc(nb * hp->ffn_dim * f)) != NULL;
    c->att_stride = (pq_attn_scratch_floats(n_ctx, hp->head_dim) + 15) / 16 * 16;
    ok &= (c->att = aligned_calloc((size_t)pq_model_n_threads(m) * c->att_stride * f)) != NULL;
    ok &= (c->rope_cos = aligned_calloc(nb * (hp->rope_dim / 2) * f)) != NULL;
    ok &= (c->rope_sin = aligned_calloc(nb * (hp->rope_dim / 2) * f)) != NULL;
    /* Decode staging: a worker's private rows are used when n < n_threads. */
    c->n_threads = pq_model_n_threads(m);
    size_t n_priv = (size_t)(c->n_threads - 1 < n_batch ? c->n_threads - 1 : n_batch);
    ok &= (c->priv = calloc((size_t)c->n_threads, sizeof *c->priv)) != NULL;
    for (int i = 0; ok && i < c->n_threads && n_priv > 0; i++) {
        ok &= (c->priv[i].xb = aligned_calloc(n_priv * wide * f)) != NULL;
        for (int j = 0; j < N_XQ; j++)
            ok &= (c->priv[i].xq[j] = aligned_calloc(n_priv * m->max_act_bytes)) != NULL;
    }
    /* Prompt-GEMM scratch (kernels.h), not cleared: pages are touched only by
     * prompt batches, and only as far as the shapes need. */
    c->gemm_scratch_bytes = pq_gemm_scratch_bytes((int64_t)wide, n_batch);
    for (int i = 0; ok && i < c->n_threads && n_batch > 1; i++)
        ok &= posix_memalign(&c->priv[i].gemm_scratch, 64, c->gemm_scratch_bytes) == 0;
    c->n_tickets = 4 * hp->n_layers + 1; /* QKV, Wo, gate/up, down per layer; output */
    ok &= (c->tickets = aligned_calloc((size_t)c->n_tickets * sizeof *c->tickets)) != NULL;
    c->dyn_min_bytes = dyn_min_bytes();
    if (!ok) {
        pq_ctx_free(c);
        return PQ_ERR_NOMEM;
    }
    *out = c;
    return PQ_OK;
}

void pq_ctx_free(pq_ctx *c) {
    if (!c) return;
    void *bufs[] = {c->k_cache, c->v_cache, c->x, c->xb, c->q, c->k, c->v, c->att_out,
                    c->tmp, c->hb, c->hb2, c->att, c->rope_cos, c->rope_sin};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    for (int i = 0; i < N_XQ; i++) free(c->xq[i]);
    for (int i = 0; c->priv && i < c->n_threads; i++) {
        free(c->priv[i].xb);
        free(c->priv[i].gemm_scratch);
        for (int j = 0; j < N_XQ; j++) free(c->priv[i].xq[j]);
    }
    free(c->priv);
    free(c->tickets);
    free(c);
}

/* The cache layout for state.c (save/restore, context shift). */
void pq_ctx_kv_view(const pq_ctx *c, pq_kv_view *v) {
    v->m = c->m;
    v->n_ctx = c->n_ctx;
    v->kv_type = c->kv_type;
    v->kv_elem = c->kv_elem;
    v->k_cache = c->k_cache;
    v->v_cache = c->v_cache;
}
