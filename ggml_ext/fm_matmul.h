/* MUL_MAT_ID over streamed experts (see fm_matmul.c). */
#ifndef FM_MATMUL_H
#define FM_MATMUL_H

#include "fm_ggml.h"
#include "fm_pool.h"
#include "fm_routing.h"
#include "fm_store.h"
#include "fm_types.h"

/* work items per thread in a node's parallel region: an expert's rows are split when there are fewer experts. 4
   rather than 2: decode steps of the 8-layer Qwen3-30B-A3B slice on the 16-core Xeon, paired in one process
   (tools/paired_steps.py --env FLASHMOE_ITEMS_PER_THREAD=2,4), took 0.939x the time at 8 threads, 0.960x at 16 with
   resident repack, 1.002x at 4 and 16 without (2026-12-08); up to 2 threads a K=8 decode node has 1 item per
   expert either way */
#define FM_ITEMS_PER_THREAD 4

typedef struct {
    int isa;   /* our kernels' instruction set (FM_ISA_SCALAR, _AVX2, _AVX512), or FM_ISA_GGML */
    int tiled; /* enum fm_tiled: ggml's tiled K-quant path */
    fm_routing *routing; /* benchmarks only: a routing trace replayed in place of the router's choice, or NULL */
    int items; /* work items per thread in a node's region: FM_ITEMS_PER_THREAD, or FLASHMOE_ITEMS_PER_THREAD
                  (1..64; measurements only) */
} fm_mm_opts;

/* Computes dst (a GGML_OP_MUL_MAT_ID node whose src0 is store tensor `tensor`), bitwise as ggml's CPU backend.
 * Returns 0, or -1 with the store's error set. */
int fm_mul_mat_id(fm_store *s, fm_pool *pool, int n_threads, int tensor, const fm_mm_opts *opts,
                  struct ggml_tensor *dst);

#endif
