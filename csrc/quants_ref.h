/* quants_ref.h: the reference row encoders of quants.c that SIMD tables reuse
 * as their activation quantizers (internal; not part of pq.h). */
#ifndef PQ_QUANTS_REF_H
#define PQ_QUANTS_REF_H

#include <stdint.h>

void pq_quantize_row_q4_0(const float *x, void *y, int64_t n);
void pq_quantize_row_q4_1(const float *x, void *y, int64_t n);
void pq_quantize_row_q8_0(const float *x, void *y, int64_t n);
void pq_quantize_row_q8_1(const float *x, void *y, int64_t n);

#endif /* PQ_QUANTS_REF_H */
