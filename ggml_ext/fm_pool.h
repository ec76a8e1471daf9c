/* A small pool of compute threads: run fn(ctx, ith, nth) on nth threads (the caller is thread 0). */
#ifndef FM_POOL_H
#define FM_POOL_H

typedef void (*fm_task_fn)(void *ctx, int ith, int nth);
typedef struct fm_pool fm_pool;

fm_pool *fm_pool_new(int n_threads);
void fm_pool_free(fm_pool *p);
int fm_pool_threads(const fm_pool *p);
/* Runs fn on min(n, pool size) threads and returns when all are done. */
void fm_pool_run(fm_pool *p, int n, fm_task_fn fn, void *ctx);

#endif
