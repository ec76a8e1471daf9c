/* Compute thread pool (see fm_pool.h).
 *
 * With OpenMP (GCC/Clang -fopenmp: the build enables it when the compiler has it) a task is an OpenMP parallel
 * region. llama-cpp-python's CPU backend is built with OpenMP, so both use the one libgomp in the process and
 * the same team of threads: after each CPU graph split those threads spin for a while (GOMP_SPINCOUNT)
 * waiting for the next region, and ours is that region. A separate pool of our own would compete with the
 * spinning threads for the cores: on 2 cores that made 2-thread decode 10-20x slower than 1-thread.
 *
 * Without OpenMP, workers sleep on a condition variable between tasks (ggml then uses its own thread pool). */
#include "fm_pool.h"

#include <pthread.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>

struct fm_pool {
    int n_threads;
};

fm_pool *fm_pool_new(int n_threads) {
    fm_pool *p = calloc(1, sizeof *p);
    if (p) p->n_threads = n_threads < 1 ? 1 : n_threads;
    return p;
}

void fm_pool_free(fm_pool *p) {
    free(p);
}

/* n >= 2 threads, the caller among them */
static void run_parallel(fm_pool *p, int n, fm_task_fn fn, void *ctx) {
    (void) p;
#pragma omp parallel num_threads(n)
    fn(ctx, omp_get_thread_num(), omp_get_num_threads());
}

#else

struct fm_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv_go, cv_done;
    pthread_t *threads;
    int n_threads;      /* including the caller */
    unsigned long generation;
    int active;         /* threads taking part in the current task */
    int pending;        /* workers still running it */
    int stop;
    fm_task_fn fn;
    void *ctx;
};

typedef struct {
    fm_pool *p;
    int ith;
} worker_arg;

static void *worker(void *arg) {
    worker_arg *wa = arg;
    fm_pool *p = wa->p;
    int ith = wa->ith;
    free(wa);
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->cv_go, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        if (ith >= p->active) continue;
        fm_task_fn fn = p->fn;
        void *ctx = p->ctx;
        int nth = p->active;
        pthread_mutex_unlock(&p->mu);
        fn(ctx, ith, nth);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

fm_pool *fm_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    fm_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = calloc((size_t) n_threads, sizeof *p->threads);
    if (!p->threads || pthread_mutex_init(&p->mu, NULL) || pthread_cond_init(&p->cv_go, NULL) ||
        pthread_cond_init(&p->cv_done, NULL)) {
        free(p->threads);
        free(p);
        return NULL;
    }
    p->n_threads = 1;
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) break;
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            break;
        }
        p->n_threads = i + 1;
    }
    return p;
}

void fm_pool_free(fm_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_go);
    pthread_cond_destroy(&p->cv_done);
    free(p->threads);
    free(p);
}

static void run_parallel(fm_pool *p, int n, fm_task_fn fn, void *ctx) {
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->active = n;
    p->pending = n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->cv_go);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, n);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

#endif

int fm_pool_threads(const fm_pool *p) {
    return p->n_threads;
}

void fm_pool_run(fm_pool *p, int n, fm_task_fn fn, void *ctx) {
    if (n > p->n_threads) n = p->n_threads;
    if (n <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    run_parallel(p, n, fn, ctx);
}
