/* threadpool.c: the persistent worker pool behind pq_model (see threadpool.h).
 *
 * What it is: pthreads that wait for a job generation counter to change, run
 * the job, and report back through an atomic counter. Between jobs a worker
 * spins briefly (decode calls come back within microseconds) and then sleeps
 * on a condition variable, so an idle model burns no CPU. What it is not: a
 * scheduler; work splitting is the caller's business (forward.c).
 *
 * The machine may be oversubscribed (more runnable threads than cores), so
 * every spin loop yields the CPU after a while instead of burning a time slice
 * another worker of ours needs in order to reach the same barrier, and a
 * barrier wait longer than a few microseconds sleeps on a futex (the last
 * arrival wakes it), which frees the core for the worker being waited for.
 * Measured on the 2-core build machine under a load average of ~8
 * (SmolLM2-135M Q4_1 decode, 2 threads, 3 runs each): spin + sched_yield
 * every 1024 pauses 15-18 tok/s; futex after 1024 pauses 14-15; after 256
 * pauses 21-23; pure spinning 2 tok/s. On an idle machine a longer spin wins
 * (see pq_pool_barrier), hence the adaptive budget.
 */
#define _GNU_SOURCE
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pq.h"

#ifdef __linux__
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
/* Sleep while *addr == val (returns at once if it already differs). */
static void futex_wait(atomic_uint *addr, unsigned val) {
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}
static void futex_wake_all(atomic_uint *addr) {
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
static void futex_wait(atomic_uint *addr, unsigned val) { (void)addr; (void)val; sched_yield(); }
static void futex_wake_all(atomic_uint *addr) { (void)addr; }
#endif

#ifndef DEFAULT_BARRIER_SPIN_US
#define DEFAULT_BARRIER_SPIN_US 50
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void cpu_relax(void) {}
#endif

enum {
    SPINS_BEFORE_YIELD = 1 << 10, /* pause-loops before sched_yield in waits */
    IDLE_SPINS = 1 << 14,         /* polls after a job before sleeping */
    CLOCK_EVERY = 16,             /* pauses between clock reads in a barrier wait */
    MIN_SPIN_NS = 8000            /* the adaptive barrier spin's floor (or the ceiling, if lower) */
};

/* The most a barrier waiter spins before it sleeps on the futex, in ns
 * (PQ_BARRIER_SPIN_US overrides, for tuning), read once per pool. A time,
 * not a pause count: one pause costs ~10 cycles on some CPUs and ~140 on
 * others. The budget actually used adapts below this (see pq_pool_barrier). */
static long barrier_spin_max_ns(void) {
    long v = DEFAULT_BARRIER_SPIN_US * 1000L;
    const char *env = getenv("PQ_BARRIER_SPIN_US");
    if (env && *env) {
        char *end;
        long us = strtol(env, &end, 10);
        if (*end == 0 && us >= 0 && us <= 1000000) v = us * 1000L;
    }
    return v;
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

typedef struct {
    pq_pool *pool;
    int ith;
    pthread_t tid;
} pq_worker;

struct pq_pool {
    int n;                       /* workers including the caller */
    pq_worker *workers;          /* [1, n): the started threads */
    int n_started;

    /* The current job; written by worker 0 before it bumps job_gen. */
    pq_pool_fn fn;
    void *arg;
    atomic_uint job_gen;         /* bumped once per dispatch */
    atomic_int pending;          /* workers (other than 0) still running */
    atomic_int quit;

    /* Sleeping workers wait here for job_gen to change. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int n_sleeping;

    /* The barrier: arrivals count up to n, the last one bumps bar_gen. */
    atomic_int bar_count;
    atomic_uint bar_gen;
    atomic_int bar_sleepers;     /* waiters asleep on the bar_gen futex */
    atomic_long spin_ns;         /* current spin budget of a barrier wait */
    long spin_max_ns, spin_min_ns; /* its bounds, fixed at init */
};

void pq_pool_barrier(pq_pool *p) {
    if (p->n == 1) return;
    unsigned gen = atomic_load(&p->bar_gen);
    if (atomic_fetch_add(&p->bar_count, 1) == p->n - 1) {
        /* Last to arrive: reset the count before releasing the others, who
         * may arrive at the next barrier straight away. */
        atomic_store(&p->bar_count, 0);
        atomic_fetch_add(&p->bar_gen, 1);
        if (atomic_load(&p->bar_sleepers) > 0) futex_wake_all(&p->bar_gen);
        return;
    }
    /* Spin (the usual case: the others are a few microseconds behind), then
     * sleep. Sleepers are counted before re-checking the generation, both
     * seq_cst, so the last arrival either sees a sleeper and wakes it or the
     * sleeper sees the new generation.
     * The spin budget adapts: a wait that ends while spinning doubles it
     * (up to barrier_spin_max_ns), a wait that runs out halves it (down to
     * spin_min_ns: MIN_SPIN_NS, about the old fixed 256 pauses). On an
     * idle machine waits end within the budget and spinning avoids a futex
     * wake-up (~10-50 us) per barrier; on an oversubscribed one the worker
     * being waited for may not be running at all, and spinning only delays
     * it, so the budget shrinks. Measured SmolLM2-135M Q4_0 decode, 2 threads,
     * C loop: idle machine, fixed 8 us 4.9-5.3 ms/token, fixed 30 us 4.4-4.5;
     * with two busy processes on the 2 cores, fixed 8 us 8.2-9.6, fixed 30 us
     * 11.4-11.6. A first adaptive rule (grow by 1/8, floor 1 us) collapsed on
     * the idle machine: one timeout undid six successes, the budget sank to
     * ~1 us, and 2-thread decode slept in the futex (CPU share 0.54-0.75,
     * slower than 1 thread). Doubling with an 8 us floor: idle 3.6-3.9
     * ms/token, CPU share 0.98; with two busy processes 7.4-11.6 (fixed 8 us
     * 7.4-8.3). */
    long budget = atomic_load_explicit(&p->spin_ns, memory_order_relaxed), deadline = 0;
    for (unsigned spins = 0; atomic_load_explicit(&p->bar_gen, memory_order_acquire) == gen;) {
        cpu_relax();
        if (++spins % CLOCK_EVERY) continue;
        long t = now_ns();
        if (!deadline) deadline = t + budget;
        if (t >= deadline) {
            long shrunk = budget / 2 > p->spin_min_ns ? budget / 2 : p->spin_min_ns;
            atomic_store_explicit(&p->spin_ns, shrunk, memory_order_relaxed);
            atomic_fetch_add(&p->bar_sleepers, 1);
            while (atomic_load(&p->bar_gen) == gen) futex_wait(&p->bar_gen, gen);
            atomic_fetch_sub(&p->bar_sleepers, 1);
            return;
        }
    }
    if (budget < p->spin_max_ns)
        atomic_store_explicit(&p->spin_ns, 2 * budget < p->spin_max_ns ? 2 * budget : p->spin_max_ns,
                              memory_order_relaxed);
}

static void *worker_main(void *varg) {
    pq_worker *w = varg;
    pq_pool *p = w->pool;
    unsigned seen = 0; /* job_gen starts at 0 */
    for (;;) {
        /* Poll for a new job for a while, then sleep on the condvar. The
         * n_sleeping / job_gen pair is sequentially consistent so either we
         * see the new generation or the dispatcher sees us sleeping. */
        unsigned spins = 0;
        while (atomic_load(&p->job_gen) == seen && !atomic_load(&p->quit)) {
            cpu_relax();
            if (++spins % SPINS_BEFORE_YIELD == 0) sched_yield();
            if (spins >= IDLE_SPINS) {
                pthread_mutex_lock(&p->mu);
                atomic_fetch_add(&p->n_sleeping, 1);
                while (atomic_load(&p->job_gen) == seen && !atomic_load(&p->quit))
                    pthread_cond_wait(&p->cv, &p->mu);
                atomic_fetch_sub(&p->n_sleeping, 1);
                pthread_mutex_unlock(&p->mu);
                break;
            }
        }
        if (atomic_load(&p->quit)) break;
        seen = atomic_load(&p->job_gen);
        p->fn(p->arg, w->ith, p->n);
        atomic_fetch_sub(&p->pending, 1);
    }
    return NULL;
}

void pq_pool_run(pq_pool *p, pq_pool_fn fn, void *arg) {
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add(&p->job_gen, 1); /* publishes fn/arg (seq_cst) */
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n);
    unsigned spins = 0;
    while (atomic_load(&p->pending) > 0) {
        cpu_relax();
        if (++spins >= SPINS_BEFORE_YIELD) {
            sched_yield();
            spins = 0;
        }
    }
}

int pq_pool_size(const pq_pool *p) { return p->n; }

static void stop_workers(pq_pool *p) {
    atomic_store(&p->quit, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i <= p->n_started; i++) pthread_join(p->workers[i].tid, NULL);
    p->n_started = 0;
}

int pq_pool_init(pq_pool **out, int n_threads) {
    *out = NULL;
    if (n_threads <= 0) n_threads = pq_physical_cores();
    if (n_threads > 1024) return PQ_ERR_ARG;
    pq_pool *p = calloc(1, sizeof *p);
    if (!p) return PQ_ERR_NOMEM;
    p->n = n_threads;
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->workers) {
        free(p);
        return PQ_ERR_NOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    /* a ceiling below the floor (PQ_BARRIER_SPIN_US < 8) lowers the floor too */
    p->spin_max_ns = barrier_spin_max_ns();
    p->spin_min_ns = p->spin_max_ns < MIN_SPIN_NS ? p->spin_max_ns : MIN_SPIN_NS;
    atomic_init(&p->spin_ns, p->spin_max_ns);
    for (int i = 1; i < n_threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].ith = i;
        if (pthread_create(&p->workers[i].tid, NULL, worker_main, &p->workers[i]) != 0) {
            pq_pool_free(p);
            return PQ_ERR_THREAD;
        }
        p->n_started = i;
    }
    *out = p;
    return PQ_OK;
}

void pq_pool_free(pq_pool *p) {
    if (!p) return;
    stop_workers(p);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->workers);
    free(p);
}

/* ---- core counting ------------------------------------------------------ */

static int read_int_file(const char *path, int *v) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int ok = fscanf(f, "%d", v) == 1;
    fclose(f);
    return ok;
}

/* Unique (physical_package_id, core_id) pairs under /sys, or 0. */
static int cores_from_sysfs(void) {
    enum { MAX_CPUS = 4096 };
    long long seen[MAX_CPUS]; /* 32 KiB of stack, init path only */
    int n_seen = 0;
    for (int cpu = 0; cpu < MAX_CPUS; cpu++) {
        char path[128];
        int pkg, core;
        snprintf(path, sizeof path,
                 "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        if (!read_int_file(path, &pkg)) {
            if (cpu == 0) return 0;
            break;
        }
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        if (!read_int_file(path, &core)) return 0;
        long long key = ((long long)pkg << 32) | (unsigned)core;
        int dup = 0;
        for (int i = 0; i < n_seen && !dup; i++) dup = seen[i] == key;
        if (!dup) seen[n_seen++] = key;
    }
    return n_seen;
}

int pq_physical_cores(void) {
    int n = 0;
#ifdef __linux__
    n = cores_from_sysfs();
    /* A process restricted to fewer CPUs (taskset, cgroups) gets no more. */
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int allowed = CPU_COUNT(&set);
        if (allowed > 0 && (n <= 0 || allowed < n)) n = allowed;
    }
#endif
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? n : 1;
}
