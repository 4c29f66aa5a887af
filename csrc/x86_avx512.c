#include "kernels.h"
const pq_kernels *pq_kernels_avx512(void) { return 0; }
const pq_kernels *pq_kernels_avx512vnni(void) { return 0; }
