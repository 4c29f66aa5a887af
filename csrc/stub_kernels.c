/* stub_kernels.c: placeholders for the kernel half of pq.h, deleted
 * function by function as quants.c / dispatch.c implement them. */
#include "pq.h"

int pq_type_supported(int type) { (void)type; return 0; }
int64_t pq_type_block_size(int type) { (void)type; return 0; }
size_t pq_type_block_bytes(int type) { (void)type; return 0; }
int pq_quantize(int type, const float *src, void *dst, int64_t n_rows, int64_t n_cols) {
    (void)type; (void)src; (void)dst; (void)n_rows; (void)n_cols; return PQ_ERR_UNSUPPORTED;
}
const char *pq_cpu_features(void) { return ""; }
const char *pq_kernels_active(void) { return "none"; }
const char *pq_kernels_available(void) { return ""; }
int pq_kernels_select(const char *variant) { (void)variant; return PQ_ERR_UNSUPPORTED; }
int pq_kernel_matmul(const char *variant, int wtype, const void *W, int64_t rows,
                     int64_t cols, const float *X, int64_t n_tok, float *Y) {
    (void)variant; (void)wtype; (void)W; (void)rows; (void)cols; (void)X; (void)n_tok; (void)Y;
    return PQ_ERR_UNSUPPORTED;
}
