/* bench.c: a greedy decode loop run entirely in C, for benchmarks only.
 *
 * What it is: the same work a Python generate loop does per token (one
 * pq_ctx_eval of one token, then the argmax of its logits), minus Python, so
 * benchmarks/compare.py can report what the Python side of a step costs.
 * What it is not: a sampler or a generation API (that is pyllama_q's Session);
 * it knows nothing of the model beyond what pq.h says.
 */
#include <stdlib.h>

#include "pq.h"

/* Index of the largest of x[0..n); the first one on ties (as numpy.argmax). */
static int32_t argmax_f32(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int pq_ctx_bench_decode(pq_ctx *c, int32_t n_vocab, int32_t first_token, int32_t pos,
                        int32_t n_steps, int32_t *out_tokens) {
    if (!c || n_vocab <= 0 || first_token < 0 || first_token >= n_vocab || pos < 0 ||
        n_steps < 0 || (n_steps > 0 && !out_tokens))
        return PQ_ERR_ARG;
    float *logits = malloc(sizeof(float) * (size_t)n_vocab);  /* (n_vocab) one row */
    if (!logits) return PQ_ERR_NOMEM;
    int32_t tok = first_token;
    int st = PQ_OK;
    for (int32_t i = 0; i < n_steps; i++) {
        st = pq_ctx_eval(c, &tok, 1, pos + i, logits, 0);
        if (st != PQ_OK) break;
        tok = argmax_f32(logits, n_vocab);
        out_tokens[i] = tok;
    }
    free(logits);
    return st;
}
