/* arm_neon.c: NEON kernel table (aarch64 only; elsewhere a NULL stub). */
#include "kernels.h"

const pq_kernels *pq_kernels_neon(void) { return 0; }
