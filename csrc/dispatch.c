/* dispatch.c: CPU feature detection and the choice of kernel table.
 *
 * What it is: reads the CPU's features once (cpuid + xgetbv on x86, so a
 * feature counts only if the OS also saves its registers; getauxval(AT_HWCAP)
 * on aarch64 Linux), picks the best table (avx512vnni > avx512 > avx2 >
 * scalar on x86, neon on arm64), honours PQ_FORCE_SCALAR=1, and answers the
 * pq_cpu_features / pq_kernels_* questions of pq.h.
 * What it is not: kernels (quants.c and the per-ISA files).
 *
 * Initialisation is lazy and guarded by pthread_once, so any entry point may
 * be the first one called.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

static char features[256];
static char available[128];
static const pq_kernels *active;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void add_word(char *buf, size_t cap, const char *w) {
    size_t len = strlen(buf);
    if (len + strlen(w) + 2 > cap) return;
    if (len) buf[len++] = ' ';
    strcpy(buf + len, w);
}

/* ---- feature detection ------------------------------------------------------ */

#if defined(__x86_64__) || defined(__i386__)
/* Which of the x86 variants this CPU and OS can run. */
static int has_avx2, has_avx512, has_avx512vnni;

static unsigned long long read_xcr0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static void detect(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    const int f16c = (c >> 29) & 1;
    /* XCR0: bits 1,2 = SSE/AVX state; 5,6,7 = opmask / ZMM halves. */
    const unsigned long long xcr0 = osxsave ? read_xcr0() : 0;
    const int os_avx = (xcr0 & 0x6) == 0x6, os_avx512 = (xcr0 & 0xe6) == 0xe6;
    unsigned int b7 = 0, c7 = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) { b7 = b; c7 = c; }
    const int avx2 = (b7 >> 5) & 1, f = (b7 >> 16) & 1, dq = (b7 >> 17) & 1;
    const int bw = (b7 >> 30) & 1, vl = (b7 >> 31) & 1, vnni = (c7 >> 11) & 1;
    if (os_avx && avx) {
        if (avx2) add_word(features, sizeof features, "avx2");
        if (fma) add_word(features, sizeof features, "fma");
        if (f16c) add_word(features, sizeof features, "f16c");
    }
    if (os_avx512) {
        if (f) add_word(features, sizeof features, "avx512f");
        if (bw) add_word(features, sizeof features, "avx512bw");
        if (vl) add_word(features, sizeof features, "avx512vl");
        if (dq) add_word(features, sizeof features, "avx512dq");
        if (vnni) add_word(features, sizeof features, "avx512vnni");
    }
    has_avx2 = os_avx && avx && avx2 && fma && f16c;
    has_avx512 = has_avx2 && os_avx512 && f && bw && vl && dq;
    has_avx512vnni = has_avx512 && vnni;
}

static int cpu_can(const char *variant) {
    if (!strcmp(variant, "avx2")) return has_avx2;
    if (!strcmp(variant, "avx512")) return has_avx512;
    if (!strcmp(variant, "avx512vnni")) return has_avx512vnni;
    return 0;
}
#elif defined(__aarch64__)
static int has_dotprod;

static void detect(void) {
    add_word(features, sizeof features, "neon"); /* baseline on aarch64 */
#if defined(__linux__) && defined(HWCAP_ASIMDDP)
    has_dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__linux__)
    has_dotprod = (getauxval(AT_HWCAP) & (1UL << 20)) != 0; /* HWCAP_ASIMDDP */
#endif
    if (has_dotprod) add_word(features, sizeof features, "dotprod");
}

static int cpu_can(const char *variant) { return !strcmp(variant, "neon"); }
#else
static void detect(void) {}
static int cpu_can(const char *variant) { (void)variant; return 0; }
#endif

/* ---- table choice ------------------------------------------------------------ */

/* Best first; a variant counts if the CPU can run it and the build has it. */
static const char *const order[] = {"avx512vnni", "avx512", "avx2", "neon"};

static const pq_kernels *table_of(const char *variant) {
    if (!strcmp(variant, "scalar")) return pq_kernels_scalar();
    if (!cpu_can(variant)) return NULL;
    if (!strcmp(variant, "avx512vnni")) return pq_kernels_avx512vnni();
    if (!strcmp(variant, "avx512")) return pq_kernels_avx512();
    if (!strcmp(variant, "avx2")) return pq_kernels_avx2();
    if (!strcmp(variant, "neon")) return pq_kernels_neon();
    return NULL;
}

static void init(void) {
    detect();
    active = pq_kernels_scalar();
    add_word(available, sizeof available, "scalar");
    int chosen = 0;
    for (size_t i = sizeof order / sizeof order[0]; i-- > 0;) {
        if (table_of(order[i])) add_word(available, sizeof available, order[i]);
    }
    for (size_t i = 0; i < sizeof order / sizeof order[0] && !chosen; i++) {
        const pq_kernels *k = table_of(order[i]);
        if (k) { active = k; chosen = 1; }
    }
    const char *force = getenv("PQ_FORCE_SCALAR");
    if (force && force[0] && strcmp(force, "0") != 0) active = pq_kernels_scalar();
}

/* ---- pq.h / kernels.h entry points --------------------------------------------- */

const pq_kernels *pq_kernels_get(void) {
    pthread_once(&once, init);
    return active;
}

const char *pq_cpu_features(void) {
    pthread_once(&once, init);
    return features;
}

const char *pq_kernels_active(void) { return pq_kernels_get()->name; }

const char *pq_kernels_available(void) {
    pthread_once(&once, init);
    return available;
}

int pq_kernels_select(const char *variant) {
    pthread_once(&once, init);
    if (!variant) return PQ_ERR_ARG;
    const pq_kernels *k = table_of(variant);
    if (!k) return PQ_ERR_UNSUPPORTED;
    active = k;
    return PQ_OK;
}

/* Y (n_tok, rows) = X (n_tok, cols) @ W (rows, cols)^T for rows [r0, r1)
 * with one table, single thread: quantize X, then one gemm call. */
static int matmul(const char *variant, int wtype, const void *W, int64_t rows,
                  int64_t cols, const float *X, int64_t n_tok, float *Y, int64_t r0,
                  int64_t r1) {
    pthread_once(&once, init);
    if (!W || !X || !Y || rows < 0 || cols <= 0 || n_tok < 0) return PQ_ERR_ARG;
    if (r0 < 0 || r1 > rows || r0 > r1) return PQ_ERR_ARG;
    const pq_kernels *k = variant ? table_of(variant) : active;
    if (!k) return PQ_ERR_UNSUPPORTED;
    if (wtype < 0 || wtype >= PQ_TYPE_COUNT || !k->gemm[wtype] || !k->quantize_act[wtype])
        return PQ_ERR_TYPE;
    const size_t w_stride = pq_row_bytes(wtype, cols);
    const size_t x_stride = pq_act_row_bytes(wtype, cols);
    if (!w_stride || !x_stride) return PQ_ERR_SHAPE;
    char *xq = malloc(x_stride * (size_t)(n_tok ? n_tok : 1));
    if (!xq) return PQ_ERR_NOMEM;
    for (int64_t t = 0; t < n_tok; t++)
        k->quantize_act[wtype](X + t * cols, xq + t * x_stride, cols);
    k->gemm[wtype](cols, W, w_stride, xq, x_stride, n_tok, Y, rows, r0, r1);
    free(xq);
    return PQ_OK;
}

int pq_kernel_matmul(const char *variant, int wtype, const void *W, int64_t rows,
                     int64_t cols, const float *X, int64_t n_tok, float *Y) {
    return matmul(variant, wtype, W, rows, cols, X, n_tok, Y, 0, rows);
}

int pq_kernel_matmul_rows(const char *variant, int wtype, const void *W, int64_t rows,
                          int64_t cols, const float *X, int64_t n_tok, float *Y,
                          int64_t r0, int64_t r1) {
    return matmul(variant, wtype, W, rows, cols, X, n_tok, Y, r0, r1);
}

int pq_kernel_dot(const char *variant, int type, const void *a, const float *b,
                  int64_t n, float *out) {
    pthread_once(&once, init);
    if (!a || !b || !out || n < 0) return PQ_ERR_ARG;
    const pq_kernels *k = variant ? table_of(variant) : active;
    if (!k) return PQ_ERR_UNSUPPORTED;
    if (type == PQ_TYPE_F32) *out = k->dot_f32(a, b, n);
    else if (type == PQ_TYPE_F16) *out = k->dot_f16(a, b, n);
    else return PQ_ERR_TYPE;
    return PQ_OK;
}

int pq_kernel_axpy(const char *variant, int type, float alpha, const void *x, float *y,
                   int64_t n) {
    pthread_once(&once, init);
    if (!x || !y || n < 0) return PQ_ERR_ARG;
    const pq_kernels *k = variant ? table_of(variant) : active;
    if (!k) return PQ_ERR_UNSUPPORTED;
    if (type == PQ_TYPE_F32) k->axpy_f32(alpha, x, y, n);
    else if (type == PQ_TYPE_F16) k->axpy_f16(alpha, x, y, n);
    else return PQ_ERR_TYPE;
    return PQ_OK;
}

int pq_kernel_attn(const char *variant, int decode, int kv_type, int64_t hd, const float *Q, int64_t q_ld,
                   int g, int64_t n_tok, int64_t n_past, const void *K, const void *V,
                   int64_t kv_ld, float scale, float *O, int64_t o_ld) {
    pthread_once(&once, init);
    if (!Q || !K || !V || !O || hd <= 0 || g <= 0 || n_tok < 0 || n_past < 0) return PQ_ERR_ARG;
    if (q_ld < g * hd || o_ld < g * hd || kv_ld < hd) return PQ_ERR_ARG;
    const pq_kernels *k = variant ? table_of(variant) : active;
    if (!k) return PQ_ERR_UNSUPPORTED;
    if (kv_type != PQ_TYPE_F32 && kv_type != PQ_TYPE_F16) return PQ_ERR_TYPE;
    const int f32 = kv_type == PQ_TYPE_F32;
    pq_attn_fn f = decode ? (f32 ? k->attn_dec_f32 : k->attn_dec_f16) : (f32 ? k->attn_f32 : k->attn_f16);
    if (!f) return PQ_ERR_UNSUPPORTED;
    float *scratch = NULL;
    if (posix_memalign((void **)&scratch, 64, pq_attn_scratch_floats(n_past + n_tok, hd) * sizeof(float)))
        return PQ_ERR_NOMEM;
    f(hd, Q, q_ld, g, n_tok, n_past, K, V, kv_ld, scale, O, o_ld, scratch);
    free(scratch);
    return PQ_OK;
}

static _Thread_local void *scratch_p;
static _Thread_local size_t scratch_n;

void pq_gemm_scratch_set(void *p, size_t bytes) {
    scratch_p = p;
    scratch_n = p ? bytes : 0;
}

void *pq_gemm_scratch_get(size_t *bytes) {
    *bytes = scratch_n;
    return scratch_p;
}

int pq_kernel_silu_mul(const char *variant, float *g, const float *up, int64_t n) {
    pthread_once(&once, init);
    if (!g || !up || n < 0) return PQ_ERR_ARG;
    const pq_kernels *k = variant ? table_of(variant) : active;
    if (!k) return PQ_ERR_UNSUPPORTED;
    if (!k->silu_mul) return PQ_ERR_UNSUPPORTED;
    k->silu_mul(g, up, n);
    return PQ_OK;
}

int pq_kernel_quantize_act(const char *variant, int wtype, const float *x, void *y,
                           int64_t n_rows, int64_t cols) {
    pthread_once(&once, init);
    if (!x || !y || n_rows < 0 || cols < 0) return PQ_ERR_ARG;
    const pq_kernels *k = variant ? table_of(variant) : active;
    if (!k) return PQ_ERR_UNSUPPORTED;
    if (wtype < 0 || wtype >= PQ_TYPE_COUNT || !k->quantize_act[wtype]) return PQ_ERR_TYPE;
    const size_t rb = pq_act_row_bytes(wtype, cols);
    if (!rb && cols) return PQ_ERR_SHAPE;
    for (int64_t r = 0; r < n_rows; r++)
        k->quantize_act[wtype](x + r * cols, (char *)y + r * rb, cols);
    return PQ_OK;
}
