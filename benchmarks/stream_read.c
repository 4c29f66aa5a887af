/* stream_read.c: a STREAM-like read-bandwidth test (benchmark tool, not shipped).
 *
 * What it is: n threads each sum their own slice of one big buffer (much larger
 * than the last-level cache) with AVX2 loads; the bytes read divided by the
 * wall time of the slowest thread is the read bandwidth a decode step can hope
 * for. What it is not: STREAM itself (no copy/scale/triad, no writes timed).
 *
 *   cc -O2 -pthread stream_read.c -o stream_read
 *   ./stream_read N_THREADS MIB REPS   ->  one line: "best_gbs median_gbs"
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const uint8_t *p;
    size_t n;              /* bytes, a multiple of 128 */
    pthread_barrier_t *go;
    double sink;
} job;

/* Four independent 256-bit accumulators keep enough loads in flight. */
__attribute__((target("avx2")))
static double read_sum(const uint8_t *p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    int64_t t[4];
    _mm256_storeu_si256((__m256i *)t, a0);
    return (double)(t[0] + t[1] + t[2] + t[3]);
}

static void *worker(void *arg) {
    job *j = arg;
    pthread_barrier_wait(j->go);
    j->sink = read_sum(j->p, j->n);
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int nt = argc > 1 ? atoi(argv[1]) : 1;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 512;
    int reps = argc > 3 ? atoi(argv[3]) : 5;
    if (nt < 1 || nt > 256 || mib < 1 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: stream_read N_THREADS MIB REPS\n");
        return 2;
    }
    size_t bytes = mib << 20;
    uint8_t *buf = aligned_alloc(64, bytes);
    if (!buf) {
        fprintf(stderr, "stream_read: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    memset(buf, 1, bytes);  /* touch every page before timing */
    size_t slice = (bytes / nt) & ~(size_t)127;
    double gbs[100];
    for (int r = 0; r < reps; r++) {
        pthread_t th[256];
        job jobs[256];
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, (unsigned)nt + 1);
        for (int t = 0; t < nt; t++) {
            jobs[t] = (job){buf + (size_t)t * slice, slice, &go, 0};
            pthread_create(&th[t], NULL, worker, &jobs[t]);
        }
        double t0 = now();
        pthread_barrier_wait(&go);
        for (int t = 0; t < nt; t++) pthread_join(th[t], NULL);
        double dt = now() - t0;
        pthread_barrier_destroy(&go);
        gbs[r] = (double)slice * nt / dt / 1e9;
    }
    double best = 0;
    for (int r = 0; r < reps; r++) best = gbs[r] > best ? gbs[r] : best;
    qsort(gbs, reps, sizeof gbs[0], cmp);
    printf("%.2f %.2f\n", best, gbs[reps / 2]);
    free(buf);
    return 0;
}
