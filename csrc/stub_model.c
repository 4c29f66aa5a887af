/* stub_model.c: placeholders for the model half of pq.h, deleted function
 * by function as model.c / forward.c implement them. */
#include "pq.h"

int pq_model_init(pq_model **out, const pq_hparams *hp, int n_threads) {
    (void)hp; (void)n_threads; *out = 0; return PQ_ERR_UNSUPPORTED;
}
int pq_model_set_tensor(pq_model *m, int role, int layer, int type, const void *data,
                        int64_t ne0, int64_t ne1) {
    (void)m; (void)role; (void)layer; (void)type; (void)data; (void)ne0; (void)ne1;
    return PQ_ERR_UNSUPPORTED;
}
int pq_model_finalize(pq_model *m) { (void)m; return PQ_ERR_UNSUPPORTED; }
int pq_model_n_threads(const pq_model *m) { (void)m; return 0; }
void pq_model_free(pq_model *m) { (void)m; }
int pq_ctx_init(pq_ctx **out, pq_model *m, int32_t n_ctx, int32_t n_batch, int kv_type) {
    (void)m; (void)n_ctx; (void)n_batch; (void)kv_type; *out = 0; return PQ_ERR_UNSUPPORTED;
}
void pq_ctx_free(pq_ctx *c) { (void)c; }
int pq_ctx_eval(pq_ctx *c, const int32_t *tokens, int32_t n, int32_t pos,
                float *logits, int all_logits) {
    (void)c; (void)tokens; (void)n; (void)pos; (void)logits; (void)all_logits;
    return PQ_ERR_UNSUPPORTED;
}
void pq_ctx_cancel(pq_ctx *c) { (void)c; }
size_t pq_ctx_kv_bytes(const pq_ctx *c) { (void)c; return 0; }
