/* threadpool.h: a persistent pool of worker threads for the forward pass.
 *
 * What it is: n_threads workers (the calling thread is worker 0) that all run
 * one function per dispatch, plus a spinning barrier to separate the phases of
 * that function. What it is not: a task queue; there is one job at a time.
 * Internal to csrc/ (not part of pq.h).
 */
#ifndef PQ_THREADPOOL_H
#define PQ_THREADPOOL_H

typedef struct pq_pool pq_pool;

/* Called once on every worker per dispatch: ith in [0, nth). */
typedef void (*pq_pool_fn)(void *arg, int ith, int nth);

/* n_threads <= 0: the number of physical cores. Returns PQ_OK,
 * PQ_ERR_NOMEM or PQ_ERR_THREAD. */
int pq_pool_init(pq_pool **out, int n_threads);
void pq_pool_free(pq_pool *p);
int pq_pool_size(const pq_pool *p);

/* Run fn(arg, ith, nth) on all workers; the caller runs ith = 0 and the call
 * returns when every worker has finished. Not reentrant: one dispatch at a
 * time per pool (the model's mutex guarantees it). */
void pq_pool_run(pq_pool *p, pq_pool_fn fn, void *arg);

/* Inside a dispatch, every worker must call this the same number of times:
 * nobody passes until all have arrived. Spins briefly (pause), then sleeps on
 * a futex so that an oversubscribed machine runs the late worker instead. */
void pq_pool_barrier(pq_pool *p);

/* Physical cores of this machine (unique (package, core) pairs on Linux;
 * falls back to the online logical CPU count). Always >= 1. */
int pq_physical_cores(void);

#endif /* PQ_THREADPOOL_H */
