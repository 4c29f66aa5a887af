/* pq.h: the public C API of pyllama-q's core, and the only header cffi reads.
 *
 * What it is: the contract between the Python runtime (pyllama_q/) and the C
 * core (csrc/). What it is not: internal kernel interfaces (see kernels.h).
 *
 * cffi's cdef is built from this file with every line starting with '#'
 * removed, so keep it plain C declarations: no macros, no inline code.
 * Every function that can fail returns a pq_status (0 = PQ_OK); messages
 * come from pq_status_str(). Library code never exits or aborts.
 */
#ifndef PQ_H
#define PQ_H

#include <stddef.h>
#include <stdint.h>

/* ---- status codes ------------------------------------------------------ */
enum {
    PQ_OK = 0,
    PQ_ERR_NOMEM = 1,       /* an allocation failed */
    PQ_ERR_ARG = 2,         /* an argument is out of range or NULL */
    PQ_ERR_TYPE = 3,        /* a tensor type this build cannot use */
    PQ_ERR_SHAPE = 4,       /* a tensor's shape does not match the hparams */
    PQ_ERR_MISSING = 5,     /* a required tensor was never set */
    PQ_ERR_CTX_FULL = 6,    /* positions past the session's context size */
    PQ_ERR_CANCELLED = 7,   /* pq_ctx_cancel() stopped the evaluation */
    PQ_ERR_THREAD = 8,      /* a worker thread could not be started */
    PQ_ERR_UNSUPPORTED = 9, /* a kernel variant this CPU or build lacks */
    PQ_ERR_STATE = 10       /* a saved state does not fit this model/session */
};
const char *pq_status_str(int status);

/* ---- tensor types: the ids are GGML's (ggml_type) ----------------------- */
enum {
    PQ_TYPE_F32 = 0,
    PQ_TYPE_F16 = 1,
    PQ_TYPE_Q4_0 = 2,
    PQ_TYPE_Q4_1 = 3,
    PQ_TYPE_Q8_0 = 8,
    PQ_TYPE_Q8_1 = 9,      /* activations only (the dot partner of Q4_1) */
    PQ_TYPE_BF16 = 30
};
/* 1 if weights of this type can be used for matmuls here, else 0. */
int pq_type_supported(int type);
/* Elements per block (1 for float types); 0 for an unknown type. */
int64_t pq_type_block_size(int type);
/* Bytes per block (element size for float types); 0 for an unknown type. */
size_t pq_type_block_bytes(int type);

/* Quantize / dequantize n_rows rows of n_cols floats with the scalar
 * reference code (bit-exact with ggml's reference encoders). n_cols must be a
 * multiple of the block size. Rows are contiguous. */
int pq_quantize(int type, const float *src, void *dst, int64_t n_rows, int64_t n_cols);
int pq_dequantize(int type, const void *src, float *dst, int64_t n_rows, int64_t n_cols);

/* ---- CPU features and kernel dispatch ----------------------------------- */
/* Space-separated features found at start-up, e.g. "avx2 fma f16c avx512f
 * avx512bw avx512vnni" or "neon dotprod". */
const char *pq_cpu_features(void);
/* The variant in use: "scalar", "avx2", "avx512", "avx512vnni", "neon".
 * Decided once at start-up; PQ_FORCE_SCALAR=1 in the environment forces
 * "scalar". */
const char *pq_kernels_active(void);
/* Space-separated variants this CPU and build can run (always "scalar"). */
const char *pq_kernels_available(void);
/* Switch the active variant (tests and benchmarks); PQ_ERR_UNSUPPORTED if the
 * CPU or the build lacks it. Not thread-safe with running evaluations. */
int pq_kernels_select(const char *variant);

/* Test and benchmark hook: Y (n_tok, rows) = X (n_tok, cols) @ W(rows, cols)^T
 * with the named variant (NULL = active), exactly as the forward pass runs it
 * (activations quantized to the weight type's partner format first). */
int pq_kernel_matmul(const char *variant, int wtype, const void *W, int64_t rows,
                     int64_t cols, const float *X, int64_t n_tok, float *Y);
/* The same for rows [r0, r1) only (the slice a forward-pass thread gets):
 * Y keeps its full (n_tok, rows) layout and elements outside are untouched. */
int pq_kernel_matmul_rows(const char *variant, int wtype, const void *W, int64_t rows,
                          int64_t cols, const float *X, int64_t n_tok, float *Y,
                          int64_t r0, int64_t r1);
/* Test hook: n_rows rows of cols floats into the activation format that
 * pairs with wtype (pq_act_type), with the variant's quantize_act. */
int pq_kernel_quantize_act(const char *variant, int wtype, const float *x, void *y,
                           int64_t n_rows, int64_t cols);
/* Test hooks for the attention helpers of a variant (NULL = active); type is
 * PQ_TYPE_F32 or PQ_TYPE_F16 (the KV-cache storage of a / x):
 * *out = dot(a, b) over n elements; y[i] += alpha * x[i] for i < n. */
int pq_kernel_dot(const char *variant, int type, const void *a, const float *b,
                  int64_t n, float *out);
int pq_kernel_axpy(const char *variant, int type, float alpha, const void *x, float *y,
                   int64_t n);
/* Test hook for the causal attention kernels of a variant (NULL = active):
 * n_tok tokens of g query heads each (Q, O rows q_ld / o_ld floats apart, heads
 * hd apart) against the n_past + n_tok cached keys and values K, V (kv_type
 * PQ_TYPE_F32 or PQ_TYPE_F16, rows kv_ld elements apart); token t sees
 * positions 0..n_past+t. decode 0: the blocked (prefill) kernel, 1: the
 * decode kernel (PQ_ERR_UNSUPPORTED if the variant has none). Allocates its
 * scratch. */
int pq_kernel_attn(const char *variant, int decode, int kv_type, int64_t hd, const float *Q, int64_t q_ld,
                   int g, int64_t n_tok, int64_t n_past, const void *K, const void *V,
                   int64_t kv_ld, float scale, float *O, int64_t o_ld);

/* Test hook: g[i] = silu(g[i]) * up[i] for i < n with a variant's kernel. */
int pq_kernel_silu_mul(const char *variant, float *g, const float *up, int64_t n);

/* ---- model ---------------------------------------------------------------- */
typedef struct {
    int32_t n_vocab;
    int32_t dim;            /* embedding length */
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;       /* dim / n_heads unless the file says otherwise */
    int32_t ffn_dim;
    int32_t n_ctx_train;
    int32_t rope_dim;       /* rotated dimensions per head (<= head_dim) */
    float rope_base;        /* theta */
    float rms_eps;
} pq_hparams;

/* Tensor roles. Global ones take layer = -1. */
enum {
    PQ_T_TOK_EMBD = 0,      /* (n_vocab, dim) */
    PQ_T_OUTPUT_NORM = 1,   /* (dim) f32 */
    PQ_T_OUTPUT = 2,        /* (n_vocab, dim); absent = tied to TOK_EMBD */
    PQ_T_ROPE_FREQS = 3,    /* (rope_dim/2) f32 factors (LLaMA 3.1), optional */
    PQ_T_ATTN_NORM = 4,     /* (dim) f32 */
    PQ_T_WQ = 5,            /* (n_heads*head_dim, dim) */
    PQ_T_WK = 6,            /* (n_kv_heads*head_dim, dim) */
    PQ_T_WV = 7,            /* (n_kv_heads*head_dim, dim) */
    PQ_T_WO = 8,            /* (dim, n_heads*head_dim) */
    PQ_T_FFN_NORM = 9,      /* (dim) f32 */
    PQ_T_FFN_GATE = 10,     /* (ffn_dim, dim) */
    PQ_T_FFN_UP = 11,       /* (ffn_dim, dim) */
    PQ_T_FFN_DOWN = 12      /* (dim, ffn_dim) */
};

typedef struct pq_model pq_model;
typedef struct pq_ctx pq_ctx;

/* A model holds pointers to weights (owned by the caller, typically a memory
 * map that must outlive the model) and a persistent thread pool of n_threads
 * workers (n_threads <= 0: the number of physical cores). */
int pq_model_init(pq_model **out, const pq_hparams *hp, int n_threads);
/* Shapes are (rows, cols) = (ne1, ne0) in GGUF terms; 1-D tensors pass ne1=1. */
int pq_model_set_tensor(pq_model *m, int role, int layer, int type, const void *data,
                        int64_t ne0, int64_t ne1);
/* Checks every required tensor is set and prepares the model; call once after
 * the last pq_model_set_tensor. */
int pq_model_finalize(pq_model *m);
int pq_model_n_threads(const pq_model *m);
void pq_model_free(pq_model *m);

/* ---- sessions (KV cache + scratch) ---------------------------------------- */
/* kv_type: PQ_TYPE_F32 or PQ_TYPE_F16. n_batch: most tokens per pq_ctx_eval. */
int pq_ctx_init(pq_ctx **out, pq_model *m, int32_t n_ctx, int32_t n_batch, int kv_type);
void pq_ctx_free(pq_ctx *c);
/* Evaluate tokens[0..n) at positions pos..pos+n-1 through all layers; cache
 * entries at positions >= pos are overwritten. If logits is not NULL it gets
 * (all_logits ? n : 1) rows of n_vocab floats (the last token's when 1).
 * Evaluations of sessions of one model are serialised by the model. */
int pq_ctx_eval(pq_ctx *c, const int32_t *tokens, int32_t n, int32_t pos,
                float *logits, int all_logits);
/* Thread-safe: the running (or next) pq_ctx_eval of this session returns
 * PQ_ERR_CANCELLED after the layer in progress; the cache up to the
 * position before that call stays valid. */
void pq_ctx_cancel(pq_ctx *c);
size_t pq_ctx_kv_bytes(const pq_ctx *c);
/* Benchmark hook (csrc/bench.c): n_steps greedy decode steps entirely in C.
 * Step i evaluates one token at position pos+i (the first is first_token,
 * each next one the argmax of the previous step's logits) and writes that
 * argmax to out_tokens[i]. n_vocab must be the model's vocabulary size (the
 * logits row length, as for pq_ctx_eval's buffer). Stops at the first error. */
int pq_ctx_bench_decode(pq_ctx *c, int32_t n_vocab, int32_t first_token, int32_t pos,
                        int32_t n_steps, int32_t *out_tokens);

/* ---- session state: save/restore and context shift (state.c) ------------- */
/* The cache element type (PQ_TYPE_F32 or PQ_TYPE_F16) and size in positions. */
int pq_ctx_kv_type(const pq_ctx *c);
int32_t pq_ctx_n_ctx(const pq_ctx *c);
/* Bytes of the K and V rows of positions [0, n_pos): for each layer, its K
 * rows then its V rows, each (n_pos, n_kv_heads*head_dim) in the cache type.
 * 0 if n_pos is out of range. */
size_t pq_ctx_kv_state_bytes(const pq_ctx *c, int32_t n_pos);
/* Copy those rows out / in; bytes must equal pq_ctx_kv_state_bytes (else
 * PQ_ERR_STATE). Not to be called while the session evaluates. */
int pq_ctx_kv_save(const pq_ctx *c, int32_t n_pos, void *dst, size_t bytes);
int pq_ctx_kv_load(pq_ctx *c, int32_t n_pos, const void *src, size_t bytes);
/* Context shift: of the n_used cached positions keep [0, n_keep), drop
 * [n_keep, n_keep+n_discard) and move the rest down by n_discard, rotating
 * the moved keys by -n_discard positions (RoPE with the model's theta,
 * rope_dim and frequency factors), so they equal keys computed at their new
 * positions. Not to be called while the session evaluates. */
int pq_ctx_kv_shift(pq_ctx *c, int32_t n_keep, int32_t n_discard, int32_t n_used);
/* Test hook: the cached K and V rows (kv_dim floats each) of one layer and
 * position, converted to f32; k or v may be NULL. */
int pq_ctx_kv_get(const pq_ctx *c, int32_t layer, int32_t pos, float *k, float *v);

#endif /* PQ_H */
